"""Regularization and safety: weight decay, gradient noise, constraints, NaN handling."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, ScalarOrSchedule, pytree_factory, stateless

AddDecayedWeightsState = EmptyState
NonNegativeParamsState = EmptyState


class AddDecayedWeightsScheduleState(NamedTuple):
    """The step count fed to a weight-decay schedule."""

    count: jax.Array


class AddNoiseState(NamedTuple):
    """Step count (for annealing) and the PRNG key of the next draw."""

    count: jax.Array
    rng_key: jax.Array


class ZeroNansState(NamedTuple):
    """Per leaf, whether the last update held a NaN."""

    found_nan: Any


@pytree_factory
def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0, mask: Any = None) -> GradientTransformation:
    """Decoupled weight decay (Loshchilov & Hutter, 2019): ``u <- u + weight_decay * p``.

    Chained before the learning rate (as in ``adamw``) this decays the
    parameters by ``lr * weight_decay * p`` per step. ``weight_decay`` is a
    number, an array or a schedule of the step count. ``mask`` (a pytree of
    bools or a function of params) limits the decay to the leaves it marks.
    """
    if callable(weight_decay):
        def init(params):
            del params
            return AddDecayedWeightsScheduleState(count=_tree.zero_count())

        def update(updates, state, params=None):
            _tree.require_params("add_decayed_weights", updates, params)
            wd = weight_decay(state.count)
            out = jax.tree.map(lambda u, p: (u + wd * p).astype(u.dtype), updates, params)
            return out, AddDecayedWeightsScheduleState(count=_tree.safe_increment(state.count))

        tx = GradientTransformation(init, update)
    else:
        _checks.check_nonnegative("add_decayed_weights", "weight_decay", weight_decay)

        def apply(updates, params):
            _tree.require_params("add_decayed_weights", updates, params)
            return jax.tree.map(lambda u, p: (u + weight_decay * p).astype(u.dtype), updates, params)

        tx = stateless(apply)
    if mask is None:
        return tx
    from jaxopt_lite.wrappers import masked  # wrappers build on this module's siblings

    return masked(tx, mask)


@pytree_factory
def add_noise(
    eta: float | jax.Array, gamma: float | jax.Array, key: jax.Array | int | None = None, *, seed: int | None = None
) -> GradientTransformation:
    """Annealed Gaussian gradient noise (Neelakantan et al., 2015, "Adding Gradient
    Noise Improves Learning for Very Deep Networks").

    ``u <- u + N(0, sigma_t^2)`` with ``sigma_t^2 = eta / (1 + t)^gamma``, ``t``
    counting from 0. The paper uses ``eta`` in {0.01, 0.3, 1.0} and
    ``gamma = 0.55``. ``key`` is a PRNG key (or an int seed); ``seed`` is
    accepted as Optax spells it; with neither, seed 0.
    """
    _checks.check_nonnegative("add_noise", "eta", eta)
    _checks.check_nonnegative("add_noise", "gamma", gamma)
    if key is not None and seed is not None:
        raise ValueError("add_noise: pass either key or seed, not both")
    if key is None:
        key = 0 if seed is None else seed
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)

    def init(params):
        del params
        return AddNoiseState(count=_tree.zero_count(), rng_key=jnp.asarray(key))

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        next_key, *keys = jax.random.split(state.rng_key, len(leaves) + 1)
        t = state.count.astype(jnp.result_type(float))
        std = jnp.sqrt(eta / (1.0 + t) ** gamma)
        noisy = [
            (g + std * jax.random.normal(k, jnp.shape(g), jnp.promote_types(g.dtype, jnp.float32))).astype(g.dtype)
            for g, k in zip(leaves, keys)
        ]
        new_state = AddNoiseState(count=_tree.safe_increment(state.count), rng_key=next_key)
        return jax.tree.unflatten(treedef, noisy), new_state

    return GradientTransformation(init, update)


@pytree_factory
def keep_params_nonnegative() -> GradientTransformation:
    """Projects onto ``p >= 0``: where ``p + u < 0`` the update becomes ``-p``.

    Chain it last (after the learning rate); it needs ``params``.
    """

    def apply(updates, params):
        _tree.require_params("keep_params_nonnegative", updates, params)
        return jax.tree.map(lambda u, p: jnp.where(p + u < 0, -p, u).astype(u.dtype), updates, params)

    return stateless(apply)


@pytree_factory
def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates by 0 and records, per leaf, whether it did."""

    def init(params):
        return ZeroNansState(found_nan=jax.tree.map(lambda p: jnp.zeros([], jnp.bool_), params))

    def update(updates, state, params=None):
        del params
        found = jax.tree.map(lambda u: jnp.any(jnp.isnan(u)), updates)
        out = jax.tree.map(lambda u: jnp.where(jnp.isnan(u), jnp.zeros_like(u), u), updates)
        return out, ZeroNansState(found_nan=found)

    return GradientTransformation(init, update)
