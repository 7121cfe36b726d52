"""COCOB-Backprop (Orabona & Tommasi, 2017, "Training Deep Networks without Learning Rates Through
Coin Betting", Algorithm 2)."""

from __future__ import annotations

from collections.abc import Callable
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
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


class COCOBState(NamedTuple):
    """Per coordinate: the initial point ``x0``, minus the gradient sum ``theta``, the largest
    gradient magnitude ``L``, the sum of magnitudes ``G`` and the reward ``R``."""

    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any


@pytree_factory
def scale_by_cocob(alpha: Scalar = 100.0, eps: Scalar = 1e-8) -> GradientTransformation:
    """COCOB-Backprop's coin betting, per coordinate (the output moves ``x`` to the new bet)::

        L <- max(L, |g|),  G <- G + |g|,  R <- max(R - g (x - x0), 0),  theta <- theta - g
        x_new = x0 + theta / (L max(G + L, alpha L)) (L + R),   u = x_new - x

    ``L`` starts at ``eps``, the others at 0. The incoming ``g`` is the gradient
    (not its negative): chain after ``scale_by_learning_rate(lr, flip_sign=False)``
    as :func:`cocob` does. Memory: five buffers per parameter. ``update`` needs ``params``.
    """
    owner = "scale_by_cocob"
    _checks.check_positive(owner, "alpha", alpha)
    _checks.check_nonnegative(owner, "eps", eps)

    def init(params):
        _tree.check_floating(params, owner)
        zeros = _tree.zeros_like(params)
        return COCOBState(
            init_particles=jax.tree.map(lambda p: p.copy(), params),
            cumulative_gradients=zeros,
            scale=_tree.full_like(params, eps),
            subgradients=zeros,
            reward=zeros,
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params")
        _tree.check_same_shapes(updates, state.scale, "updates", f"{owner} state")

        def leaf(g, x, x0, theta, big_l, big_g, reward):
            big_l = jnp.maximum(big_l, jnp.abs(g)).astype(big_l.dtype)
            big_g = (big_g + jnp.abs(g)).astype(big_g.dtype)
            reward = jnp.maximum(reward - g * (x - x0), 0).astype(reward.dtype)
            theta = (theta - g).astype(theta.dtype)
            # L == 0 only while every gradient of the coordinate was 0 (and eps == 0): theta == 0 too.
            bet = _numerics.safe_div(theta, big_l * jnp.maximum(big_g + big_l, alpha * big_l)) * (big_l + reward)
            return (x0 + bet - x).astype(g.dtype), theta, big_l, big_g, reward

        outs = jax.tree.map(leaf, updates, params, *state)
        new_updates, theta, big_l, big_g, reward = jax.tree.transpose(
            jax.tree.structure(updates), jax.tree.structure((0,) * 5), outs
        )
        return new_updates, COCOBState(state.init_particles, theta, big_l, big_g, reward)

    return GradientTransformation(init, update)


@alias
def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: Scalar = 100.0,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformationExtraArgs:
    """COCOB-Backprop: ``g' = learning_rate * (g + weight_decay x)`` fed to :func:`scale_by_cocob`.

    No learning rate to tune: ``learning_rate`` (1 by default, or a schedule) only
    rescales the gradients the bettor sees.
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )
