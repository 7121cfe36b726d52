"""Recording measurements of the updates in the optimizer state (for logging), without changing the updates.

Read a measurement back with ``jaxopt_lite.tree.get(state, name)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    chain,
    pytree_factory,
    stateless,
    with_extra_args_support,
)
from jaxopt_lite.transforms.momentum import ema


class SnapshotState(NamedTuple):
    """``{measure_name: measure(updates)}`` from the last call (from ``measure(params)`` after ``init``)."""

    measurement: dict[str, Any]


class MonitorState(NamedTuple):
    """The last measurements by name, and the states of the stateful measures (in the order of ``measures``)."""

    measurements: dict[str, Any]
    measure_states: tuple[Any, ...]


@pytree_factory
def snapshot(measure_name: str, measure: Callable[[Any], Any]) -> GradientTransformation:
    """Stores ``measure(updates)`` in the state under ``measure_name``; the updates pass through unchanged.

    In a chain, ``updates`` are those transformed by the transforms before it. ``init`` stores
    ``measure(params)`` so that the state keeps one structure.
    """
    if not callable(measure):
        raise TypeError(f"snapshot: measure must be callable, got {measure!r}")

    def init(params):
        return SnapshotState({measure_name: measure(params)})

    def update(updates, state, params=None):
        del state, params
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init, update)


@pytree_factory
def monitor(measures: dict[str, GradientTransformation | Callable[[Any], Any]]) -> GradientTransformationExtraArgs:
    """Records several measurements of the updates; the updates pass through unchanged.

    Each measure is a function ``updates -> measurement`` or a stateful one given as a gradient transformation
    whose ``update`` returns the measurement as its "updates" (e.g. :func:`measure_with_ema`). After ``init``
    ``measurements`` is empty; after each ``update`` it maps every name to its measurement.
    """
    wrapped = {}
    for name, measure in measures.items():
        if isinstance(measure, GradientTransformation) or hasattr(measure, "init"):
            wrapped[name] = with_extra_args_support(measure)
        elif callable(measure):
            wrapped[name] = with_extra_args_support(stateless(lambda u, _, m=measure: m(u)))
        else:
            raise TypeError(f"monitor: measure {name!r} must be callable or a GradientTransformation, got {measure!r}")

    def init(params):
        return MonitorState({}, tuple(m.init(params) for m in wrapped.values()))

    def update(updates, state, params=None, **extra_args):
        measurements, new_states = {}, []
        for (name, measure), measure_state in zip(wrapped.items(), state.measure_states):
            measurements[name], measure_state = measure.update(updates, measure_state, params, **extra_args)
            new_states.append(measure_state)
        return updates, MonitorState(measurements, tuple(new_states))

    return GradientTransformationExtraArgs(init, update)


@pytree_factory
def measure_with_ema(
    measure: Callable[[Any], Any], decay: float | Any, debias: bool = True, accumulator_dtype: Any | None = None
) -> GradientTransformationExtraArgs:
    r"""A stateful measure for :func:`monitor`: the exponential moving average of ``measure(updates)``.

    :math:`m_t = \text{decay}\, m_{t-1} + (1 - \text{decay})\, \text{measure}(u_t)`, debiased by
    :math:`1 - \text{decay}^t` if ``debias`` (see :func:`jaxopt_lite.ema`). Its ``update`` returns the average.
    """
    average = ema(decay, debias=debias, accumulator_dtype=accumulator_dtype)
    average_of_measurement = GradientTransformation(lambda params: average.init(measure(params)), average.update)
    return chain(stateless(lambda updates, _: measure(updates)), average_of_measurement)
