"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from jaxopt_lite.numerics import eps_divide, zero_safe_div
from jaxopt_lite.transforms.adaptive import ScaleByAdamState
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


def _quarter_power(count: jax.Array) -> jax.Array:
    return count**0.25


@pytree_factory
def scale_by_adopt(
    b1: Scalar = 0.9,
    b2: Scalar = 0.9999,
    eps: Scalar = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = _quarter_power,
) -> GradientTransformation:
    """ADOPT's direction: normalise the gradient by the *previous* second moment, then average it.

    With ``t`` the number of earlier steps (0 at the first call) and
    ``c_t = clip_value_fn(t)`` (default ``t**0.25``):

    - ``t = 0``: ``v <- g^2``, ``m`` stays 0 (the output is 0);
    - ``t >= 1``: ``m <- b1 m + (1-b1) clip(g / max(sqrt(v), eps), -c_t, c_t)`` with the
      ``v`` of the previous step, then ``v <- b2 v + (1-b2) g^2``; the output is ``m``
      (with ``nesterov=True``: ``b1 m + (1-b1) clip(...)`` with the new ``m``).

    ``use_clipping=False`` drops the clip. ``eps`` bounds the denominator below
    (a maximum, not a sum). State: Adam's ``ScaleByAdamState(count, mu, nu)``;
    memory two buffers per parameter. Defaults (Optax's): ``b1=0.9, b2=0.9999, eps=1e-6``.
    """
    owner = "scale_by_adopt"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _checks.check_nonnegative(owner, "eps", eps)

    def init(params):
        _tree.check_floating(params, owner, real="ADOPT clips g / sqrt(v), and complex numbers have no order")
        mu, nu = _tree.accumulator_zeros(params, mu_dtype), _tree.zeros_like(params)
        return ScaleByAdamState(count=_tree.zero_count(), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        started = state.count > 0
        b1_now = jnp.where(started, b1, 1.0)  # the first step only records v
        b2_now = jnp.where(started, b2, 0.0)

        divide = eps_divide(eps, zero_safe_div)  # eps = 0: a zero gradient over a zero history is 0, not 0 / 0

        def normalised(g, v):
            # max(sqrt(v), eps) with a finite derivative at v = 0 (the first step's v)
            root = jnp.where(v > 0, jnp.sqrt(jnp.where(v > 0, v, 1)), 0)
            n = divide(g, jnp.maximum(root, eps))
            if use_clipping:
                limit = clip_value_fn(state.count)
                n = jnp.clip(n, -limit, limit)
            return n

        normed = jax.tree.map(normalised, updates, state.nu)
        mu = _tree.update_moment(normed, state.mu, b1_now, 1)
        nu = _tree.update_moment_per_elem_norm(updates, state.nu, b2_now, 2)
        direction = _tree.update_moment(normed, mu, b1_now, 1) if nesterov else mu
        direction = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
        return direction, ScaleByAdamState(count=_tree.safe_increment(state.count), mu=mu, nu=nu)

    return GradientTransformation(init, update)


@alias
def adopt(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.9999,
    eps: Scalar = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = _quarter_power,
) -> GradientTransformationExtraArgs:
    """ADOPT (Taniguchi et al., NeurIPS 2024): ``p <- p - lr * m`` with :func:`scale_by_adopt`'s ``m``.

    Adam with the second moment lagged by one step, so that the gradient and its
    normaliser are independent; converges for any ``b2``. The first step does not move.
    """
    return chain(
        scale_by_adopt(
            b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping, clip_value_fn=clip_value_fn
        ),
        scale_by_learning_rate(learning_rate),
    )
