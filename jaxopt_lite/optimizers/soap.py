r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024, arXiv:2409.11321).

Each axis of a tensor keeps Shampoo's Kronecker factor as an exponential moving average
(``L = E[G G^T]``, ``R = E[G^T G]`` for a matrix) and an orthogonal basis ``Q`` of its
eigenvectors, refreshed every ``precondition_frequency`` steps by one step of power
iteration with a QR decomposition. Adam runs on the gradient rotated into these bases
and its step is rotated back. Bases of one shape are decomposed in one batched call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


class SoapState(NamedTuple):
    """``count`` of calls (the first only builds the bases); Adam's moments ``mu`` and ``nu``, kept in the
    rotated basis and shaped like the params; per leaf a tuple of Kronecker ``factors`` (one ``d x d`` EMA per
    preconditioned axis of the merged shape, empty for a leaf with none) and their eigenbases ``bases``."""

    count: jax.Array
    mu: Any
    nu: Any
    factors: Any
    bases: Any


class _View(NamedTuple):
    shape: tuple[int, ...]  # the (merged) shape the factors act on
    axes: tuple[int, ...]  # its axes with a factor (the others are left as they are: identity)


def merged_shape(shape: tuple[int, ...], max_precond_dim: int) -> tuple[int, ...]:
    """The reference implementation's ``merge_dims``: consecutive axes multiplied together while the product
    stays at most ``max_precond_dim`` (``(3, 5, 2)`` is ``(30,)`` for any bound >= 30)."""
    new_shape, current = [], 1
    for d in shape:
        product = current * d
        if product > max_precond_dim:
            if current > 1:
                new_shape.append(current)
                current = d
            else:
                new_shape.append(d)
                current = 1
        else:
            current = product
    if current > 1 or not new_shape:
        new_shape.append(current)
    return tuple(new_shape)


def _view(shape: tuple[int, ...], max_precond_dim: int, merge_dims: bool, precondition_1d: bool) -> _View:
    if len(shape) == 0 or 0 in shape:
        return _View(tuple(shape), ())
    if len(shape) == 1:
        return _View(tuple(shape), (0,) if precondition_1d and shape[0] <= max_precond_dim else ())
    view = merged_shape(shape, max_precond_dim) if merge_dims else tuple(shape)
    return _View(view, tuple(a for a, d in enumerate(view) if d <= max_precond_dim))


def _rotate(x: jax.Array, bases: tuple, axes: tuple[int, ...], *, back: bool = False) -> jax.Array:
    """``x`` in the bases (``Q^T`` along each axis) or, with ``back``, out of them (``Q``)."""
    for q, a in zip(bases, axes):
        x = contract_axis(x, q if back else q.T, a)
    return x


def _eigenbasis(stack: jax.Array, members: list) -> jax.Array:
    """Eigenvectors of each factor, by decreasing eigenvalue (the reference's ``flip`` of ``eigh``'s order)."""
    del members
    _, v = jnp.linalg.eigh(stack)
    return v[..., ::-1]


