r"""PSGD-Kron: preconditioned SGD with a Kronecker-product preconditioner (Li, 2018, arXiv:1512.04202).

Xi-Lin Li's preconditioned stochastic gradient descent fits a preconditioner ``P = Q^T Q`` online, by
relative gradient descent on a criterion whose minimiser whitens the gradient noise, from the pair of a
gradient ``G`` and a random probe ``V ~ N(0, I)``. The "Kron" variant keeps ``Q`` as a Kronecker
product of one factor per axis: upper triangular for short axes, diagonal for long ones, scalars and
vectors. This module follows the "kron" code popularised by Evan Walters (``psgd_jax``'s ``kron``,
``kron_torch``; the same algorithm as ``psgd_torch``'s ``Kron``): momentum fed into the preconditioner
update, which runs with a probability annealed from 1 to 0.03, and the preconditioned step clipped to an
RMS of 1.1.
"""

from __future__ import annotations

import functools
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
from jaxopt_lite.optimizers.shampoo import (
    _check_int,
    axis_gram,
    batched_over_shapes,
    contract_axis,
    factor_dtype,
    matmul,
    tie_sharding,
)
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array

_MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
BALANCE_EVERY = 100  # preconditioner updates between two rebalancings of a leaf's factors


@pytree_factory
def precond_update_prob_schedule(
    max_prob: Scalar = 1.0, min_prob: Scalar = 0.03, decay: Scalar = 0.001, flat_start: Scalar = 500
) -> Callable[[jax.Array], jax.Array]:
    """The reference's preconditioner update probability at step ``n`` (from 0):
    ``clip(max_prob * exp(-decay * (n - flat_start)), min_prob, max_prob)``: 1 for the first 500 steps, then
    annealed to 0.03 (reached near step 4000)."""

    def schedule(n):
        n = jnp.asarray(n, jnp.float32)
        return jnp.clip(max_prob * jnp.exp(-decay * (n - flat_start)), min_prob, max_prob)

    return schedule


class KronState(NamedTuple):
    """``count`` of calls; the PRNG ``key`` for the update draws and the probes; ``precond_count``, the number of
    preconditioner updates so far (for the rebalancing); ``mu``, the momentum, shaped like the params (in
    ``mu_dtype``); per leaf a tuple ``Qs`` of its Kronecker factors (``(d, d)`` upper triangular or ``(d,)``
    diagonal per axis, one ``()`` factor for a scalar, empty for a zero-size leaf)."""

    count: jax.Array
    key: jax.Array
    precond_count: jax.Array
    mu: Any
    Qs: Any


def factor_kinds(
    shape: tuple[int, ...], max_size_triangular: int, min_ndim_triangular: int, memory_save_mode: str | None
) -> tuple[bool, ...]:
    """Per axis of ``shape``: ``True`` where its factor is triangular, ``False`` where diagonal (the reference's
    ``_init_Q_exprs``). A scalar has one diagonal (scalar) factor; a zero-size leaf none."""
    shape = tuple(shape)
    if len(shape) == 0:
        return (False,)
    if 0 in shape:
        return ()
    diag = [False] * len(shape)
    if memory_save_mode == "one_diag":
        diag[len(shape) - 1 - int(np.argmax(shape[::-1]))] = True  # the largest axis (the last of equals)
    elif memory_save_mode == "all_diag":
        diag = [True] * len(shape)
    return tuple(
        not (d == 1 or d > max_size_triangular or len(shape) < min_ndim_triangular or dg) for d, dg in zip(shape, diag)
    )


def _along(x: jax.Array, q: jax.Array, axis: int) -> jax.Array:
    """``x`` scaled by the vector ``q`` along ``axis`` (a diagonal factor; a scalar for a scalar ``x``)."""
    if x.ndim == 0:
        return x * q
    shape = [1] * x.ndim
    shape[axis] = -1
    return x * q.reshape(shape)


def _diag_gram(x: jax.Array, axis: int) -> jax.Array:
    """The diagonal of ``axis_gram(x, axis)``: ``x^2`` summed over the other axes."""
    if x.ndim == 0:
        return x * x
    return jnp.sum(x * x, axis=tuple(a for a in range(x.ndim) if a != axis))


def _safe_norm(x: jax.Array) -> jax.Array:
    return _numerics.safe_sqrt(jnp.sum(x * x))


