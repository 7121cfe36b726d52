r"""Shampoo: Kronecker-factored preconditioning (Gupta, Koren & Singer, 2018; Anil et al., 2020).

For a matrix gradient ``G`` (``m x n``) Shampoo keeps two Kronecker factors,
``L = sum G G^T`` (``m x m``) and ``R = sum G^T G`` (``n x n``), and steps along
``L^(-1/4) G R^(-1/4)``; a ``k``-dimensional tensor has one factor per axis and the
exponent ``-1/(2k)``. This module adds what makes it practical (Anil et al., 2020,
"Scalable Second Order Optimization for Deep Learning", arXiv:2002.09018; Shi et al.,
2023, "A Distributed Data-Parallel PyTorch Implementation of the Distributed Shampoo
Optimizer", arXiv:2309.06497): blocked factors for large dimensions, inverse roots by
eigendecomposition (or the coupled Newton iteration) recomputed every few steps, a
preconditioning start step, layer-wise grafting of another optimizer's step size, and
momentum. Factors of one shape are eigendecomposed in one batched call per step, whatever
the number of leaves.

The helpers shared with SOAP (:mod:`jaxopt_lite.optimizers.soap`) live here too: the
batched call over same-shape matrices and the Kronecker factor statistics of one axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
)
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.linear_algebra import matrix_inverse_pth_root
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array

_HIGHEST = lax.Precision.HIGHEST
_GRAFT_TYPES = ("adam", "adagrad", "rmsprop", "sgd", "none")
_ROOT_METHODS = ("eigh", "newton")


# --------------------------------------------------------------------------------------------------------------------
# Shared with SOAP
# --------------------------------------------------------------------------------------------------------------------


def factor_dtype(dtype: Any) -> Any:
    """The dtype Kronecker factors and their decompositions are kept in: at least float32 (no bfloat16 ``eigh``)."""
    return jnp.promote_types(dtype, jnp.float32)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full precision (TPUs and GPUs otherwise multiply float32 in reduced precision)."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def axis_gram(x: jax.Array, axis: int, batch_dims: int = 0) -> jax.Array:
    """The Kronecker factor statistic of ``axis``: ``X X^T`` with ``X`` the unfolding of ``x`` along ``axis``
    (``x`` contracted with itself over every other non-batch axis). The first ``batch_dims`` axes are batch
    axes (independent blocks)."""
    batch = x.shape[:batch_dims]
    unfolded = jnp.moveaxis(x, batch_dims + axis, batch_dims).reshape(*batch, x.shape[batch_dims + axis], -1)
    return matmul(unfolded, unfolded.mT)


def contract_axis(x: jax.Array, matrix: jax.Array, axis: int, batch_dims: int = 0) -> jax.Array:
    """``x`` with ``matrix`` applied along ``axis``: ``y[.., i, ..] = sum_j matrix[i, j] x[.., j, ..]`` (per block
    when ``batch_dims`` leading axes are batch axes, ``matrix`` then stacked alike)."""
    moved = jnp.moveaxis(x, batch_dims + axis, batch_dims)
    shape = moved.shape
    flat = moved.reshape(*shape[: batch_dims + 1], -1)
    out = matmul(matrix, flat).reshape(shape)
    return jnp.moveaxis(out, batch_dims, batch_dims + axis)


def _zero_after(result: Any) -> jax.Array:
    """A 0 that XLA computes from ``result``: adding it to the next group's input runs the groups one after
    the other. On CPU, jaxlib's batched LAPACK kernels (eigh, QR) spread a batch over the thread pool that also
    runs XLA's independent operations and block a pool thread until it is done: two at once deadlock a 2-thread
    pool (seen on 2 CPU cores, jaxlib 0.10.2). ``optimization_barrier`` does not order them at run time."""
    x = jax.tree.leaves(result)[0].ravel()[0]
    x = jnp.minimum(jnp.abs(x), 0)  # 0, or NaN for a NaN
    return jnp.where(jnp.isnan(x), 0, x)


def batched_over_shapes(fn: Callable[[jax.Array, list[int]], Any], matrices: list[jax.Array], keys: list | None = None):
    """``fn`` applied once per group of stacks ``(n_i, d, d)`` of one shape, dtype (and key), concatenated along
    axis 0: ``fn(stack, members)`` returns an array (or a tuple of arrays) with that leading axis, split back per
    member. Returns the per-member results in the order of ``matrices``."""
    keys = [None] * len(matrices) if keys is None else keys
    groups: dict[tuple, list[int]] = {}
    for i, (m, key) in enumerate(zip(matrices, keys)):
        groups.setdefault((m.shape[1:], jnp.result_type(m), key), []).append(i)
    out: list = [None] * len(matrices)
    previous = None
    for members in groups.values():
        stacked = matrices[members[0]] if len(members) == 1 else jnp.concatenate([matrices[i] for i in members])
        if previous is not None:
            stacked = stacked + _zero_after(previous).astype(stacked.dtype)
        result = previous = fn(stacked, members)
        offsets = np.cumsum([0] + [matrices[i].shape[0] for i in members])
        for i, lo, hi in zip(members, offsets[:-1], offsets[1:]):
            lo, hi = int(lo), int(hi)
            out[i] = tuple(r[lo:hi] for r in result) if isinstance(result, tuple) else result[lo:hi]
    return out


def tie_sharding(like: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` (shaped like ``like``) sharded as ``like``: the matrix products of a preconditioner would otherwise
    leave the choice to XLA, and a parameter-shaped state buffer or update must follow its parameter."""
    return _tree._sharded_like(like, x)


