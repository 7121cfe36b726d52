"""Sharpness-aware minimisation (Foret et al., 2021, "Sharpness-Aware Minimization for
Efficiently Improving Generalization"), as a wrapper of two optimizers (Optax's ``contrib.sam``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, GradientTransformationExtraArgs, alias, apply_updates

NormalizeState = EmptyState


class SAMState(NamedTuple):
    """Steps since the last outer step, the outer and adversarial optimizers' states, and the
    cached outer params (``None`` in opaque mode)."""

    steps_since_sync: jax.Array
    opt_state: Any
    adv_state: Any
    cache: Any


def normalize() -> GradientTransformation:
    """Divides the updates by their global L2 norm: ``u <- u / ||u||`` (SAM's ascent direction)."""

    def init(params):
        del params
        return NormalizeState()

    def update(updates, state, params=None):
        del params
        norm = _tree.norm(updates)
        return jax.tree.map(lambda u: (u / norm).astype(u.dtype), updates), state

    return GradientTransformation(init, update)


@alias
def sam(
    optimizer: GradientTransformation,
    adv_optimizer: GradientTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformationExtraArgs:
    """SAM: take ``sync_period - 1`` ascent steps with ``adv_optimizer``, then one outer step
    with ``optimizer`` using the gradient at the perturbed point, applied to the original params.

    The classic SAM is ``sam(sgd(lr), chain(normalize(), sgd(-rho)))`` (note the adversarial
    optimizer ascends: its updates are negated). Two modes, as Optax:

    - transparent (default): every call is one step of the loop. Calls ``0..k-2`` of each
      period return the ascent updates ``-adv``; call ``k-1`` returns
      ``cache - params + optimizer_update`` (back to the cached params, then the outer step),
      with the outer update computed from the gradient at the perturbed point.
    - ``opaque_mode=True``: one call does the whole period; ``update`` needs the keyword
      ``grad_fn(params, i)`` returning the gradient at the perturbed params (``pmean`` over
      ``batch_axis_name`` when given).

    ``reset_state`` re-initialises the adversarial optimizer after each outer step.
    ``sync_period`` is a static int >= 1.
    """
    if isinstance(sync_period, bool) or not isinstance(sync_period, int) or sync_period < 1:
        raise ValueError(f"sam: sync_period must be an int >= 1, got {sync_period!r}")

    def init(params):
        return SAMState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            opt_state=optimizer.init(params),
            adv_state=adv_optimizer.init(params),
            cache=None if opaque_mode else params,
        )

    def pick(condition, if_true, if_false):
        return jax.tree.map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)

    def transparent_update(updates, state, params=None, *, grad_fn: Callable | None = None, **extra_args):
        del grad_fn, extra_args
        if params is None:
            raise ValueError("sam: update needs params")
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == sync_period - 1
        adv_updates, adv_state = adv_optimizer.update(updates, state.adv_state, params)
        adv_updates = jax.tree.map(lambda u: -u, adv_updates)
        outer_updates, opt_state = optimizer.update(updates, state.opt_state, state.cache)
        outer_updates = jax.tree.map(lambda c, p, u: c - p + u, state.cache, params, outer_updates)
        cache = pick(first, params, state.cache)
        new_updates = pick(last, outer_updates, adv_updates)
        adv_state = pick(last, adv_optimizer.init(params) if reset_state else state.adv_state, adv_state)
        opt_state = pick(last, opt_state, state.opt_state)
        steps = (state.steps_since_sync + 1) % sync_period
        return new_updates, SAMState(steps_since_sync=steps, opt_state=opt_state, adv_state=adv_state, cache=cache)

    def opaque_update(updates, state, params=None, *, grad_fn: Callable | None = None, **extra_args):
        del extra_args
        if grad_fn is None:
            raise ValueError("sam: opaque_mode=True needs the keyword argument grad_fn(params, i) in update")
        if params is None:
            raise ValueError("sam: update needs params")
        adv_params, grads, adv_state = params, updates, state.adv_state
        for i in range(sync_period - 1):
            adv_updates, adv_state = adv_optimizer.update(grads, adv_state, adv_params)
            adv_params = apply_updates(adv_params, jax.tree.map(lambda u: -u, adv_updates))
            grads = grad_fn(adv_params, i)
            if batch_axis_name is not None:
                grads = jax.lax.pmean(grads, axis_name=batch_axis_name)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        new_updates, opt_state = optimizer.update(grads, state.opt_state, params)
        return new_updates, SAMState(
            steps_since_sync=jnp.zeros([], jnp.int32), opt_state=opt_state, adv_state=adv_state, cache=None
        )

    return GradientTransformationExtraArgs(init, opaque_update if opaque_mode else transparent_update)