def norm_lower_bound(a: jax.Array) -> jax.Array:
    """The reference's cheap lower bound of the spectral norm of the symmetric matrix ``a`` (within a factor of
    about sqrt(2)): ``a`` divided by its largest entry, one power-iteration step from its row of largest norm."""
    max_abs = jnp.max(jnp.abs(a))
    nonzero = max_abs > 0
    b = a / jnp.where(nonzero, max_abs, 1)
    sq = b * b
    col, row = jnp.sum(sq, axis=0), jnp.sum(sq, axis=1)
    i, j = jnp.argmax(col), jnp.argmax(row)
    x0 = matmul(b[:, i], b)
    n0 = _safe_norm(x0)
    r0 = _safe_norm(matmul(x0 / jnp.where(n0 > 0, n0, 1), b.T))
    x1 = matmul(b, b[j])
    n1 = _safe_norm(x1)
    r1 = _safe_norm(matmul(b.T, x1 / jnp.where(n1 > 0, n1, 1)))
    value = jnp.where(col[i] > row[j], r0, r1)
    return jnp.where(nonzero, max_abs * value, max_abs)


def _inverse_triangular(stack: jax.Array, members: list) -> jax.Array:
    del members
    eye = jnp.broadcast_to(jnp.eye(stack.shape[-1], dtype=stack.dtype), stack.shape)
    return jax.scipy.linalg.solve_triangular(stack, eye, lower=False)


def probe(key: jax.Array, index: int, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """The probe ``V ~ N(0, I)`` of leaf ``index`` (in ``jax.tree.leaves`` order) drawn from a step's ``key``."""
    return jax.random.normal(jax.random.fold_in(key, index), shape, dtype)


def step_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A step's keys from the state's: the next state's key, the key of the update draw and that of the probes."""
    new_key, k_draw, k_probe = jax.random.split(key, 3)
    return new_key, k_draw, k_probe


def balance(qs: tuple) -> tuple:
    """The factors rescaled to equal largest entries (their geometric mean), the product unchanged."""
    norms = [jnp.max(jnp.abs(q)) for q in qs]
    mean = jnp.prod(jnp.stack(norms)) ** (1 / len(qs))
    return tuple(q * (mean / jnp.where(n > 0, n, 1)) for q, n in zip(qs, norms))


@functools.partial(jax.jit, static_argnames=("kinds",))
def _update_factors(do_update, do_balance, qs: tuple, gs: tuple, k_probe, precond_lr, kinds: tuple) -> tuple:
    """Every leaf's factors after this step's preconditioner update (when ``do_update``; one ``lax.cond``), jitted
    once per layout so that an eager ``update`` compiles the branch once. ``qs`` and ``kinds`` hold per leaf its
    factors and their kinds; the triangular ones of one shape are inverted in one batched call."""

    def run(qs):
        qs = tuple(
            tuple(jnp.where(do_balance, b, q) for b, q in zip(balance(leaf), leaf)) if len(leaf) > 1 else leaf
            for leaf in qs
        )
        triangular = [q[None] for leaf, kind in zip(qs, kinds) for q, k in zip(leaf, kind) if k]
        inverses = iter(batched_over_shapes(_inverse_triangular, triangular) if triangular else ())
        out = []
        for index, (leaf, kind, g) in enumerate(zip(qs, kinds, gs)):
            if not leaf:
                out.append(leaf)
                continue
            dtype = leaf[0].dtype
            tiny = jnp.finfo(dtype).tiny
            g = g.astype(dtype)
            v = probe(k_probe, index, g.shape, dtype)
            a, conj_b = g, v
            for axis, (q, tri) in enumerate(zip(leaf, kind)):
                if tri:
                    a = contract_axis(a, q, axis)
                    conj_b = contract_axis(conj_b, next(inverses)[0].T, axis)
                else:
                    a = _along(a, q, axis)
                    conj_b = _along(conj_b, 1 / q, axis)
            # A common power of two out of A and B: exact, the update is invariant to it, and the grams
            # (fourth powers of the gradient's scale) would otherwise overflow float32 from about 1e9.
            c = lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(a)), jnp.max(jnp.abs(conj_b))))
            c = jnp.where(jnp.isfinite(c) & (c > 0), jnp.exp2(jnp.floor(jnp.log2(jnp.where(c > 0, c, 1)))), 1)
            a, conj_b = a / c, conj_b / c
            new = []
            for axis, (q, tri) in enumerate(zip(leaf, kind)):
                if tri:
                    term1, term2 = axis_gram(a, axis), axis_gram(conj_b, axis)
                    scale = precond_lr / (norm_lower_bound(term1 + term2) + tiny)
                    new.append(q - scale * matmul(jnp.triu(term1 - term2), q))
                else:
                    term1, term2 = _diag_gram(a, axis), _diag_gram(conj_b, axis)
                    scale = precond_lr / (jnp.max(jnp.abs(term1 + term2)) + tiny)
                    new.append(q - scale * (term1 - term2) * q)
            out.append(tuple(n.astype(q.dtype) for n, q in zip(new, leaf)))
        return tuple(out)

    return lax.cond(do_update, run, lambda qs: qs, qs)


