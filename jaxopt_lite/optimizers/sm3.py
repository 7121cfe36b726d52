"""SM3 (Anil, Gupta, Koren & Singer, 2019, "Memory-Efficient Adaptive Optimization", arXiv:1901.11150):
Adagrad-like step sizes from one accumulator per slice of each axis instead of one per parameter."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
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
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


class ScaleBySM3State(NamedTuple):
    """Per leaf, ``mu`` is a list of per-axis accumulators (entry ``i`` of shape ``(shape[i],)``) and ``nu``
    the momentum of the preconditioned gradient, shaped like the leaf."""

    mu: Any
    nu: Any


def _broadcastable(m: jax.Array, ndim: int, axis: int) -> jax.Array:
    """The accumulator of ``axis`` reshaped to ``[1, ..., n_axis, ..., 1]``."""
    return jnp.reshape(m, [1] * axis + [m.shape[0]] + [1] * (ndim - axis - 1))


@pytree_factory
def scale_by_sm3(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 1.0,
    eps: float | jax.Array = 1e-8,
) -> GradientTransformation:
    r"""SM3-II (Anil et al., 2019, Algorithm 2) with the cover of each leaf by its axis slices.

    A leaf of shape ``(n_1, ..., n_k)`` keeps ``k`` accumulators ``mu_i`` of shape ``(n_i,)`` (one per
    slice along axis ``i``; for a vector, one per entry: diagonal Adagrad). Per step, broadcasting
    each ``mu_i`` along its axis:

    - ``nu'(j) = c g(j)^2 + b2 min_i mu_i(j_i)`` with ``c = 1`` if ``b2 == 1`` else ``1 - b2``;
    - ``mu_i(r) <- max_{j: j_i = r} nu'(j)``;
    - ``u = g / sqrt(nu' + eps)`` where ``nu' > 0``, else ``0`` (the paper's ``0/0 = 0``);
    - ``m <- b1 m + (1 - b1) u`` (state ``nu``, no debiasing), and the output is ``m``.

    ``b2 = 1`` (default) is the paper's sum of squared gradients; ``b2 < 1`` (Optax's extension)
    decays it. ``eps`` and the momentum ``b1`` are Optax's; the paper's algorithm has neither.
    Memory: ``n_1 + ... + n_k`` numbers for the accumulators plus one per parameter for the momentum.
    A scalar leaf keeps one accumulator of shape ``()`` (Optax keeps none and fails on the update).
    Complex parameters are refused, as Optax does. Defaults: ``b1=0.9, b2=1.0, eps=1e-8``.
    """
    owner = "scale_by_sm3"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_range(owner, "b2", b2, low=0.0, high=1.0)
    _checks.check_nonnegative(owner, "eps", eps)
    b2_value = _checks.concrete(b2)

    def init(params):
        reject_fused(owner, params)  # accumulators per slice of each axis: a fused buffer has one axis
        _tree.check_floating(params, owner, real="as in Optax")

        def accumulators(p):
            # Each accumulator sharded as the update's max over the other axes makes it (zeros like the
            # parameter's sum over them; a scalar's, like the parameter), not on one device.
            p = jnp.asarray(p)
            if p.ndim == 0:
                return [_tree.zeros_like(p, p.dtype)]
            others = [tuple(a for a in range(p.ndim) if a != i) for i in range(p.ndim)]
            return [_tree.zeros_like(jnp.sum(p, axis=axes), p.dtype) for axes in others]

        return ScaleBySM3State(mu=jax.tree.map(accumulators, params), nu=_tree.zeros_like(params))

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        del params
        _tree.check_same_shapes(updates, state.nu, "updates", f"{owner} state")

        def leaf(g, mus):
            if b2_value is not None:  # as Optax: Python coefficients keep the leaf's dtype
                c = 1.0 if b2_value == 1.0 else 1.0 - b2
            else:
                c = jnp.where(b2 == 1.0, 1.0, 1.0 - b2)
            if g.ndim == 0:
                smallest = mus[0]
            else:
                smallest = functools.reduce(jnp.minimum, [_broadcastable(m, g.ndim, i) for i, m in enumerate(mus)])
            acc = (c * jnp.square(g) + b2 * smallest).astype(mus[0].dtype)
            positive = acc > 0
            scaled = g * jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, acc + eps, 1)), 0)
            if g.ndim == 0:
                new_mus = [acc]
            else:
                new_mus = [jnp.max(acc, axis=tuple(a for a in range(g.ndim) if a != i), initial=0).astype(m.dtype)
                           for i, m in enumerate(mus)]
            return scaled.astype(g.dtype), new_mus

        treedef = jax.tree.structure(updates)
        flat = treedef.flatten_up_to(jax.tree.map(leaf, updates, state.mu))
        scaled = treedef.unflatten([x[0] for x in flat])
        mu = treedef.unflatten([x[1] for x in flat])
        nu = _tree.update_moment(scaled, state.nu, b1, 1)
        return _tree.cast_like(nu, updates), ScaleBySM3State(mu=mu, nu=nu)

    return GradientTransformation(init, update)


@alias
def sm3(
    learning_rate: ScalarOrSchedule,
    momentum: float | jax.Array | None = 0.9,
) -> GradientTransformationExtraArgs:
    """SM3: ``p <- p - learning_rate * m`` with ``m`` from :func:`scale_by_sm3` (``b1=momentum``).

    As Optax: ``b2=1, eps=1e-8``. ``momentum=None`` means no momentum (``b1 = 0``; Optax's docstring
    promises it, its code fails); a schedule as ``learning_rate`` works here (Optax's ``sm3`` takes a
    number only).
    """
    return chain(scale_by_sm3(0.0 if momentum is None else momentum), scale_by_learning_rate(learning_rate))
