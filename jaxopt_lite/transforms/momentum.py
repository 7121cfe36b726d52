"""Momentum: heavy-ball and Nesterov traces, and exponential moving averages."""

from typing import Any, NamedTuple

import jax

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformation, pytree_factory
from jaxopt_lite.numerics import cast, known_zero, widen


class TraceState(NamedTuple):
    """The momentum buffer, one leaf per parameter."""

    trace: Any


class EmaState(NamedTuple):
    """Step count (for debiasing) and the moving average."""

    count: jax.Array
    ema: Any


@pytree_factory
def trace(
    decay: float | jax.Array,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    dampening: float | jax.Array = 0.0,
) -> GradientTransformation:
    """Heavy-ball momentum (Polyak, 1964), optionally Nesterov's (Sutskever et al., 2013).

    ``t <- decay * t + (1 - dampening) * u``; the output is ``t``, or
    ``u + decay * t`` with ``nesterov=True``. The default ``dampening=0`` is
    Optax's ``trace`` and ``torch.optim.SGD``'s default; ``dampening=decay``
    gives the averaged form ``t <- decay * t + (1 - decay) * u`` of the seed
    articles (an undebiased EMA). ``decay`` and ``dampening`` in ``[0, 1]``;
    ``decay=1`` is a plain running sum of the updates (as Optax). A bfloat16 or
    float16 ``accumulator_dtype`` is updated in float32 and rounded once.
    """
    _checks.check_range("trace", "decay", decay, low=0.0, high=1.0)
    _checks.check_range("trace", "dampening", dampening, low=0.0, high=1.0)

    def init(params):
        _tree.check_floating(params, "trace")
        return TraceState(trace=_tree.accumulator_zeros(params, accumulator_dtype))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.trace, "updates", "trace state")
        keep = None if known_zero(dampening) else 1.0 - dampening  # the default: no multiply by 1 to trace per leaf

        def accumulate(g, t):
            g = widen(g)
            return cast((g if keep is None else keep * g) + decay * widen(t), t.dtype)

        new_trace = jax.tree.map(accumulate, updates, state.trace)
        if nesterov:
            out = jax.tree.map(lambda g, t: cast(g + decay * t, g.dtype), updates, new_trace)
        else:
            out = jax.tree.map(lambda g, t: cast(t, g.dtype), updates, new_trace)
        return out, TraceState(trace=new_trace)

    return GradientTransformation(init, update)


@pytree_factory
def ema(decay: float | jax.Array, debias: bool = True, accumulator_dtype: Any = None) -> GradientTransformation:
    """Exponential moving average of the updates.

    ``e <- decay * e + (1 - decay) * u``; the output is ``e / (1 - decay**t)``
    with ``debias=True`` (the default), else ``e``. ``decay`` in ``[0, 1)``.
    As Optax, the output comes from ``e`` before it is stored in
    ``accumulator_dtype``: a float32 accumulator does not round a float64 step.
    """
    _checks.check_decay("ema", "decay", decay)

    def init(params):
        _tree.check_floating(params, "ema")
        return EmaState(count=_tree.zero_count(), ema=_tree.accumulator_zeros(params, accumulator_dtype))

    def update(updates, state, params=None):
        del params
        new_ema = _tree._map_moments(lambda g, m: decay * widen(m) + (1.0 - decay) * widen(g), updates, state.ema)  # noqa: SLF001
        count = _tree.safe_increment(state.count)
        out = _tree.bias_correction(new_ema, decay, count) if debias else new_ema
        return _tree.cast_like(out, updates), EmaState(count=count, ema=_tree.cast_like(new_ema, state.ema))

    return GradientTransformation(init, update)