def _follow(x: jax.Array, q: jax.Array) -> jax.Array:
    """``q`` sharded as its parameter ``x`` where shaped alike (a vector's diagonal factor), else as it is."""
    return tie_sharding(x, q) if jnp.shape(q) == jnp.shape(x) and q.ndim else q


def _precondition(x: jax.Array, qs: tuple, kind: tuple) -> jax.Array:
    """``P x`` with ``P = Q^T Q``: ``x`` times ``Q_a^T Q_a`` along each axis ``a``."""
    for axis, (q, tri) in enumerate(zip(qs, kind)):
        x = contract_axis(x, matmul(q.T, q), axis) if tri else _along(x, q * q, axis)
    return x


@pytree_factory
def scale_by_kron(
    b1: Scalar = 0.9,
    preconditioner_update_probability: Scalar | Callable[[jax.Array], Any] | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: Literal["one_diag", "all_diag"] | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: Scalar = 0.1,
    precond_init_scale: Scalar | None = 1.0,
    clip_update_rms: Scalar | None = 1.1,
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    seed: int = 0,
) -> GradientTransformation:
    r"""PSGD-Kron's direction (Li, 2018): momentum preconditioned by a learned Kronecker product ``Q^T Q``.

    Per leaf of shape ``(d_1, ..., d_k)`` the preconditioner is ``P = Q^T Q`` with ``Q = Q_1 (x) ... (x) Q_k``:
    one factor per axis, upper triangular ``d_a x d_a`` (initially ``s^(1/k) I``) where ``d_a <=
    max_size_triangular``, ``k >= min_ndim_triangular`` and ``d_a > 1``, else diagonal (a vector
    ``s^(1/k) 1``); a scalar has one scalar factor ``s``. ``memory_save_mode="one_diag"`` makes the largest
    axis's factor diagonal (the last of equal largest), ``"all_diag"`` every factor. ``x_a`` applies a matrix
    along axis ``a`` (``Q_L G Q_R^T`` for a matrix and triangular factors). At step ``t`` (from 1) with
    gradient ``G``:

    .. math::
        m &\leftarrow b_1 m + (1 - b_1) G, \quad \hat m = m / (1 - b_1^t), \\
        \text{with probability } p_t:&\quad
        A = H \times_1 Q_1 \cdots \times_k Q_k, \quad
        \bar B = V \times_1 Q_1^{-T} \cdots \times_k Q_k^{-T}, \quad V \sim N(0, I), \\
        Q_a &\leftarrow Q_a - \frac{\eta_Q}{\|T^+_a\| + \text{tiny}}\, \mathrm{triu}(T^-_a)\, Q_a, \quad
        T^\pm_a = A_{(a)} A_{(a)}^T \pm \bar B_{(a)} \bar B_{(a)}^T, \\
        u &= c\, \hat m \times_1 Q_1^T Q_1 \cdots \times_k Q_k^T Q_k, \quad
        c = \min\!\left(1, \frac{\rho}{\mathrm{rms}(\hat m \times \ldots) + 10^{-6}}\right),

    with ``H = m_hat`` (``momentum_into_precond_update=True``, default) or ``G``, ``X_(a)`` the unfolding of
    ``X`` along ``a``, ``||.||`` the reference's cheap lower bound of the spectral norm
    (:func:`norm_lower_bound`); for a diagonal factor ``T^pm_a`` keep only their diagonals, the norm is their
    largest entry and ``Q_a <- Q_a - eta_Q / (max|T^+_a| + tiny) T^-_a Q_a`` elementwise. All factors of a
    leaf are updated from the same ``A`` and ``B`` (the old factors), and the step uses the new ones.
    ``tiny`` is the smallest normal number of the factors' dtype (``A`` and ``B`` are first divided by a common
    power of two near their largest entry: exact, and the grams do not overflow). Every ``BALANCE_EVERY`` (100)-th
    preconditioner update first rebalances the factors of a leaf of rank >= 2 to equal largest entries
    (``psgd_jax``'s deterministic counter; ``kron_torch`` balances at random with probability 0.01; the
    product is unchanged). ``rho = clip_update_rms`` (``None``: no clipping).

    The update draw: ``p_t = preconditioner_update_probability`` (a float, or a function of the step count
    from 0; ``None``, default, is the reference's :func:`precond_update_prob_schedule` ``(max_prob=1.0,
    min_prob=0.03, decay=0.001, flat_start=500)``), drawn once per step for all leaves as ``uniform < p_t``
    from the key kept in the state (``seed``); the probes ``V`` from the same stream (:func:`step_keys`,
    :func:`probe`), in the factors' dtype. ``precond_init_scale=None`` takes ``s = mean(G^4)^(-1/8)`` from
    the first gradient (``psgd_torch``'s heuristic; 1 for an all-zero gradient), rescaling the factors on the
    first call.

    Defaults (``psgd_jax``/``kron_torch``'s): ``b1=0.9``, the annealed probability schedule,
    ``max_size_triangular=8192``, ``min_ndim_triangular=2`` (vectors diagonal), ``memory_save_mode=None``,
    ``momentum_into_precond_update=True``, ``precond_lr=0.1``, ``precond_init_scale=1.0``,
    ``clip_update_rms=1.1``, ``precond_dtype=None``: float32, or float64 for float64 params. Every float
    hyperparameter may be traced.

    Memory: per parameter the momentum (``mu_dtype``); per axis of length ``d`` a ``d x d`` triangular factor
    (stored full) or ``d`` floats, in ``precond_dtype``: ``m^2 + n^2`` for an ``m x n`` matrix, ``n`` for a
    vector. Sharding: ``mu``, the updates and a vector's diagonal factor follow their parameter; the other factors
    are whole, replicated.
    Complex parameters are refused; so is a fused tree.

    Reference: X.-L. Li, "Preconditioned stochastic gradient descent", IEEE TNNLS 2018, arXiv:1512.04202;
    code: ``lixilinx/psgd_torch``, ``evanatyourservice/kron_torch`` and ``psgd_jax``.
    """
    owner = "scale_by_kron"
    _check_int(owner, "max_size_triangular", max_size_triangular, 0)
    _check_int(owner, "min_ndim_triangular", min_ndim_triangular, 0)
    _check_int(owner, "seed", seed, 0)
    if memory_save_mode not in _MEMORY_SAVE_MODES:
        raise ValueError(f"{owner}: memory_save_mode must be one of {_MEMORY_SAVE_MODES}, got {memory_save_mode!r}")
    _checks.check_decay(owner, "b1", b1)
    _checks.check_nonnegative(owner, "precond_lr", precond_lr)
    if precond_init_scale is not None:
        _checks.check_positive(owner, "precond_init_scale", precond_init_scale)
    if clip_update_rms is not None:
        _checks.check_positive(owner, "clip_update_rms", clip_update_rms)
    probability = preconditioner_update_probability
    if probability is None:
        probability = precond_update_prob_schedule()
    elif not callable(probability):
        _checks.check_range(owner, "preconditioner_update_probability", probability, low=0.0, high=1.0)

    def kinds_of(tree) -> tuple:
        return tuple(
            factor_kinds(jnp.shape(x), max_size_triangular, min_ndim_triangular, memory_save_mode)
            for x in jax.tree.leaves(tree)
        )

    def q_dtype(x):
        return factor_dtype(jnp.result_type(x)) if precond_dtype is None else precond_dtype

    def init(params):
        reject_fused(owner, params)
        _tree.check_floating(params, owner, real="PSGD-Kron's factors are real matrices")
        leaves, treedef = jax.tree.flatten(params)
        scale = 1.0 if precond_init_scale is None else precond_init_scale
        qs = []
        for x, kind in zip(leaves, kinds_of(params)):
            dtype = q_dtype(x)
            shape = jnp.shape(x)
            if not kind:
                qs.append(())
            elif not shape:
                qs.append((jnp.asarray(scale, dtype),))
            else:
                s = jnp.asarray(scale, dtype) ** (1 / len(shape))
                factors = (s * (jnp.eye(d, dtype=dtype) if tri else jnp.ones(d, dtype)) for d, tri in zip(shape, kind))
                qs.append(tuple(_follow(x, q) for q in factors))
        return KronState(
            count=_tree.zero_count(),
            key=jax.random.PRNGKey(seed),
            precond_count=_tree.zero_count(),
            mu=_tree.accumulator_zeros(params, mu_dtype),
            Qs=treedef.unflatten(qs),
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        leaves, treedef = jax.tree.flatten(updates)
        kinds = kinds_of(updates)
        mu = treedef.flatten_up_to(state.mu)
        old_qs = treedef.flatten_up_to(state.Qs)
        count = _tree.safe_increment(state.count)
        new_key, k_draw, k_probe = step_keys(state.key)
        p = probability(state.count) if callable(probability) else probability
        do_update = jax.random.uniform(k_draw) < p
        do_balance = (state.precond_count + 1) % BALANCE_EVERY == 0

        qs, moments, debiased = [], [], []
        for g, m, q, kind in zip(leaves, mu, old_qs, kinds):
            dtype = q[0].dtype if q else factor_dtype(g.dtype)
            x = g.astype(dtype)
            if precond_init_scale is None and q:
                # mean(G^4)^(-1/8), computed as (top * mean((G / top)^4)^(1/4))^(-1/2): no overflow
                top = jnp.max(jnp.abs(x))
                safe_top = jnp.where(top > 0, top, 1)
                s = jnp.where(top > 0, (safe_top * jnp.mean((x / safe_top) ** 4) ** 0.25) ** -0.5, 1)
                s = s ** (1 / len(g.shape)) if g.shape else s
                q = tuple(jnp.where(state.count == 0, s * q_a, q_a).astype(q_a.dtype) for q_a in q)
            qs.append(tuple(q))
            m_new = b1 * m.astype(dtype) + (1 - b1) * x
            moments.append(m_new)
            t = count.astype(dtype)
            debiased.append(m_new / (1 - jnp.asarray(b1, dtype) ** t))

        feed = debiased if momentum_into_precond_update else [g.astype(d.dtype) for g, d in zip(leaves, debiased)]
        new_qs = _update_factors(do_update, do_balance, tuple(qs), tuple(feed), k_probe, jnp.asarray(precond_lr), kinds)

        out, new_mu = [], []
        for g, m_old, m_new, h, q, kind in zip(leaves, mu, moments, debiased, new_qs, kinds):
            u = _precondition(h, q, kind)
            if clip_update_rms is not None and u.size:
                top = jnp.max(jnp.abs(u))
                safe_top = jnp.where(top > 0, top, 1)
                rms = safe_top * _numerics.safe_sqrt(jnp.mean(jnp.square(u / safe_top)))  # no overflow
                u = u * jnp.minimum(clip_update_rms / (rms + 1e-6), 1)
            out.append(tie_sharding(g, u.astype(g.dtype)))
            new_mu.append(tie_sharding(g, m_new.astype(m_old.dtype)))
        new_state = KronState(
            count=count,
            key=new_key,
            precond_count=jnp.where(do_update, _tree.safe_increment(state.precond_count), state.precond_count),
            mu=treedef.unflatten(new_mu),
            Qs=treedef.unflatten([tuple(_follow(g, q_a) for q_a in q) for g, q in zip(leaves, new_qs)]),
        )
        return treedef.unflatten(out), new_state

    return GradientTransformation(init, update)


@alias
def kron(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: Scalar = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    preconditioner_update_probability: Scalar | Callable[[jax.Array], Any] | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: Literal["one_diag", "all_diag"] | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: Scalar = 0.1,
    precond_init_scale: Scalar | None = 1.0,
    clip_update_rms: Scalar | None = 1.1,
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    seed: int = 0,
) -> GradientTransformationExtraArgs:
    """PSGD-Kron (Li, 2018, arXiv:1512.04202) with decoupled weight decay: ``p <- p - lr (u + weight_decay p)``.

    ``u`` is :func:`scale_by_kron`'s direction (update rule, probability schedule, defaults and memory there),
    the decay as ``psgd_jax``'s ``kron`` (``add_decayed_weights`` before the learning rate, limited to
    ``mask``; ``kron_torch`` decays only parameters of rank >= 2: pass a ``mask`` for that). Defaults (the
    reference's): ``learning_rate=1e-3``, ``b1=0.9``, ``weight_decay=0``, ``precond_lr=0.1``,
    ``precond_init_scale=1.0``, ``max_size_triangular=8192``, ``min_ndim_triangular=2``.
    """
    return chain(
        scale_by_kron(
            b1,
            preconditioner_update_probability,
            max_size_triangular,
            min_ndim_triangular,
            memory_save_mode,
            momentum_into_precond_update,
            precond_lr,
            precond_init_scale,
            clip_update_rms,
            mu_dtype,
            precond_dtype,
            seed,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


__all__: Sequence[str] = (
    "KronState",
    "factor_kinds",
    "kron",
    "norm_lower_bound",
    "precond_update_prob_schedule",
    "scale_by_kron",
)
