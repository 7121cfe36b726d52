"""Scaling transforms: constant, learning-rate and scheduled multipliers, and sign."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, ScalarOrSchedule, Schedule, pytree_factory, stateless

ScaleState = EmptyState  # Optax's name for the state of ``scale``


class ScaleByScheduleState(NamedTuple):
    """The step count fed to the schedule (int32, saturating)."""

    count: jax.Array


@pytree_factory
def scale(step_size: float | jax.Array) -> GradientTransformation:
    """Multiplies updates by a constant: ``u <- step_size * u``.

    ``step_size`` may be a traced array; each leaf keeps its dtype. A concrete
    non-finite ``step_size`` is refused (it would turn every update into NaN or inf).
    """
    _checks.check_finite("scale", "step_size", step_size)
    return stateless(lambda updates, params: _tree.scale(step_size, updates))


@pytree_factory
def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiplies updates by a schedule of the step count: ``u <- s(t) * u``.

    ``t`` counts calls of ``update``, starting at 0.
    """
    if not callable(step_size_fn):
        raise TypeError(f"scale_by_schedule: step_size_fn must be callable, got {step_size_fn!r}")

    def init(params):
        del params
        return ScaleByScheduleState(count=_tree.zero_count())

    def update(updates, state, params=None):
        del params
        step_size = step_size_fn(state.count)
        return _tree.scale(step_size, updates), ScaleByScheduleState(count=_tree.safe_increment(state.count))

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> GradientTransformation:
    """Scales by ``-learning_rate`` (or ``+learning_rate`` with ``flip_sign=False``).

    ``learning_rate`` is a number, an array (possibly traced) or a schedule of
    the step count. A concrete negative learning rate is an error: descent
    direction is set by ``flip_sign``.
    """
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        tx = scale_by_schedule(lambda count: sign * learning_rate(count))
    else:
        _checks.check_learning_rate("scale_by_learning_rate", learning_rate)
        tx = scale(sign * learning_rate)

    def init(params):
        _tree.check_floating(params, "scale_by_learning_rate")
        return tx.init(params)

    return GradientTransformation(init, tx.update)


@pytree_factory
def scale_by_sign() -> GradientTransformation:
    """Replaces each update by its sign: ``u <- sign(u)`` (signSGD, Bernstein et al. 2018)."""
    return stateless(lambda updates, params: jax.tree.map(jnp.sign, updates))