# --------------------------------------------------------------------------------------------------------------------
# Inverse roots of the factors
# --------------------------------------------------------------------------------------------------------------------


def _power_values(x: jax.Array, exponent: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x**e`` and its derivative ``e x**(e - 1)`` where ``x > 0``, both 0 elsewhere (a pseudo-inverse)."""
    positive = x > 0
    safe = jnp.where(positive, x, 1)
    value = safe**exponent
    return jnp.where(positive, value, 0), jnp.where(positive, exponent * value / safe, 0)


def _damped_spectrum(a: jax.Array, eps: jax.Array, relative: bool):
    """Eigen-decomposition of the symmetric stack ``a`` with eigenvalues clipped at 0, and the damping."""
    w, v = jnp.linalg.eigh(a)
    w = jnp.maximum(w, 0)
    top = w[..., -1]  # eigh sorts ascending
    damping = eps * top if relative else jnp.broadcast_to(eps, top.shape)
    return w, v, top, damping


def _reconstruct(v: jax.Array, values: jax.Array) -> jax.Array:
    return matmul(v * values[..., None, :], v.mT)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def psd_power(a: jax.Array, eps: jax.Array, exponent: jax.Array, relative: bool) -> jax.Array:
    r"""``(A + delta I)^e`` for a stack ``a`` of symmetric PSD matrices ``(n, d, d)`` by eigendecomposition.

    ``e = exponent`` (shape ``(n,)``, negative for an inverse root); ``delta = eps * lambda_max(A)`` when
    ``relative``, else ``eps``. Eigenvalues that round below 0 are taken as 0, and where ``lambda + delta`` is
    0 the power is taken as 0 (a pseudo-inverse: only an all-zero matrix with a relative or zero ``eps``).

    Its derivative is the Daleckii-Krein formula ``V (F o (V^T dA V)) V^T`` with ``F_ij`` the divided
    difference ``(f(l_i) - f(l_j)) / (l_i - l_j)`` (``f'`` at the midpoint for close eigenvalues), plus the
    damping's own derivative: finite for repeated eigenvalues, where differentiating ``eigh`` is not.
    """
    w, v, _, damping = _damped_spectrum(a, eps, relative)
    values, _ = _power_values(w + damping[..., None], exponent[..., None])
    return _reconstruct(v, values)


@psd_power.defjvp
def _psd_power_jvp(relative, primals, tangents):
    a, eps, exponent = primals
    da, deps, _ = tangents
    w, v, top, damping = _damped_spectrum(a, eps, relative)
    x = w + damping[..., None]
    e = exponent[..., None]
    values, slopes = _power_values(x, e)
    out = _reconstruct(v, values)
    rotated = matmul(matmul(v.mT, (da + da.mT) / 2), v)
    if relative:
        d_damping = deps * top + eps * rotated[..., -1, -1]
    else:
        d_damping = jnp.broadcast_to(deps, top.shape)
    gap = w[..., :, None] - w[..., None, :]
    tolerance = jnp.finfo(x.dtype).eps ** (1 / 3) * jnp.maximum(jnp.abs(x[..., :, None]), jnp.abs(x[..., None, :]))
    close = jnp.abs(gap) <= tolerance
    _, mid_slopes = _power_values((x[..., :, None] + x[..., None, :]) / 2, e[..., None])
    divided = (values[..., :, None] - values[..., None, :]) / jnp.where(close, 1, gap)
    weights = jnp.where(close, mid_slopes, divided)
    inner = weights * rotated + jnp.eye(w.shape[-1], dtype=w.dtype) * (slopes * d_damping[..., None])[..., None, :]
    return out, matmul(matmul(v, inner), v.mT)


def _newton_roots(stack: jax.Array, eps: jax.Array, p: int, relative: bool) -> jax.Array:
    """The inverse ``p``-th roots of a stack by :func:`~jaxopt_lite.matrix_inverse_pth_root` (coupled Newton).

    Each matrix is first divided by its largest entry ``s`` (the root then multiplied by ``s^(-1/p)``: exact,
    and the power method inside squares entries, which overflows float32 from about 1e19)."""
    eye = jnp.eye(stack.shape[-1], dtype=stack.dtype)
    zero = jnp.all(stack == 0, axis=(-2, -1))

    def one(m, is_zero):
        if relative:
            m = jnp.where(is_zero, eye, m)  # the power method's eigenvalue of 0 is 0/0
        else:
            m = m + eps * eye
        s = jnp.max(jnp.abs(m))
        s = jnp.where(s > 0, s, 1)
        root, _ = matrix_inverse_pth_root(m / s, p, ridge_epsilon=eps if relative else 0.0, precision=_HIGHEST)
        return (root * s ** (-1.0 / p)).astype(stack.dtype)

    roots = jax.vmap(one)(stack, zero)
    if relative:
        roots = jnp.where(zero[:, None, None], 0, roots)
    return roots


@functools.partial(jax.jit, static_argnames=("roots", "method", "relative", "maybe"))
def _inverse_roots(
    recompute: jax.Array,
    stats: tuple,
    old: tuple,
    eps: jax.Array,
    roots: tuple,
    method: str,
    relative: bool,
    maybe: bool,
) -> tuple:
    """The inverse ``roots[i]``-th root of each stack ``stats[i]`` (``(n_blocks, b, b)``), batched by shape; with
    ``maybe``, only where ``recompute`` holds (one ``lax.cond``), else ``old``. Jitted once per layout, so that
    an eager ``update`` compiles the branch once, not at every call."""

    def compute(_):
        if method == "newton":

            def fn(stack, members):
                return _newton_roots(stack, jnp.asarray(eps, stack.dtype), roots[members[0]], relative)

            out = batched_over_shapes(fn, list(stats), list(roots))
        else:

            def fn(stack, members):
                e = jnp.concatenate([jnp.full((stats[i].shape[0],), -1.0 / roots[i], stack.dtype) for i in members])
                return psd_power(stack, jnp.asarray(eps, stack.dtype), e, relative)

            out = batched_over_shapes(fn, list(stats))
        return tuple(r.astype(s.dtype) for r, s in zip(out, stats))

    if not maybe:
        return compute(None)
    return lax.cond(recompute, compute, lambda _: old, None)


@jax.jit
def _leaf_norms(a: jax.Array, b: jax.Array) -> list:
    """The overflow-safe norms of two leaves (its ``lax.cond`` jitted once per shape, not at every eager call)."""
    return _numerics.norms([a, b])


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class _Blocking(NamedTuple):
    """How one leaf is split into equal blocks, each preconditioned on its own (static, from the shape)."""

    shape: tuple[int, ...]
    preconditioned: tuple[bool, ...]  # per axis: has a Kronecker factor
    block: tuple[int, ...]  # the block length along each axis (the axis length where it is not split)
    count: tuple[int, ...]  # the number of blocks along each axis
    root: int  # p of the inverse p-th root: 2 x (number of preconditioned axes), or the override

    @property
    def active(self) -> bool:
        return any(self.preconditioned)

    @property
    def n_blocks(self) -> int:
        return math.prod(self.count)

    @property
    def axes(self) -> tuple[int, ...]:
        return tuple(a for a, p in enumerate(self.preconditioned) if p)


def _blocking(shape: tuple[int, ...], block_size: int, max_dim: int, exponent_override: int | None) -> _Blocking:
    preconditioned = tuple(len(shape) >= 2 and 0 not in shape and 2 <= d <= max_dim for d in shape)
    block = tuple(min(d, block_size) if p else d for d, p in zip(shape, preconditioned))
    count = tuple(-(-d // b) if b else 1 for d, b in zip(shape, block))
    root = exponent_override or 2 * sum(preconditioned)
    return _Blocking(tuple(shape), preconditioned, block, count, root)


def _to_blocks(x: jax.Array, b: _Blocking) -> jax.Array:
    """``(n_blocks, *block)``: ``x`` zero-padded to whole blocks (exact: padded rows add nothing to the factors)."""
    k = len(b.shape)
    padded = tuple(n * s for n, s in zip(b.count, b.block))
    if padded != b.shape:
        x = jnp.pad(x, [(0, p - d) for p, d in zip(padded, b.shape)])
    x = x.reshape(tuple(v for n, s in zip(b.count, b.block) for v in (n, s)))
    x = x.transpose(tuple(range(0, 2 * k, 2)) + tuple(range(1, 2 * k, 2)))
    return x.reshape((b.n_blocks, *b.block))


def _from_blocks(y: jax.Array, b: _Blocking) -> jax.Array:
    k = len(b.shape)
    y = y.reshape(b.count + b.block)
    y = y.transpose(tuple(int(i) for i in np.argsort(tuple(range(0, 2 * k, 2)) + tuple(range(1, 2 * k, 2)))))
    y = y.reshape(tuple(n * s for n, s in zip(b.count, b.block)))
    if y.shape != b.shape:
        y = y[tuple(slice(0, d) for d in b.shape)]
    return y


# --------------------------------------------------------------------------------------------------------------------
# scale_by_shampoo
# --------------------------------------------------------------------------------------------------------------------


class ShampooState(NamedTuple):
    """Step ``count``; ``mu``, the momentum of the grafted direction, and ``nu``, the grafted optimizer's
    second moment (``None`` for ``graft_type`` ``"sgd"``/``"none"``), shaped like the params; per leaf a tuple
    of Kronecker factors ``stats`` (one ``(n_blocks, b, b)`` stack per preconditioned axis, empty for a leaf
    without factors) and the inverse roots ``roots`` last computed from them (same shapes)."""

    count: jax.Array
    mu: Any
    nu: Any
    stats: Any
    roots: Any


def _check_int(owner: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")


@pytree_factory
def scale_by_shampoo(
    block_size: int = 1024,
    b1: Scalar = 0.9,
    beta2: Scalar = 1.0,
    matrix_eps: Scalar = 1e-6,
    graft_type: Literal["adam", "adagrad", "rmsprop", "sgd", "none"] = "adam",
    graft_beta2: Scalar = 0.999,
    graft_eps: Scalar = 1e-8,
    precondition_frequency: int | jax.Array = 1,
    start_preconditioning_step: int | jax.Array = 1,
    max_preconditioner_dim: int = 8192,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    moving_average_for_momentum: bool = False,
    relative_matrix_eps: bool = True,
    inverse_root_method: Literal["eigh", "newton"] = "eigh",
    exponent_override: int | None = None,
) -> GradientTransformation:
    r"""Shampoo's direction (Gupta et al., 2018), blocked and grafted (Anil et al., 2020; Shi et al., 2023).

    At step ``t`` (from 1), for each leaf with gradient ``G``:

    *Blocks and factors.* Every axis ``a`` of length ``2 <= d_a <= max_preconditioner_dim`` of a leaf of
    rank >= 2 is preconditioned; one longer than ``block_size`` is cut into blocks of ``block_size`` (the
    last one zero-padded, which is exact: zero rows add nothing to any factor). Each block ``B`` keeps one
    factor per preconditioned axis,

    .. math::
        S_a \leftarrow \beta_2 S_a + w\, B_{(a)} B_{(a)}^T, \quad w = 1 \text{ if } \beta_2 = 1 \text{ else } 1 - \beta_2,

    with ``B_(a)`` the unfolding of ``B`` along ``a``: ``beta2 = 1`` (default) is Gupta et al.'s sum
    ``L = sum G G^T``, ``R = sum G^T G``; ``beta2 < 1`` an exponential moving average (not bias-corrected,
    as Anil et al.; grafting makes the scale irrelevant).

    *Inverse roots.* At ``t >= start_preconditioning_step`` with ``(t - start) % precondition_frequency
    == 0`` (so the first root is computed on the step it is first used; ``start = frequency`` is Shi et
    al.'s ``t % frequency == 0``) the roots are recomputed from the factors including ``G_t``, and kept in
    the state in between:

    .. math::
        H_a = (S_a + \delta_a I)^{-1/p}, \quad p = 2k \ (k \text{ preconditioned axes; } -1/4 \text{ for a matrix}),

    with the damping ``delta_a = matrix_eps * lambda_max(S_a)`` (``relative_matrix_eps=True``, default: Anil
    et al.'s relative ridge, scale-free) or ``delta_a = matrix_eps`` (``False``: absolute, as Gupta et al.'s
    ``L_0 = eps I`` with ``beta2 = 1`` and as Shi et al.'s ``epsilon``). ``inverse_root_method="eigh"``
    (default) takes ``V diag((lambda + delta)^(-1/p)) V^T`` from ``jnp.linalg.eigh`` in the factors' dtype
    (float32, or float64 for float64 params), eigenvalues rounding below 0 taken as 0 and ``lambda + delta =
    0`` (an all-zero factor) giving 0 (pseudo-inverse); derivatives by the Daleckii-Krein formula, finite at
    repeated eigenvalues. ``"newton"`` takes :func:`~jaxopt_lite.matrix_inverse_pth_root` (the coupled
    Newton iteration, to its tolerance 1e-6; its relative ridge floors ``lambda_max`` at 1e-16; not
    reverse-differentiable: a ``while_loop``; like Anil et al.'s it stops when its error grows, which for a
    factor of condition number near ``1 / matrix_eps`` (rank-deficient, early on) can be at its first guess,
    a multiple of the identity: start preconditioning later with it). All factors of one block shape are decomposed in one batched
    call. ``exponent_override`` replaces ``p``.

    *Grafting.* ``P = G x_a H_a`` (every preconditioned axis, block by block) is rescaled per leaf to the
    norm of the grafted optimizer's step ``D_g``: ``D = P ||D_g|| / ||P||`` (``D_g`` where ``P = 0``), with
    ``graft_type``

    - ``"adam"`` (default): ``v <- graft_beta2 v + (1 - graft_beta2) G^2``,
      ``D_g = G / (sqrt(v / (1 - graft_beta2^t)) + graft_eps)`` (Shi et al.'s Adam grafting: RMSProp with
      bias correction, its momentum being the one below);
    - ``"rmsprop"``: the same without bias correction; ``"adagrad"``: ``v <- v + G^2``,
      ``D_g = G / (sqrt(v) + graft_eps)``; ``"sgd"``: ``D_g = G``;
    - ``"none"``: no rescaling, ``D = P`` (Gupta et al.'s Shampoo), ``D_g = G``.

    Before ``start_preconditioning_step``, and for leaves with no preconditioned axis (scalars, vectors,
    leaves whose axes are all longer than ``max_preconditioner_dim``), ``D = D_g``: the grafted optimizer.

    *Momentum* (on ``D``, one buffer): ``m <- b1 m + D`` (heavy ball, default: a step about ``1 / (1 - b1)``
    times the grafted optimizer's) or ``m <- b1 m + (1 - b1) D`` (``moving_average_for_momentum=True``); the
    output is ``m``, or with ``nesterov=True`` ``b1 m + D`` (resp. ``b1 m + (1 - b1) D``), as Anil et al.

    Defaults: ``block_size=1024``, ``b1=0.9``, ``beta2=1`` (sum), ``matrix_eps=1e-6`` relative,
    ``graft_type="adam"`` with ``graft_beta2=0.999``, ``graft_eps=1e-8``, ``precondition_frequency=1``,
    ``start_preconditioning_step=1``, ``max_preconditioner_dim=8192``. Every float hyperparameter may be
    traced; ``precondition_frequency`` and ``start_preconditioning_step`` may be integer arrays.

    Memory: per parameter ``mu`` (in ``mu_dtype``) and, for the adaptive grafts, ``nu``; per leaf, for each
    block, two ``b x b`` matrices (factor and root) per preconditioned axis in float32 (float64 for float64
    params): ``2 (m^2 + n^2)`` floats for an ``m x n`` matrix within one block. Sharding: ``mu``, ``nu``
    and the updates follow their parameter; factors and roots are whole (``b x b``) matrices, replicated
    over the parameters' mesh. Complex parameters are refused; so is a fused tree.

    References: Gupta, Koren & Singer, 2018, arXiv:1802.09568; Anil et al., 2020, arXiv:2002.09018; Shi et
    al., 2023, arXiv:2309.06497.
    """
    owner = "scale_by_shampoo"
    _check_int(owner, "block_size", block_size, 1)
    _check_int(owner, "max_preconditioner_dim", max_preconditioner_dim, 1)
    if exponent_override is not None:
        _check_int(owner, "exponent_override", exponent_override, 1)
    if graft_type not in _GRAFT_TYPES:
        raise ValueError(f"{owner}: graft_type must be one of {_GRAFT_TYPES}, got {graft_type!r}")
    if inverse_root_method not in _ROOT_METHODS:
        raise ValueError(f"{owner}: inverse_root_method must be one of {_ROOT_METHODS}, got {inverse_root_method!r}")
    _checks.check_decay(owner, "b1", b1)
    _checks.check_range(owner, "beta2", beta2, low=0.0, high=1.0)
    _checks.check_nonnegative(owner, "matrix_eps", matrix_eps)
    _checks.check_decay(owner, "graft_beta2", graft_beta2)
    _checks.check_nonnegative(owner, "graft_eps", graft_eps)
    _checks.check_range(owner, "precondition_frequency", precondition_frequency, low=1.0)
    _checks.check_range(owner, "start_preconditioning_step", start_preconditioning_step, low=0.0)
    adaptive_graft = graft_type in ("adam", "adagrad", "rmsprop")
    freq, start = _checks.concrete(precondition_frequency), _checks.concrete(start_preconditioning_step)
    every_step = freq is not None and start is not None and int(freq) == 1 and int(start) <= 1

    def plans(tree) -> list[_Blocking]:
        return [
            _blocking(jnp.shape(x), block_size, max_preconditioner_dim, exponent_override)
            for x in jax.tree.leaves(tree)
        ]

    def init(params):
        reject_fused(owner, params)
        _tree.check_floating(params, owner, real="Shampoo's Kronecker factors are real symmetric matrices")
        leaves, treedef = jax.tree.flatten(params)
        stats, roots = [], []
        for x, b in zip(leaves, plans(params)):
            dtype = factor_dtype(jnp.result_type(x))
            stats.append(tuple(jnp.zeros((b.n_blocks, b.block[a], b.block[a]), dtype) for a in b.axes))
            roots.append(
                tuple(
                    jnp.broadcast_to(jnp.eye(b.block[a], dtype=dtype), (b.n_blocks, b.block[a], b.block[a]))
                    for a in b.axes
                )
            )
        return ShampooState(
            count=_tree.zero_count(),
            mu=_tree.accumulator_zeros(params, mu_dtype),
            nu=_tree.zeros_like(params) if adaptive_graft else None,
            stats=treedef.unflatten(stats),
            roots=treedef.unflatten(roots),
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        leaves, treedef = jax.tree.flatten(updates)
        blockings = plans(updates)
        mu = treedef.flatten_up_to(state.mu)
        nu = treedef.flatten_up_to(state.nu) if adaptive_graft else [None] * len(leaves)
        old_stats, old_roots = treedef.flatten_up_to(state.stats), treedef.flatten_up_to(state.roots)
        count = _tree.safe_increment(state.count)

        grads = [g.astype(factor_dtype(g.dtype)) for g in leaves]
        # The grafted optimizer's step.
        new_nu, grafted = [], []
        for g, v in zip(grads, nu):
            if graft_type in ("sgd", "none"):
                new_nu.append(None)
                grafted.append(g)
                continue
            if graft_type == "adagrad":
                v_new = v.astype(g.dtype) + jnp.square(g)
                denominator = _numerics.safe_sqrt(v_new)  # derivative 0 (not inf) at 0: finite meta-gradients
            else:
                v_new = graft_beta2 * v.astype(g.dtype) + (1 - graft_beta2) * jnp.square(g)
                if graft_type == "adam":
                    correction = 1 - jnp.asarray(graft_beta2, g.dtype) ** count.astype(g.dtype)
                    denominator = _numerics.safe_sqrt(v_new / correction)
                else:
                    denominator = _numerics.safe_sqrt(v_new)
            grafted.append(g / (denominator + graft_eps))
            new_nu.append(v_new)

        # Factors: all blocks of a leaf at once.
        decay = jnp.asarray(beta2)
        weight = jnp.where(decay == 1, jnp.ones_like(decay), 1 - decay)
        blocks, new_stats = [], []
        for g, b, s in zip(grads, blockings, old_stats):
            if not b.active:
                blocks.append(None)
                new_stats.append(())
                continue
            x = _to_blocks(g, b)
            blocks.append(x)
            new_stats.append(
                tuple((decay * s_a + weight * axis_gram(x, a, 1)).astype(s_a.dtype) for s_a, a in zip(s, b.axes))
            )

        flat_stats = tuple(s_a for s in new_stats for s_a in s)
        flat_roots = ()
        if flat_stats:
            first_step = jnp.maximum(start_preconditioning_step, 1)  # 0 starts at the first step, as 1
            precondition_now = (count >= first_step) & ((count - first_step) % precondition_frequency == 0)
            flat_roots = _inverse_roots(
                precondition_now,
                flat_stats,
                tuple(r_a for r in old_roots for r_a in r),
                jnp.asarray(matrix_eps),
                tuple(b.root for b, s in zip(blockings, new_stats) for _ in s),
                inverse_root_method,
                relative_matrix_eps,
                not every_step,
            )
        it = iter(flat_roots)
        new_roots = [tuple(next(it) for _ in s) for s in new_stats]

        # Shampoo's direction, grafted.
        use_shampoo = count >= start_preconditioning_step
        directions = []
        for g, b, x, r, d_graft in zip(grads, blockings, blocks, new_roots, grafted):
            if not b.active:
                directions.append(d_graft)
                continue
            y = x
            for h, a in zip(r, b.axes):
                y = contract_axis(y, h, a, 1)
            p = tie_sharding(g, _from_blocks(y, b))
            if graft_type == "none":
                d = p
            else:
                p_norm, graft_norm = _leaf_norms(p, d_graft)
                nonzero = p_norm > 0
                d = jnp.where(nonzero, p * (graft_norm / jnp.where(nonzero, p_norm, 1)), d_graft)
            directions.append(jnp.where(use_shampoo, d, d_graft))

        # Momentum.
        new_mu, out = [], []
        for g, m, d in zip(leaves, mu, directions):
            scale_d = (1 - b1) if moving_average_for_momentum else 1
            m_new = b1 * m.astype(d.dtype) + scale_d * d
            u = b1 * m_new + scale_d * d if nesterov else m_new
            new_mu.append(tie_sharding(g, m_new.astype(m.dtype)))
            out.append(tie_sharding(g, u.astype(g.dtype)))
        new_state = ShampooState(
            count=count,
            mu=treedef.unflatten(new_mu),
            nu=treedef.unflatten([tie_sharding(g, v_new.astype(v.dtype)) for g, v_new, v in zip(leaves, new_nu, nu)])
            if adaptive_graft
            else None,
            stats=treedef.unflatten(new_stats),
            roots=treedef.unflatten(new_roots),
        )
        return treedef.unflatten(out), new_state

    return GradientTransformation(init, update)


@alias
def shampoo(
    learning_rate: ScalarOrSchedule,
    block_size: int = 1024,
    b1: Scalar = 0.9,
    beta2: Scalar = 1.0,
    matrix_eps: Scalar = 1e-6,
    graft_type: Literal["adam", "adagrad", "rmsprop", "sgd", "none"] = "adam",
    graft_beta2: Scalar = 0.999,
    graft_eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    precondition_frequency: int | jax.Array = 1,
    start_preconditioning_step: int | jax.Array = 1,
    max_preconditioner_dim: int = 8192,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    moving_average_for_momentum: bool = False,
    relative_matrix_eps: bool = True,
    inverse_root_method: Literal["eigh", "newton"] = "eigh",
    exponent_override: int | None = None,
) -> GradientTransformationExtraArgs:
    """Shampoo with grafting and decoupled weight decay: ``p <- p - lr (u + weight_decay p)``.

    ``u`` is :func:`scale_by_shampoo`'s direction (see there for the update rule, the epsilon and grafting
    conventions, defaults and memory); the decay is scaled by the learning rate (as ``adamw``; equal to
    ``pytorch_optimizer.ScalableShampoo(decoupled_weight_decay=True)``), limited to ``mask`` if given.
    Note the default heavy-ball momentum ``b1=0.9`` makes steps about 10 times the grafted optimizer's:
    take a learning rate about ``(1 - b1)`` times Adam's, or ``moving_average_for_momentum=True``.
    """
    return chain(
        scale_by_shampoo(
            block_size,
            b1,
            beta2,
            matrix_eps,
            graft_type,
            graft_beta2,
            graft_eps,
            precondition_frequency,
            start_preconditioning_step,
            max_preconditioner_dim,
            mu_dtype,
            nesterov=nesterov,
            moving_average_for_momentum=moving_average_for_momentum,
            relative_matrix_eps=relative_matrix_eps,
            inverse_root_method=inverse_root_method,
            exponent_override=exponent_override,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


__all__: Sequence[str] = ("ShampooState", "scale_by_shampoo", "shampoo")
