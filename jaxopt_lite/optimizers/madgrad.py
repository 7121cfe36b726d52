"""MADGRAD (Defazio & Jelassi, 2021, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
Averaged Gradient Method for Stochastic Optimization")."""

from __future__ import annotations

from typing import Any, NamedTuple

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
from jaxopt_lite.transforms.regularization import add_decayed_weights

Scalar = float | jax.Array


class MadgradState(NamedTuple):
    """The step count, the weighted sums of squared gradients ``G`` and of gradients ``s``, and ``x0``."""

    count: jax.Array
    grad_sum_sq: Any
    s: Any
    x0: Any


@pytree_factory
def scale_by_madgrad(
    learning_rate: ScalarOrSchedule, momentum: Scalar = 0.9, eps: Scalar = 1e-6
) -> GradientTransformation:
    """MADGRAD's dual-averaged step (Algorithm 1; the learning rate is part of the update).

    With ``k`` the step count from 0 and ``lambda = (lr_k + eps) sqrt(k + 1)``::

        G <- G + lambda g^2,   s <- s + lambda g,   z = x0 - s / (G^(1/3) + eps)
        x_new = (1 - momentum) z + momentum x,   u = x_new - x

    ``x0`` is the params given to ``init``. Memory: three buffers per parameter.
    ``update`` needs ``params``.
    """
    owner = "scale_by_madgrad"
    _checks.check_range(owner, "momentum", momentum, low=0.0, high=1.0)
    _checks.check_nonnegative(owner, "eps", eps)
    if not callable(learning_rate):
        _checks.check_learning_rate(owner, learning_rate)

    def init(params):
        _tree.check_floating(params, owner, real="MADGRAD takes the cube root of its accumulated gradients")
        return MadgradState(
            count=_tree.zero_count(),
            grad_sum_sq=_tree.zeros_like(params),
            s=_tree.zeros_like(params),
            x0=jax.tree.map(lambda p: p.copy(), params),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params")
        _tree.check_same_shapes(updates, state.s, "updates", f"{owner} state")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        lamb = (lr + eps) * jnp.sqrt(state.count + 1.0)

        def leaf(g, x, x0, big_g, s):
            big_g = (big_g + lamb * g * g).astype(big_g.dtype)
            s = (s + lamb * g).astype(s.dtype)
            z = x0 - _numerics.safe_div(s, _numerics.safe_cbrt(big_g) + eps)
            return ((1 - momentum) * z + momentum * x - x).astype(g.dtype), big_g, s

        outs = jax.tree.map(leaf, updates, params, state.x0, state.grad_sum_sq, state.s)
        new_updates, grad_sum_sq, s = jax.tree.transpose(
            jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), outs
        )
        return new_updates, MadgradState(_numerics.safe_increment(state.count), grad_sum_sq, s, state.x0)

    return GradientTransformation(init, update)


@alias
def madgrad(
    learning_rate: ScalarOrSchedule, momentum: Scalar = 0.9, weight_decay: Scalar = 0.0, eps: Scalar = 1e-6
) -> GradientTransformationExtraArgs:
    """MADGRAD with L2 weight decay on the gradient: :func:`scale_by_madgrad` of ``g + weight_decay x``."""
    return chain(add_decayed_weights(weight_decay), scale_by_madgrad(learning_rate, momentum, eps))