def _power_qr(pair: jax.Array, members: list) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step ``Q <- QR(S Q)``, the columns first sorted by ``diag(Q^T S Q)`` decreasing.

    ``pair`` stacks the factor ``S`` and the basis ``Q`` as ``(n, 2, d, d)``; returns the new bases and the
    column order (to permute Adam's second moment alike)."""
    del members
    s, q = pair[:, 0], pair[:, 1]
    sq = matmul(s, q)
    estimates = jnp.sum(q * sq, axis=-2)
    order = jnp.argsort(-estimates, axis=-1, stable=True)
    power = jnp.take_along_axis(sq, order[:, None, :], axis=-1)
    new_q, _ = jnp.linalg.qr(power)
    return new_q, order


@functools.partial(jax.jit, static_argnames=("views",))
def _update_bases(branch, factors: tuple, bases: tuple, moments: tuple, views: tuple) -> tuple:
    """The bases after this step: ``branch`` 0 keeps them, 1 builds them (the first call: exact eigenvectors,
    the moments untouched), 2 refreshes them (one QR power-iteration step; ``v`` permuted, ``m`` rotated).

    One ``lax.switch`` for all leaves, jitted once per tree layout so that an eager ``update`` compiles it
    once, not at every call."""

    def keep(moments):
        return bases, moments

    def build(moments):
        new = batched_over_shapes(_eigenbasis, [f[None] for f in factors])
        return tuple(q[0] for q in new), moments

    def refresh(moments):
        pairs = [jnp.stack([f, q])[None] for f, q in zip(factors, bases)]
        results = iter(batched_over_shapes(_power_qr, pairs))
        old = iter(bases)
        new_bases, new_moments = [], []
        for view, (m, v) in zip(views, moments):
            for a in view.axes:
                q_old = next(old)
                q_new, order = next(results)
                q_new, order = q_new[0], order[0]
                v = jnp.take(v, order, axis=a)
                m = contract_axis(m, matmul(q_new.T, q_old), a)  # m x_a (Q_old^T Q_new)
                new_bases.append(q_new)
            new_moments.append((m, v))
        return tuple(new_bases), tuple(new_moments)

    return lax.switch(branch, [keep, build, refresh], moments)


@pytree_factory
def scale_by_soap(
    b1: Scalar = 0.95,
    b2: Scalar = 0.95,
    shampoo_beta: Scalar | None = None,
    eps: Scalar = 1e-8,
    precondition_frequency: int | jax.Array = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
    mu_dtype: Any = None,
) -> GradientTransformation:
    r"""SOAP's direction (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's factors.

    Per leaf (viewed with consecutive axes merged while their product stays at most ``max_precond_dim``
    if ``merge_dims``), every axis ``a`` of length at most ``max_precond_dim`` (of a vector only with
    ``precondition_1d``) has a factor ``S_a`` and an orthogonal basis ``Q_a``; the other axes are left
    as they are (identity). Write ``rot(X) = X x_a Q_a^T`` over those axes (``Q_L^T X Q_R`` for a matrix)
    and ``rot^-1`` its inverse. As the reference implementation (``nikhilvyas/SOAP``, Algorithm 3 of the
    paper):

    - The first call only builds the factors, ``S_a = (1 - beta) G_(a) G_(a)^T``, and the bases, the
      eigenvectors of ``S_a`` by decreasing eigenvalue (``jnp.linalg.eigh``); its update is 0 (so the
      gradient never sees a basis built from itself).
    - Every later call, with ``t`` the number of Adam steps so far (1 on the second call):

      .. math::
          \tilde G &= \mathrm{rot}(G), \quad m \leftarrow b_1 m + (1 - b_1) \tilde G, \quad
          v \leftarrow b_2 v + (1 - b_2) \tilde G^2, \\
          u &= \frac{\sqrt{1 - b_2^t}}{1 - b_1^t}\, \mathrm{rot}^{-1}\!\left(\frac{m}{\sqrt v + \epsilon}\right), \\
          S_a &\leftarrow \beta S_a + (1 - \beta) G_{(a)} G_{(a)}^T,

      and if ``t % precondition_frequency == 0`` each basis takes one power-iteration step: its columns
      sorted by the estimated eigenvalues ``diag(Q^T S Q)`` (decreasing), ``Q <- QR(S Q)``; ``v`` is
      permuted like the columns (not rotated) and ``m``, kept in the rotated basis, is rotated into the
      new one (``m <- m x_a (Q_old^T Q_new)``, the reference's project-back-then-project).

    Bias correction is the reference's: ``eps`` is added to the uncorrected ``sqrt(v)`` and the step is
    scaled by ``sqrt(1 - b2^t) / (1 - b1^t)`` (Adam with ``eps / sqrt(1 - b2^t)``), ``t`` counting from
    the second call. ``beta = shampoo_beta``, or ``b2`` if ``None``.

    Defaults (the paper's): ``b1=0.95``, ``b2=0.95``, ``shampoo_beta=None`` (0.95), ``eps=1e-8``,
    ``precondition_frequency=10``, ``max_precond_dim=10000``, ``merge_dims=False``,
    ``precondition_1d=False``. Every float hyperparameter may be traced (derivatives through the bases
    exist where the factors' eigenvalues are distinct); ``precondition_frequency`` may be an integer array.

    Memory: per parameter ``mu`` (in ``mu_dtype``) and ``nu``; per preconditioned axis of length ``d``
    a factor and a basis, ``2 d^2`` floats in float32 (float64 for float64 params): ``2 (m^2 + n^2)``
    for an ``m x n`` matrix. Sharding: ``mu``, ``nu`` and the updates follow their parameter (tied by
    ``shard_alike``); factors and bases are whole matrices, replicated over the parameters' mesh. Complex
    parameters are refused; so is a fused tree.
    """
    owner = "scale_by_soap"
    _check_int(owner, "max_precond_dim", max_precond_dim, 1)
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    beta = b2 if shampoo_beta is None else shampoo_beta
    _checks.check_decay(owner, "shampoo_beta", beta)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_range(owner, "precondition_frequency", precondition_frequency, low=1.0)

    def views(tree) -> list[_View]:
        return [_view(jnp.shape(x), max_precond_dim, merge_dims, precondition_1d) for x in jax.tree.leaves(tree)]

    def init(params):
        reject_fused(owner, params)
        _tree.check_floating(params, owner, real="SOAP's Kronecker factors are real symmetric matrices")
        leaves, treedef = jax.tree.flatten(params)
        factors, bases = [], []
        for x, view in zip(leaves, views(params)):
            dtype = factor_dtype(jnp.result_type(x))
            factors.append(tuple(jnp.zeros((view.shape[a],) * 2, dtype) for a in view.axes))
            bases.append(tuple(jnp.eye(view.shape[a], dtype=dtype) for a in view.axes))
        return SoapState(
            count=_tree.zero_count(),
            mu=_tree.accumulator_zeros(params, mu_dtype),
            nu=_tree.zeros_like(params),
            factors=treedef.unflatten(factors),
            bases=treedef.unflatten(bases),
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        leaves, treedef = jax.tree.flatten(updates)
        leaf_views = views(updates)
        mu, nu = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        old_factors, old_bases = treedef.flatten_up_to(state.factors), treedef.flatten_up_to(state.bases)
        first = state.count == 0
        count = _tree.safe_increment(state.count)
        t = count - 1  # Adam steps so far, this one included

        moments, steps, new_factors = [], [], []
        divide = _numerics.eps_divide(eps)  # eps = 0: a zero gradient gives 0, not 0 / 0
        for g, view, m, v, s, q in zip(leaves, leaf_views, mu, nu, old_factors, old_bases):
            x = g.astype(factor_dtype(g.dtype)).reshape(view.shape)
            rotated = _rotate(x, q, view.axes)
            m_new = b1 * m.astype(x.dtype).reshape(view.shape) + (1 - b1) * rotated
            v_new = b2 * v.astype(x.dtype).reshape(view.shape) + (1 - b2) * jnp.square(rotated)
            moments.append((m_new, v_new))
            steps.append(_rotate(divide(m_new, _numerics.safe_sqrt(v_new) + eps), q, view.axes, back=True))
            new_factors.append(
                tuple((beta * s_a + (1 - beta) * axis_gram(x, a)).astype(s_a.dtype) for s_a, a in zip(s, view.axes))
            )

        tf = jnp.maximum(t, 1)
        flat_factors = tuple(s_a for s in new_factors for s_a in s)
        if flat_factors:
            branch = jnp.where(first, 1, jnp.where(t % precondition_frequency == 0, 2, 0))
            flat_bases = tuple(q_a for q in old_bases for q_a in q)
            flat_bases_new, moments = _update_bases(branch, flat_factors, flat_bases, tuple(moments), tuple(leaf_views))
        else:
            flat_bases_new = ()
        it = iter(flat_bases_new)
        new_bases = [tuple(next(it) for _ in s) for s in new_factors]

        out, new_mu, new_nu = [], [], []
        for g, m_old, v_old, (m, v), step in zip(leaves, mu, nu, moments, steps):
            scale = jnp.sqrt(1 - jnp.asarray(b2, step.dtype) ** tf.astype(step.dtype)) / (
                1 - jnp.asarray(b1, step.dtype) ** tf.astype(step.dtype)
            )
            u = jnp.where(first, 0, scale * step).reshape(g.shape)
            out.append(tie_sharding(g, u.astype(g.dtype)))
            new_mu.append(tie_sharding(g, jnp.where(first, m_old, m.reshape(g.shape).astype(m_old.dtype))))
            new_nu.append(tie_sharding(g, jnp.where(first, v_old, v.reshape(g.shape).astype(v_old.dtype))))
        new_state = SoapState(
            count=count,
            mu=treedef.unflatten(new_mu),
            nu=treedef.unflatten(new_nu),
            factors=treedef.unflatten(new_factors),
            bases=treedef.unflatten(new_bases),
        )
        return treedef.unflatten(out), new_state

    return GradientTransformation(init, update)


class _DecayState(NamedTuple):
    count: jax.Array


def _decay_stepped_params(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule) -> GradientTransformation:
    """``u <- u - lr * weight_decay * (p + u)`` from the second call on: the stepped parameters decayed, as the
    reference's ``p.add_(step); p.mul_(1 - lr * weight_decay)`` (the first call, which makes no step, neither
    decays)."""
    owner = "soap"
    if not callable(weight_decay):
        _checks.check_nonnegative(owner, "weight_decay", weight_decay)

    def init(params):
        del params
        return _DecayState(count=_tree.zero_count())

    def update(updates, state, params=None):
        _tree.require_params(owner, updates, params, "for the weight decay")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
        rate = jnp.where(state.count > 0, lr * wd, 0)
        out = jax.tree.map(lambda u, p: (u - rate * (p + u)).astype(u.dtype), updates, params)
        return out, _DecayState(count=_tree.safe_increment(state.count))

    return GradientTransformation(init, update)


@alias
def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: Scalar = 0.95,
    b2: Scalar = 0.95,
    shampoo_beta: Scalar | None = None,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    mask: Any = None,
    precondition_frequency: int | jax.Array = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
    mu_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """SOAP (Vyas et al., 2024, arXiv:2409.11321) with the reference's decoupled weight decay.

    ``p <- (p - lr u) (1 - lr weight_decay)`` with :func:`scale_by_soap`'s ``u`` (update rule, bias
    correction, defaults and memory there): the decay applies to the stepped parameters, after the step,
    as ``nikhilvyas/SOAP`` and ``pytorch_optimizer.SOAP`` (``adamw`` decays before: the two differ by
    ``lr^2 weight_decay u``), and not on the first call (which makes no step). ``mask`` limits the decay.
    Defaults (the paper's): ``learning_rate=3e-3``, ``b1=b2=0.95``, ``shampoo_beta`` = ``b2``,
    ``eps=1e-8``, ``weight_decay=0.01``, ``precondition_frequency=10``, ``max_precond_dim=10000``.
    """
    decay = _decay_stepped_params(learning_rate, weight_decay)
    if mask is not None:
        from jaxopt_lite.wrappers import masked

        decay = masked(decay, mask)
    return chain(
        scale_by_soap(
            b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, merge_dims, precondition_1d, mu_dtype
        ),
        scale_by_learning_rate(learning_rate),
        decay,
    )


__all__: Sequence[str] = ("SoapState", "merged_shape", "scale_by_soap", "soap")
