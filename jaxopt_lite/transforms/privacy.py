"""Differentially private SGD (Abadi et al., 2016, "Deep Learning with Differential Privacy")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite.base import GradientTransformation, ScalarOrSchedule, chain, identity, pytree_factory
from jaxopt_lite.transforms.momentum import trace
from jaxopt_lite.transforms.per_example_clipping import per_example_global_norm_clip
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


class DifferentiallyPrivateAggregateState(NamedTuple):
    """The PRNG key of the next noise draw."""

    rng_key: jax.Array


def _as_key(key: Any) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or a raw ``uint32[2]`` key."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, (jax.Array, jnp.ndarray)) and jnp.ndim(key) == 1:
        return jax.random.wrap_key_data(key)
    return jax.random.key(key)


@pytree_factory
def differentially_private_aggregate(
    l2_norm_clip: float | jax.Array,
    noise_multiplier: float | jax.Array,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""The aggregation step of DP-SGD: clip each example's gradient, sum, add Gaussian noise, average.

    .. math:: u = \frac{1}{B}\left(\sum_{i=1}^B g_i \min\left(1, \frac{C}{\|g_i\|_2}\right)
              + \mathcal{N}(0, (\sigma C)^2 I)\right)

    with :math:`C` = ``l2_norm_clip`` and :math:`\sigma` = ``noise_multiplier``. The updates must be
    per-example gradients (batch on axis 0 of every leaf), so this must come first in a chain; the output
    has the parameters' shapes. ``key`` is a PRNG key or an int seed (``seed`` is its deprecated spelling);
    each leaf gets its own noise key, split as in Optax so that the draws agree. Without either, key 0.
    """
    _checks.check_nonnegative("differentially_private_aggregate", "l2_norm_clip", l2_norm_clip)
    _checks.check_nonnegative("differentially_private_aggregate", "noise_multiplier", noise_multiplier)
    if seed is not None:
        if key is not None:
            raise ValueError("differentially_private_aggregate: pass either key or seed, not both")
        key = seed
    key = _as_key(0 if key is None else key)
    noise_std = l2_norm_clip * noise_multiplier

    def init(params):
        del params
        return DifferentiallyPrivateAggregateState(rng_key=key)

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        batch_size = leaves[0].shape[0] if leaves and jnp.ndim(leaves[0]) else 1
        clipped, _ = per_example_global_norm_clip(leaves, l2_norm_clip)
        next_key, *keys = jax.random.split(state.rng_key, len(leaves) + 1)
        noised = [(g + noise_std * jax.random.normal(k, g.shape, g.dtype)) / batch_size for g, k in zip(clipped, keys)]
        return treedef.unflatten(noised), DifferentiallyPrivateAggregateState(rng_key=next_key)

    return GradientTransformation(init, update)


@pytree_factory
def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: float | jax.Array,
    noise_multiplier: float | jax.Array,
    seed: int,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
) -> GradientTransformation:
    """DP-SGD: :func:`differentially_private_aggregate`, then momentum (``trace``, if ``momentum`` is given), then
    ``-learning_rate``. Expects per-example gradients (batch on axis 0)."""
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed=seed),
        trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
        scale_by_learning_rate(learning_rate),
    )
