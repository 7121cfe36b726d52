"""Linear algebra used by second-order and preconditioned optimizers (Optax's top-level names).

- :func:`power_iteration`: the dominant eigenvalue and eigenvector of a matrix or of a
  matrix-vector product on pytrees (von Mises' power method).
- :func:`matrix_inverse_pth_root`: ``A^(-1/p)`` of a symmetric PSD matrix by the coupled Newton
  iteration (Higham, 2008, "Functions of Matrices", Eq. 7.18; as used by Shampoo, Gupta et al., 2018).
- :func:`nnls`: non-negative least squares by the fast projected gradient method
  (Polyak, 2015, "Projected gradient method for non-negative least square").
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_lite import _checks, numerics

__all__ = ["matrix_inverse_pth_root", "nnls", "power_iteration"]


# Tree helpers with the exact arithmetic of the power method (``1 / ||x||`` times ``x``; sums started at 0).


def _tree_norm(tree: Any) -> jax.Array:
    sq = [jnp.sum(numerics.abs_sq(x)) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(functools.reduce(operator.add, sq, 0))


def _normalize(tree: Any) -> Any:
    inv = 1.0 / _tree_norm(tree)
    return jax.tree.map(lambda x: inv * x, tree)


def _tree_vdot(tree_x: Any, tree_y: Any) -> jax.Array:
    def leaf(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        if jnp.iscomplexobj(a):
            a = jnp.conj(a)
        return jnp.tensordot(a, b, a.ndim, precision=lax.Precision.HIGHEST)

    return functools.reduce(operator.add, jax.tree.leaves(jax.tree.map(leaf, tree_x, tree_y)), 0)


def power_iteration(
    matrix: jax.typing.ArrayLike | Callable[[Any], Any],
    *,
    v0: Any = None,
    num_iters: jax.typing.ArrayLike = 100,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
    key: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    r"""The dominant eigenvalue of ``matrix`` and its eigenvector, by the power method.

    ``matrix`` is a square array or a callable ``v -> M v`` on pytrees (then ``v0``, a pytree
    shaped like the callable's input, is required). With ``v_0 = v0 / ||v0||`` and ``z_0 = M v_0``,
    each iteration is

    .. math::
        v_{k} = z_{k-1} / \|z_{k-1}\|, \quad z_k = M v_k, \quad \lambda_k = \langle v_k, z_k \rangle,

    and the loop stops after ``num_iters`` iterations or once
    ``||z_k - lambda_k v_k|| / |lambda_k| < error_tolerance``. Returns
    ``(lambda, z / ||z||)`` (Optax >= 0.2.2's order: eigenvalue first).

    ``v0`` defaults (for an array ``matrix``) to a uniform draw in ``[-1, 1]`` with ``key``
    (default ``jax.random.PRNGKey(0)``), in the matrix's dtype. ``precision`` is the matrix
    product's XLA precision. Converges if the dominant eigenvalue is unique in modulus and
    ``v0`` is not orthogonal to its eigenvector. As Optax's, bit for bit; the eigenvalue has
    the dtype of ``<v, M v>`` (Optax starts it as a default-precision float, so a float32 matrix
    under ``jax_enable_x64`` fails there and works here).
    """
    owner = "power_iteration"
    if callable(matrix):
        mvp = matrix
        if v0 is None:
            raise ValueError(f"{owner}: v0 must be given when matrix is a callable (its input structure is unknown)")
    else:
        matrix = jnp.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"{owner}: matrix must be square, got shape {matrix.shape}")
        mvp = lambda v: jnp.matmul(matrix, v, precision=precision)
        if v0 is None:
            key = jax.random.PRNGKey(0) if key is None else key
            v0 = jax.random.uniform(key, matrix.shape[-1:], matrix.dtype, minval=-1.0, maxval=1.0)
    _checks.check_nonnegative(owner, "num_iters", num_iters)
    _checks.check_nonnegative(owner, "error_tolerance", error_tolerance)

    v0 = _normalize(v0)
    z0 = mvp(v0)
    eig0 = jnp.zeros([], jnp.result_type(_tree_vdot(v0, z0)))

    def cond(carry):
        v, z, eig, i = carry
        residual = jax.tree.map(lambda a, b: a - eig * b, z, v)
        converged = jnp.abs(_tree_norm(residual) / eig) < error_tolerance
        return jnp.logical_not(converged) & (i < num_iters)

    def body(carry):
        _, z, _, i = carry
        v = _normalize(z)
        z = mvp(v)
        return v, z, _tree_vdot(v, z).astype(eig0.dtype), i + 1

    _, z, eig, _ = lax.while_loop(cond, body, (v0, z0, eig0, jnp.asarray(0)))
    return eig, _normalize(z)


def _concrete_positive_int(owner: str, p: Any) -> int | None:
    """``p`` as a Python int if its value is known now (an error unless a positive integer), else ``None``."""
    arr = _checks.concrete(p)
    if arr is None:
        return None
    if arr.shape != () or not np.isfinite(arr) or arr <= 0 or arr != np.round(arr):
        raise ValueError(f"{owner}: p must be a positive integer, got {p!r}")
    return int(arr)


def _matrix_power(m: jax.Array, p: Any, p_int: int | None, precision) -> jax.Array:
    """``m**p`` by repeated squaring (for ``p`` = 1, 2, 4, 8 the very products Optax takes)."""
    mul = functools.partial(jnp.matmul, precision=precision)
    if p_int is not None:
        result, base, e = None, m, p_int
        while e:
            if e & 1:
                result = base if result is None else mul(result, base)
            e >>= 1
            if e:
                base = mul(base, base)
        return result

    def body(carry):  # a traced p: the same squarings in a loop (the identity times x is exact)
        result, base, e = carry
        result = jnp.where(e % 2 == 1, mul(result, base), result)
        return result, mul(base, base), e // 2

    e = jnp.asarray(jnp.round(p), jnp.int32)
    result, _, _ = lax.while_loop(lambda c: c[2] > 0, body, (jnp.eye(m.shape[0], dtype=m.dtype), m, e))
    return result


def matrix_inverse_pth_root(
    matrix: jax.typing.ArrayLike,
    p: jax.typing.ArrayLike,
    num_iters: jax.typing.ArrayLike = 100,
    ridge_epsilon: jax.typing.ArrayLike = 1e-6,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    r"""``(A + r I)^(-1/p)`` of a symmetric PSD matrix ``A`` by the coupled Newton iteration.

    Higham (2008), "Functions of Matrices: Theory and Computation", p. 184, Eq. 7.18. The ridge
    is relative: ``r = ridge_epsilon * max(lambda_max, 1e-16)`` with ``lambda_max`` from
    :func:`power_iteration` (100 iterations, tolerance ``1e-6``). With ``D = A + r I``,
    ``z = (1 + p) / (2 ||D||_F)``, ``M_0 = z D`` and ``H_0 = z^(1/p) I``, each iteration is

    .. math::
        T_k = \left(1 + \tfrac1p\right) I - \tfrac1p M_k, \quad
        M_{k+1} = T_k^p M_k, \quad H_{k+1} = H_k T_k,

    which keeps ``H_k^{-p} M_k = D`` so that ``H_k -> D^(-1/p)`` as ``M_k -> I``. It stops after
    ``num_iters`` iterations, once ``err_k = max |M_k - I| <= error_tolerance``, or when the error
    grows by more than a factor 1.2 (then the previous ``H`` is returned). Returns
    ``(H, err)`` with ``err = max |M - I|`` of the last iterate (0 for a 1x1 matrix, whose root
    is taken directly). ``H`` has the matrix's dtype.

    As Optax: ``1/p`` enters the iteration as a float32 number (this changes only how fast it
    converges, not the limit) and also the 1x1 case ``(a + r)^(-1/p)``; the result matches
    Optax's for ``p`` in 1, 2, 4, 8. Unlike Optax (whose matrix power only supports those four
    and silently computes a wrong root otherwise, e.g. for ``p = 3``), any positive integer
    ``p`` gives ``A^(-1/p)`` here; a concrete ``p`` that is not a positive integer is an error.
    """
    owner = "matrix_inverse_pth_root"
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{owner}: matrix must be square, got shape {matrix.shape}")
    p_int = _concrete_positive_int(owner, p)
    for name, value in (("num_iters", num_iters), ("ridge_epsilon", ridge_epsilon),
                        ("error_tolerance", error_tolerance)):
        _checks.check_nonnegative(owner, name, value)

    n = matrix.shape[0]
    alpha = jnp.asarray(-1.0 / p, jnp.float32)
    identity = jnp.eye(n, dtype=jnp.float32)
    max_ev, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6, precision=precision)
    ridge = ridge_epsilon * jnp.maximum(max_ev, 1e-16)

    if n == 1:
        root = (matrix + ridge) ** alpha
        return root, jnp.zeros([], root.dtype)

    mul = functools.partial(jnp.matmul, precision=precision)

    def cond(carry):
        i, _, _, _, error, run_step = carry
        return (i < num_iters) & (error > error_tolerance) & run_step

    def body(carry):
        i, m, h, _, error, _ = carry
        t = (1 - alpha) * identity + alpha * m
        new_m = mul(_matrix_power(t, p, p_int, precision), m)
        new_h = mul(h, t)
        new_error = jnp.max(jnp.abs(new_m - identity))
        # The error may rise for an iteration before falling: allow up to a factor 1.2.
        return i + 1, new_m, new_h, h, new_error, new_error < error * 1.2

    damped = matrix + ridge * identity
    z = (1 + p) / (2 * jnp.linalg.norm(damped))
    m0 = damped * z
    h0 = identity * jnp.power(z, 1.0 / p)
    err0 = jnp.max(jnp.abs(m0 - identity))
    init = (jnp.asarray(0), m0, h0, h0, err0, jnp.asarray(True))
    _, m, h, old_h, _, still_improving = lax.while_loop(cond, body, init)
    error = jnp.max(jnp.abs(m - identity))
    root = jnp.where(still_improving, h, old_h).astype(matrix.dtype)
    return root, error


def _spectral_radius_upper_bound(q: jax.Array) -> jax.Array:
    """``min(||Q||_F, ||Q||_1)``, both upper bounds of the spectral radius."""
    fro = jnp.linalg.norm(q, "fro")
    one = jnp.linalg.norm(q, 1) if q.size else 0
    return jnp.minimum(fro, one)


def nnls(
    A: jax.Array,
    b: jax.Array,
    iters: int,
    unroll: int | bool = 1,
    L: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Non-negative least squares: ``argmin_{x >= 0} ||A x - b||_2``, by fast projected gradient.

    Polyak (2015), "Projected gradient method for non-negative least square" (FPG). With
    ``Q = A^T A``, ``q = A^T b``, ``L >= rho(Q)`` (default ``min(||Q||_F, ||Q||_1)``, 1 if that is 0),
    ``x_0 = y_0 = 0`` and ``c_0 = 0``, each of the ``iters`` iterations (a ``lax.scan`` with ``unroll``) is

    .. math::
        c_{k+1} = \frac{1 + \sqrt{1 + 4 c_k^2}}{2}, \quad
        x_{k+1} = \max\!\left(y_k - \frac{Q y_k - q}{L}, 0\right), \quad
        y_{k+1} = x_{k+1} + \frac{c_k - 1}{c_{k+1}} (x_{k+1} - x_k).

    ``A`` is ``(M, N)``; ``b`` is ``(M,)`` or ``(M, K)`` (``K`` problems at once); returns ``x``,
    ``(N,)`` or ``(N, K)``, in ``b``'s dtype. A fixed number of iterations (no stopping test), as Optax.
    """
    owner = "nnls"
    A, b = jnp.asarray(A), jnp.asarray(b)
    if A.ndim != 2:
        raise ValueError(f"{owner}: A must be a matrix, got shape {A.shape}")
    if b.ndim not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(f"{owner}: b must have shape ({A.shape[0]},) or ({A.shape[0]}, K), got {b.shape}")
    _checks.check_nonnegative(owner, "iters", iters)
    if L is not None:
        _checks.check_nonnegative(owner, "L", L)

    q_mat = A.mT @ A
    q_vec = A.mT @ b
    if L is None:
        L = _spectral_radius_upper_bound(q_mat)
    L = jnp.where(L == 0, 1, L)

    def step(carry, _):
        x, y, c = carry
        c_next = (1 + jnp.sqrt(1 + 4 * c**2)) / 2
        x_next = (y - (q_mat @ y - q_vec) / L).clip(0)
        y_next = x_next + (c - 1) / c_next * (x_next - x)
        return (x_next, y_next, c_next), None

    x0 = jnp.zeros_like(b, shape=A.shape[-1:] + b.shape[1:])
    (x, _, _), _ = lax.scan(step, (x0, x0, 0.0), length=iters, unroll=unroll)
    return x
