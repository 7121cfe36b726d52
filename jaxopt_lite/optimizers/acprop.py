"""ACProp (Zhuang et al., 2021, "Momentum Centering and Asynchronous Update for Adaptive Gradient Methods")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

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
from jaxopt_lite.transforms.adaptive import ScaleByAdamState
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


@pytree_factory
def scale_by_acprop(
    b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-16, eps_root: Scalar = 1e-16
) -> GradientTransformation:
    """ACProp's direction: the raw gradient over the *previous* centred second moment.

    With ``t`` the step from 1::

        u = g_t / (sqrt(s_{t-1} / (1 - b2^(t-1))) + eps)      (u = g_1 / (1 + eps) at t = 1)
        m_t = b1 m_{t-1} + (1 - b1) g_t,   s_t = b2 s_{t-1} + (1 - b2) (g_t - m_{t-1})^2 + eps_root

    Note the prediction error uses the previous ``m`` (as Optax and the authors'
    code). State: ``ScaleByAdamState(count, mu, nu)`` (Optax names it
    ``ScaleByBeliefState``, same fields). Memory: two buffers per parameter.
    """
    owner = "scale_by_acprop"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "eps_root", eps_root)

    def init(params):
        _tree.check_floating(params, owner)
        return ScaleByAdamState(count=_tree.zero_count(), mu=_tree.zeros_like(params), nu=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        mu = _tree.update_moment(updates, state.mu, b1, 1)
        error = jax.tree.map(lambda g, m: g - m, updates, state.mu)
        nu = jax.tree.map(lambda v: (v + eps_root).astype(v.dtype), _tree.update_moment(error, state.nu, b2, 2))
        first = state.count == 0
        nu_hat = _tree.bias_correction(state.nu, b2, jnp.maximum(state.count, 1))

        def direction(g, v):
            v = jnp.where(first, 1, v)
            return _numerics.safe_div(g, _numerics.safe_sqrt(v) + eps).astype(g.dtype)

        new_updates = jax.tree.map(direction, updates, nu_hat)
        return new_updates, ScaleByAdamState(count=_numerics.safe_increment(state.count), mu=mu, nu=nu)

    return GradientTransformation(init, update)


@alias
def acprop(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    weight_decay: Scalar = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformationExtraArgs:
    """ACProp: ``x <- x - lr_t (g_t / (sqrt(s_hat_{t-1}) + eps) + weight_decay x)`` (see :func:`scale_by_acprop`)."""
    return chain(
        scale_by_acprop(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
