"""Schedules: functions from a step count to a hyperparameter value.

A schedule is a pure function ``count -> value``. ``count`` is the number of
updates made so far: an int32 scalar (possibly traced) or a Python int. The
value is a floating-point array (at least float32; the default float, float64
under ``jax_enable_x64``, when the hyperparameters are Python numbers).

Available schedules:

* :func:`constant_schedule` -- ``v``.
* :func:`linear_schedule` -- linear ramp from ``init_value`` to ``end_value``.
* :func:`polynomial_schedule` -- polynomial ramp of a given ``power``.
* :func:`exponential_decay` -- ``init_value * decay_rate ** (t / T)``.
* :func:`natural_exp_decay` -- ``init_value * exp(-decay_rate * t / T)``.
* :func:`inverse_time_decay` -- ``init_value / (1 + decay_rate * t / T)``.
* :func:`piecewise_constant_schedule` -- multiplied by a scale at each boundary.
* :func:`piecewise_interpolate_schedule` -- the same, interpolated linearly or
  along a half cosine between boundaries.
* :func:`cosine_decay_schedule` -- half-cosine annealing (Loshchilov & Hutter).
* :func:`warmup_constant_schedule` -- linear warmup, then constant.
* :func:`warmup_cosine_decay_schedule` -- linear warmup, then cosine decay.
* :func:`warmup_exponential_decay_schedule` -- linear warmup, then exponential
  decay.
* :func:`warmup_stable_decay_schedule` -- warmup, a constant phase, and a
  linear, cosine or 1-sqrt cooldown (WSD; not in Optax).
* :func:`linear_onecycle_schedule`, :func:`cosine_onecycle_schedule` -- the
  one-cycle policy (Smith & Topin).
* :func:`sgdr_schedule` -- cosine decay with warm restarts.
* :func:`join_schedules` -- runs schedules one after the other.

Formulas, defaults and values follow Optax for the schedules it has
(``natural_exp_decay`` and ``inverse_time_decay`` follow TensorFlow's
``tf.compat.v1.train`` rules of the same names).

Traceable hyperparameters
-------------------------
Every numeric hyperparameter -- values, rates, exponents, fractions *and step
counts* (``transition_steps``, ``decay_steps``, ``warmup_steps``,
``transition_begin``, the boundaries of :func:`join_schedules`) -- may be a
traced JAX array: a schedule can be built inside ``jit``, ``vmap`` (e.g. a
sweep over ``warmup_steps``) or ``grad`` (derivatives with respect to the
floating-point hyperparameters are finite). Special cases (a non-positive
number of steps, a zero decay rate, the direction of ``end_value`` clipping)
are selected with ``jnp.where``, never with Python control flow; masked
branches are evaluated at safe points so no NaN leaks into gradients.

A few arguments are *structural*, i.e. static Python values: ``staircase``
(a bool), ``interpolate_type`` (a string), ``end_value is None``, the keys
(boundaries) of ``boundaries_and_scales`` dicts and the number of schedules,
boundaries and SGDR cycles. The values of ``boundaries_and_scales`` may be
traced.

Validation happens when a schedule is built, on concrete values only (tracers
are skipped): out-of-range input raises ``ValueError`` naming the function and
the argument. Step counts need not be integers (a float step count is used as
is), but they must be non-negative.
"""

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite.base import Schedule, pytree_factory

__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "inverse_time_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "natural_exp_decay",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
    # Optax's schedules namespace also holds the hyperparameter injection (defined in wrappers/hyperparams.py).
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "StatefulSchedule",
    "WrappedSchedule",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
]

ArrayLike = Any  # a Python number, a NumPy value or a (possibly traced) JAX array


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _float_dtype(*values: Any) -> Any:
    """The dtype a schedule computes in: the default float, promoted with the
    floating-point hyperparameters, and at least float32."""
    dtype = jnp.result_type(float, *(v for v in values if v is not None))
    return jnp.promote_types(dtype, jnp.float32)


def _as_float(x: ArrayLike, dtype: Any) -> jax.Array:
    return jnp.asarray(x, dtype)


def _broadcast_to_count(value: jax.Array, count: Any) -> jax.Array:
    """``value`` broadcast against the shape of ``count`` (schedules are
    elementwise in the count, including those that ignore it)."""
    return jnp.broadcast_to(value, jnp.broadcast_shapes(jnp.shape(value), jnp.shape(count)))


def _progress(count: ArrayLike, steps: ArrayLike, begin: ArrayLike, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Returns ``(t / steps, steps > 0)`` with ``t = max(count - max(begin, 0), 0)``.

    The division is safe: where ``steps <= 0`` it divides by one instead (the
    caller masks that case), so neither values nor gradients become NaN.
    """
    t = _as_float(count, dtype) - jnp.maximum(_as_float(begin, dtype), 0)
    t = jnp.maximum(t, 0)
    steps = _as_float(steps, dtype)
    active = steps > 0
    return t / jnp.where(active, steps, 1), active


def _pow01(base: jax.Array, exponent: ArrayLike) -> jax.Array:
    """``base ** exponent`` for ``base`` in [0, 1] and ``exponent >= 0``, with finite
    gradients at ``base == 0`` (where the true derivative may be infinite)."""
    positive = base > 0
    at_zero = jnp.where(jnp.asarray(exponent) == 0, 1.0, 0.0).astype(base.dtype)
    return jnp.where(positive, jnp.power(jnp.where(positive, base, 1), exponent), at_zero)


def _check_less(owner: str, name_a: str, a: ArrayLike, name_b: str, b: ArrayLike, *, or_equal: bool = False) -> None:
    """Raises ``ValueError`` if concrete ``a`` is not ``< b`` (``<= b`` if ``or_equal``)."""
    ca, cb = _checks.concrete(a), _checks.concrete(b)
    if ca is None or cb is None:
        return
    ca, cb = np.broadcast_arrays(ca.astype(np.float64), cb.astype(np.float64))
    bad = (ca > cb) if or_equal else (ca >= cb)
    if np.any(bad):
        first = np.argwhere(bad)[0]
        relation = "<=" if or_equal else "<"
        raise ValueError(
            f"{owner}: {name_a} must be {relation} {name_b}, "
            f"got {name_a}={ca[tuple(first)]:g} and {name_b}={cb[tuple(first)]:g}"
        )


def _check_boundaries(owner: str, name: str, boundaries: Sequence[ArrayLike]) -> None:
    """Concrete boundaries must be non-negative and non-decreasing."""
    for i, b in enumerate(boundaries):
        _checks.check_nonnegative(owner, f"{name}[{i}]", b)
    for i in range(1, len(boundaries)):
        _check_less(owner, f"{name}[{i - 1}]", boundaries[i - 1], f"{name}[{i}]", boundaries[i], or_equal=True)


def _check_staircase(owner: str, staircase: Any) -> None:
    if not isinstance(staircase, (bool, np.bool_)):
        raise TypeError(f"{owner}: staircase must be a Python bool (it is static), got {staircase!r}")


def _floor_product(fraction: ArrayLike, steps: ArrayLike, dtype: Any) -> ArrayLike:
    """``floor(fraction * steps)``: a Python int when both are concrete scalars
    (computed in float64, exactly as ``int(fraction * steps)``), else an array."""
    f, s = _checks.concrete(fraction), _checks.concrete(steps)
    if f is not None and s is not None and f.ndim == 0 and s.ndim == 0:
        return int(math.floor(float(f) * float(s)))
    return jnp.floor(_as_float(fraction, dtype) * _as_float(steps, dtype))


def _sorted_boundaries_and_scales(
    owner: str, boundaries_and_scales: Mapping[Any, ArrayLike] | None
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Validates a ``{boundary: scale}`` dict and returns its items sorted by boundary."""
    if boundaries_and_scales is None:
        return (), ()
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"{owner}: boundaries_and_scales must be a dict {{step: scale}} or None, "
            f"got {type(boundaries_and_scales).__name__}"
        )
    for boundary, scale in boundaries_and_scales.items():
        if isinstance(boundary, bool) or not isinstance(boundary, (int, float, np.integer, np.floating)):
            raise TypeError(f"{owner}: boundaries_and_scales keys must be step numbers, got {boundary!r}")
        _checks.check_nonnegative(owner, "boundaries_and_scales key (boundary)", boundary)
        _checks.check_nonnegative(owner, f"boundaries_and_scales[{boundary}] (scale)", scale)
    items = sorted(boundaries_and_scales.items(), key=lambda kv: kv[0])
    return tuple(b for b, _ in items), tuple(s for _, s in items)


def _linear_interpolate(start: jax.Array, end: jax.Array, pct: jax.Array) -> jax.Array:
    return (end - start) * pct + start


def _cosine_interpolate(start: jax.Array, end: jax.Array, pct: jax.Array) -> jax.Array:
    return end + (start - end) / 2 * (jnp.cos(jnp.pi * pct) + 1)


_INTERPOLATORS = {"linear": _linear_interpolate, "cosine": _cosine_interpolate}


def _interpolated(
    interpolate_type: str, init_value: ArrayLike, boundaries: Sequence[ArrayLike], scales: Sequence[ArrayLike]
) -> Schedule:
    """The piecewise-interpolated schedule through the points
    ``(0, v_0), (b_1, v_1), ...`` with ``v_0 = init_value``, ``v_i = v_{i-1} * s_i``.

    ``boundaries`` must be sorted; they may be traced (the one-cycle schedules
    derive them from a traced ``transition_steps``).
    """
    interpolate = _INTERPOLATORS[interpolate_type]
    dtype = _float_dtype(init_value, *boundaries, *scales)
    bounds = (0, *boundaries)

    def schedule(count):
        count = jnp.asarray(count)
        t = _as_float(count, dtype)
        values = [_as_float(init_value, dtype)]
        for s in scales:
            values.append(values[-1] * _as_float(s, dtype))
        out = values[0]
        for i in range(len(boundaries)):
            lo, hi = _as_float(bounds[i], dtype), _as_float(bounds[i + 1], dtype)
            pct = (t - lo) / jnp.maximum(hi - lo, 1)
            out = jnp.where(count >= bounds[i], interpolate(values[i], values[i + 1], pct), out)
        return jnp.where(count >= bounds[-1], values[-1], out)

    return schedule


def _decay(
    init_value: ArrayLike,
    transition_steps: ArrayLike,
    decay_rate: ArrayLike,
    transition_begin: ArrayLike,
    staircase: bool,
    end_value: ArrayLike | None,
    *,
    factor: Callable[[jax.Array, jax.Array], jax.Array],
    lower_bound: Callable[[jax.Array], Any],
    hold_at_zero_rate: bool,
) -> Schedule:
    """The body shared by the exponential, natural-exponential and inverse-time
    decays: ``init_value * factor(rate, p)`` with ``p`` the (floored) number of
    transitions, clipped at ``end_value`` (a lower bound where
    ``lower_bound(rate)``, else an upper bound)."""
    dtype = _float_dtype(init_value, transition_steps, decay_rate, transition_begin, end_value)

    def schedule(count):
        init = _as_float(init_value, dtype)
        rate = _as_float(decay_rate, dtype)
        p, active = _progress(count, transition_steps, transition_begin, dtype)
        if staircase:
            p = jnp.floor(p)
        value = init * factor(rate, p)
        if end_value is not None:
            end = _as_float(end_value, dtype)
            value = jnp.where(lower_bound(rate), jnp.maximum(value, end), jnp.minimum(value, end))
        hold = ~active
        if hold_at_zero_rate:
            hold = hold | (rate == 0)
        return jnp.where(hold, init, value)

    return schedule


def _refuse_non_finite(*names: str):
    """Decorates a schedule so that concrete ``nan``/``inf`` values of the named arguments raise ``ValueError``."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            arguments = signature.bind_partial(*args, **kwargs).arguments
            for name in names:
                if name in arguments:
                    _checks.check_finite(fn.__name__, name, arguments[name])
            return fn(*args, **kwargs)

        return checked

    return decorate


def _check_transition_steps(owner: str, transition_steps: Any) -> None:
    """A negative ``transition_steps`` means a constant schedule, as in Optax (which logs it); we warn."""
    _checks.check_finite(owner, "transition_steps", transition_steps)
    steps = _checks.concrete(transition_steps)
    if steps is not None and np.any(np.asarray(steps, np.float64) < 0):
        warnings.warn(
            f"{owner}: transition_steps = {steps} is negative; the schedule is the constant init_value (as in Optax)",
            stacklevel=3,
        )


def _check_decay_args(
    owner: str, transition_steps: Any, decay_rate: Any, transition_begin: Any, staircase: Any
) -> None:
    _check_transition_steps(owner, transition_steps)
    _checks.check_nonnegative(owner, "decay_rate", decay_rate)
    _checks.check_nonnegative(owner, "transition_begin", transition_begin)
    _check_staircase(owner, staircase)


def _exponential(init_value, transition_steps, decay_rate, transition_begin, staircase, end_value) -> Schedule:
    return _decay(
        init_value,
        transition_steps,
        decay_rate,
        transition_begin,
        staircase,
        end_value,
        # A zero rate holds init_value (masked below); use base 1 there so the
        # unselected branch has a finite gradient.
        factor=lambda rate, p: jnp.power(jnp.where(rate == 0, 1, rate), p),
        lower_bound=lambda rate: rate < 1,
        hold_at_zero_rate=True,
    )


def _cosine(init_value, decay_steps, alpha, exponent) -> Schedule:
    dtype = _float_dtype(init_value, decay_steps, alpha, exponent)

    def schedule(count):
        init = _as_float(init_value, dtype)
        a = _as_float(alpha, dtype)
        frac, active = _progress(count, decay_steps, 0, dtype)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(frac, 1)))
        decayed = init * ((1 - a) * _pow01(cosine, exponent) + a)
        return jnp.where(active, decayed, init * a)

    return schedule


# --------------------------------------------------------------------------- #
# Basic schedules
# --------------------------------------------------------------------------- #


@pytree_factory
@_refuse_non_finite("value")
def constant_schedule(value: ArrayLike) -> Schedule:
    """A schedule that always returns ``value``: :math:`v(t) = v`.

    Args:
      value: the value, a number or a (possibly traced) scalar array.

    Returns:
      A function of the step count returning ``value`` as a float array.
    """
    dtype = _float_dtype(value)

    def schedule(count):
        return _broadcast_to_count(_as_float(value, dtype), count)

    return schedule


@pytree_factory
@_refuse_non_finite("init_value", "end_value")
def polynomial_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    power: ArrayLike,
    transition_steps: ArrayLike,
    transition_begin: ArrayLike = 0,
) -> Schedule:
    r"""Polynomial transition from ``init_value`` to ``end_value``.

    With :math:`I` = ``init_value``, :math:`E` = ``end_value``, :math:`P` =
    ``power``, :math:`T` = ``transition_steps``, :math:`B` = ``transition_begin``:

    .. math::
      v(t) = (I - E) \left(1 - \frac{\min(\max(t - B, 0), T)}{T}\right)^P + E

    so :math:`v = I` for :math:`t \le B` and :math:`v = E` for :math:`t \ge B + T`.
    If :math:`T \le 0` the schedule is the constant :math:`I` (as in Optax).

    Args:
      init_value: the value before the transition.
      end_value: the value after the transition.
      power: the exponent :math:`P \ge 0` (1 is linear).
      transition_steps: the length :math:`T \ge 0` of the transition (``<= 0``: constant; negative values warn).
      transition_begin: the number of steps :math:`B \ge 0` (default 0) during
        which ``init_value`` is held before the transition starts.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``power``, ``transition_steps`` or
        ``transition_begin`` is negative.
    """
    owner = "polynomial_schedule"
    _checks.check_nonnegative(owner, "power", power)
    _check_transition_steps(owner, transition_steps)
    _checks.check_nonnegative(owner, "transition_begin", transition_begin)
    return _polynomial(init_value, end_value, power, transition_steps, transition_begin)


def _polynomial(init_value, end_value, power, transition_steps, transition_begin) -> Schedule:
    dtype = _float_dtype(init_value, end_value, power, transition_steps, transition_begin)

    def schedule(count):
        init, end = _as_float(init_value, dtype), _as_float(end_value, dtype)
        frac, active = _progress(count, transition_steps, transition_begin, dtype)
        remaining = 1 - jnp.minimum(frac, 1)
        value = (init - end) * _pow01(remaining, power) + end
        return jnp.where(active, value, init)

    return schedule


@pytree_factory
@_refuse_non_finite("init_value", "end_value")
def linear_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    transition_steps: ArrayLike,
    transition_begin: ArrayLike = 0,
) -> Schedule:
    r"""Linear transition from ``init_value`` to ``end_value``.

    .. math::
      v(t) = I + \frac{\min(\max(t - B, 0), T)}{T} (E - I)

    with :math:`I` = ``init_value``, :math:`E` = ``end_value``, :math:`T` =
    ``transition_steps`` and :math:`B` = ``transition_begin`` (default 0). This
    is :func:`polynomial_schedule` with ``power=1``; :math:`T \le 0` gives the
    constant :math:`I`.

    Args:
      init_value: the value up to step ``transition_begin``.
      end_value: the value from step ``transition_begin + transition_steps`` on.
      transition_steps: the length :math:`T \ge 0` of the ramp (``<= 0``: constant; negative values warn).
      transition_begin: steps :math:`B \ge 0` to hold ``init_value`` first.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``transition_steps`` or ``transition_begin`` is
        negative.
    """
    owner = "linear_schedule"
    _check_transition_steps(owner, transition_steps)
    _checks.check_nonnegative(owner, "transition_begin", transition_begin)
    return _polynomial(init_value, end_value, 1, transition_steps, transition_begin)


# --------------------------------------------------------------------------- #
# Decay rules
# --------------------------------------------------------------------------- #


@pytree_factory
@_refuse_non_finite("init_value", "end_value")
def exponential_decay(
    init_value: ArrayLike,
    transition_steps: ArrayLike,
    decay_rate: ArrayLike,
    transition_begin: ArrayLike = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    r"""Exponential decay: the value is multiplied by ``decay_rate`` every
    ``transition_steps`` steps.

    .. math::
      p = \frac{\max(t - B, 0)}{T} \quad (\lfloor p \rfloor \text{ if staircase}),
      \qquad v(t) = I \, r^{p}

    with :math:`I` = ``init_value``, :math:`r` = ``decay_rate``, :math:`T` =
    ``transition_steps``, :math:`B` = ``transition_begin``. If ``end_value`` is
    given, :math:`v` is clipped at it: a lower bound when :math:`r < 1` (decay),
    an upper bound when :math:`r \ge 1` (growth). If :math:`T \le 0` or
    :math:`r = 0`, the schedule is the constant :math:`I` (as in Optax).

    Args:
      init_value: the initial value :math:`I`.
      transition_steps: :math:`T \ge 0`, the steps per factor of ``decay_rate``.
      decay_rate: :math:`r \ge 0`, the factor per ``transition_steps`` steps.
      transition_begin: steps :math:`B \ge 0` (default 0) to hold ``init_value``.
      staircase: static bool (default False); if True the decay happens in
        discrete jumps every ``transition_steps`` steps.
      end_value: optional bound (default None: unbounded).

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``transition_steps``, ``decay_rate`` or
        ``transition_begin`` is negative.
    """
    _check_decay_args("exponential_decay", transition_steps, decay_rate, transition_begin, staircase)
    return _exponential(init_value, transition_steps, decay_rate, transition_begin, staircase, end_value)


@pytree_factory
@_refuse_non_finite("init_value", "end_value")
def natural_exp_decay(
    init_value: ArrayLike,
    transition_steps: ArrayLike,
    decay_rate: ArrayLike,
    transition_begin: ArrayLike = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    r"""Natural exponential decay (TensorFlow's ``natural_exp_decay``).

    .. math::
      p = \frac{\max(t - B, 0)}{T} \quad (\lfloor p \rfloor \text{ if staircase}),
      \qquad v(t) = I \, e^{-k p}

    with :math:`I` = ``init_value``, :math:`k` = ``decay_rate``, :math:`T` =
    ``transition_steps``, :math:`B` = ``transition_begin``. This is
    :func:`exponential_decay` with rate :math:`e^{-k}`, computed without
    underflow for large :math:`k`. If ``end_value`` is given it is a lower
    bound: :math:`\max(v, E)`. :math:`T \le 0` gives the constant :math:`I`.

    Args:
      init_value: the initial value :math:`I`.
      transition_steps: :math:`T \ge 0`, the time scale of the decay.
      decay_rate: :math:`k \ge 0`.
      transition_begin: steps :math:`B \ge 0` (default 0) to hold ``init_value``.
      staircase: static bool (default False): decay in discrete jumps.
      end_value: optional lower bound (default None).

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``transition_steps``, ``decay_rate`` or
        ``transition_begin`` is negative.

    References:
      TensorFlow, ``tf.compat.v1.train.natural_exp_decay``.
    """
    _check_decay_args("natural_exp_decay", transition_steps, decay_rate, transition_begin, staircase)
    return _decay(
        init_value,
        transition_steps,
        decay_rate,
        transition_begin,
        staircase,
        end_value,
        factor=lambda rate, p: jnp.exp(-rate * p),
        lower_bound=lambda rate: True,
        hold_at_zero_rate=False,
    )


@pytree_factory
@_refuse_non_finite("init_value", "end_value")
def inverse_time_decay(
    init_value: ArrayLike,
    transition_steps: ArrayLike,
    decay_rate: ArrayLike,
    transition_begin: ArrayLike = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    r"""Inverse-time decay (TensorFlow's ``inverse_time_decay``).

    .. math::
      p = \frac{\max(t - B, 0)}{T} \quad (\lfloor p \rfloor \text{ if staircase}),
      \qquad v(t) = \frac{I}{1 + k p}

    with :math:`I` = ``init_value``, :math:`k` = ``decay_rate``, :math:`T` =
    ``transition_steps``, :math:`B` = ``transition_begin``. If ``end_value`` is
    given it is a lower bound: :math:`\max(v, E)`. :math:`T \le 0` gives the
    constant :math:`I`.

    Args:
      init_value: the initial value :math:`I`.
      transition_steps: :math:`T \ge 0`, the time scale of the decay.
      decay_rate: :math:`k \ge 0`.
      transition_begin: steps :math:`B \ge 0` (default 0) to hold ``init_value``.
      staircase: static bool (default False): decay in discrete jumps.
      end_value: optional lower bound (default None).

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``transition_steps``, ``decay_rate`` or
        ``transition_begin`` is negative.

    References:
      TensorFlow, ``tf.compat.v1.train.inverse_time_decay``.
    """
    _check_decay_args("inverse_time_decay", transition_steps, decay_rate, transition_begin, staircase)
    return _decay(
        init_value,
        transition_steps,
        decay_rate,
        transition_begin,
        staircase,
        end_value,
        factor=lambda rate, p: 1 / (1 + rate * p),
        lower_bound=lambda rate: True,
        hold_at_zero_rate=False,
    )


# --------------------------------------------------------------------------- #
# Piecewise schedules
# --------------------------------------------------------------------------- #


@pytree_factory
@_refuse_non_finite("init_value")
def piecewise_constant_schedule(
    init_value: ArrayLike, boundaries_and_scales: Mapping[int, ArrayLike] | None = None
) -> Schedule:
    r"""Piecewise constant: multiplied by ``scale`` from each ``boundary`` on.

    .. math::
      v(t) = I \prod_{i:\, b_i \le t} s_i

    with :math:`I` = ``init_value`` and ``boundaries_and_scales`` =
    :math:`\{b_i: s_i\}`.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: a dict ``{step: scale}`` (default None: constant).
        The keys are static non-negative step numbers (in any order); the
        scales are non-negative and may be traced.

    Returns:
      A function of the step count.

    Raises:
      ValueError: on a negative boundary or a negative concrete scale.
    """
    boundaries, scales = _sorted_boundaries_and_scales("piecewise_constant_schedule", boundaries_and_scales)
    dtype = _float_dtype(init_value, *boundaries, *scales)

    def schedule(count):
        count = jnp.asarray(count)
        value = _broadcast_to_count(_as_float(init_value, dtype), count)
        for boundary, scale in zip(boundaries, scales):
            value = jnp.where(count >= boundary, value * _as_float(scale, dtype), value)
        return value

    return schedule


@pytree_factory
@_refuse_non_finite("init_value")
def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: ArrayLike,
    boundaries_and_scales: Mapping[int, ArrayLike] | None = None,
) -> Schedule:
    r"""Interpolates between the values of :func:`piecewise_constant_schedule`.

    With sorted boundaries :math:`0 = b_0 < b_1 < \dots < b_n` and values
    :math:`v_0 = I`, :math:`v_i = v_{i-1} s_i` (the accumulated scales), for
    :math:`b_{i} \le t < b_{i+1}` and :math:`x = (t - b_i) / \max(b_{i+1} - b_i, 1)`:

    .. math::
      v(t) = v_i + (v_{i+1} - v_i)\, x \quad \text{(linear)}, \qquad
      v(t) = v_{i+1} + \frac{v_i - v_{i+1}}{2}\,(1 + \cos \pi x) \quad \text{(cosine)}

    and :math:`v(t) = v_n` for :math:`t \ge b_n`. The interpolation is between
    accumulated values, not between the scales.

    Args:
      interpolate_type: static, ``'linear'`` or ``'cosine'``.
      init_value: the value at step 0.
      boundaries_and_scales: a dict ``{step: scale}`` (default None: constant);
        static non-negative keys, non-negative (possibly traced) scales.

    Returns:
      A function of the step count.

    Raises:
      ValueError: on an unknown ``interpolate_type``, a negative boundary or a
        negative concrete scale.
    """
    owner = "piecewise_interpolate_schedule"
    if interpolate_type not in _INTERPOLATORS:
        raise ValueError(f"{owner}: interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}")
    boundaries, scales = _sorted_boundaries_and_scales(owner, boundaries_and_scales)
    return _interpolated(interpolate_type, init_value, boundaries, scales)


# --------------------------------------------------------------------------- #
# Cosine and warmup schedules
# --------------------------------------------------------------------------- #


@pytree_factory
@_refuse_non_finite("init_value", "alpha")
def cosine_decay_schedule(
    init_value: ArrayLike,
    decay_steps: ArrayLike,
    alpha: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    r"""Cosine decay (annealing) from ``init_value`` to ``alpha * init_value``.

    .. math::
      c(t) = \tfrac12 \left(1 + \cos\left(\pi \frac{\min(t, T)}{T}\right)\right),
      \qquad v(t) = I \left((1 - \alpha)\, c(t)^{p} + \alpha\right)

    with :math:`I` = ``init_value``, :math:`T` = ``decay_steps``, :math:`\alpha`
    = ``alpha`` (default 0) and :math:`p` = ``exponent`` (default 1). The value
    stays at :math:`\alpha I` after :math:`T` steps. A traced :math:`T \le 0`
    gives :math:`\alpha I` (the decay is already over).

    Args:
      init_value: the value at step 0.
      decay_steps: :math:`T > 0`, the length of the decay.
      alpha: the final value as a fraction of ``init_value`` (default 0.0).
      exponent: :math:`p \ge 0` (default 1.0) applied to the cosine factor.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``decay_steps`` is not positive or ``exponent``
        is negative.

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm
      Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    owner = "cosine_decay_schedule"
    _checks.check_positive(owner, "decay_steps", decay_steps)
    _checks.check_nonnegative(owner, "exponent", exponent)
    return _cosine(init_value, decay_steps, alpha, exponent)


@pytree_factory
def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[ArrayLike]) -> Schedule:
    r"""Runs ``schedules`` one after the other.

    Schedule :math:`i` is used for :math:`b_{i-1} \le t < b_i` (with
    :math:`b_{-1} = 0`, :math:`b_n = \infty`) and receives the step count
    relative to its start, :math:`t - b_{i-1}`:

    .. math::
      v(t) = s_i(t - b_{i-1}) \quad \text{for } b_{i-1} \le t < b_i

    Args:
      schedules: ``n + 1`` schedules (their number is static).
      boundaries: ``n`` non-negative, non-decreasing steps (possibly traced)
        where the next schedule takes over; a sequence or a 1-D array.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if the numbers of schedules and boundaries do not match, or
        concrete boundaries are negative or decreasing.
      TypeError: if a schedule is not callable.
    """
    owner = "join_schedules"
    schedules = list(schedules)
    if not schedules:
        raise ValueError(f"{owner}: schedules must not be empty")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{owner}: schedules[{i}] must be callable, got {s!r}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{owner}: boundaries must have one entry fewer than schedules, "
            f"got {len(boundaries)} boundaries for {len(schedules)} schedules"
        )
    boundaries = [boundaries[i] for i in range(len(boundaries))]
    _check_boundaries(owner, "boundaries", boundaries)

    def schedule(count):
        out = schedules[0](count)
        for boundary, next_schedule in zip(boundaries, schedules[1:]):
            out = jnp.where(count < boundary, out, next_schedule(count - boundary))
        return jnp.asarray(out, _float_dtype(out))

    return schedule


@pytree_factory
@_refuse_non_finite("init_value", "peak_value")
def warmup_constant_schedule(init_value: ArrayLike, peak_value: ArrayLike, warmup_steps: ArrayLike) -> Schedule:
    r"""Linear warmup from ``init_value`` to ``peak_value``, then constant.

    .. math::
      v(t) = I + \frac{\min(t, W)}{W} (P - I)

    with :math:`I` = ``init_value``, :math:`P` = ``peak_value``, :math:`W` =
    ``warmup_steps``. The join of :func:`linear_schedule` and
    :func:`constant_schedule` at :math:`W`. Unlike Optax, :math:`W = 0` gives
    the constant :math:`P` (no warmup) rather than :math:`I`.

    Args:
      init_value: the value at step 0.
      peak_value: the value from step ``warmup_steps`` on.
      warmup_steps: :math:`W \ge 0`, the length of the warmup.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``warmup_steps`` is negative.

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    _checks.check_nonnegative("warmup_constant_schedule", "warmup_steps", warmup_steps)
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps), constant_schedule(peak_value)], [warmup_steps]
    )


@pytree_factory
@_refuse_non_finite("init_value", "peak_value", "end_value")
def warmup_cosine_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: ArrayLike,
    decay_steps: ArrayLike,
    end_value: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    r"""Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to
    ``end_value``.

    With :math:`W` = ``warmup_steps``, :math:`D` = ``decay_steps`` (the *total*
    length, warmup included), :math:`P` = ``peak_value``, :math:`E` =
    ``end_value`` and :math:`p` = ``exponent``:

    .. math::
      v(t) = \begin{cases}
        I + \frac{t}{W}(P - I), & t < W \\
        E + (P - E)\, c^{p}, \; c = \tfrac12\left(1 + \cos \pi \frac{\min(t - W, D - W)}{D - W}\right),
          & t \ge W
      \end{cases}

    The join of :func:`linear_schedule` and :func:`cosine_decay_schedule` with
    ``alpha = end_value / peak_value``; as in Optax, ``alpha`` is 0 when
    ``peak_value == 0``, so the decay phase is then 0 whatever ``end_value``.

    Args:
      init_value: the value at step 0.
      peak_value: the value at the end of the warmup.
      warmup_steps: :math:`W \ge 0`.
      decay_steps: :math:`D > W`, the total length of the schedule.
      end_value: the final value (default 0.0).
      exponent: :math:`p \ge 0` (default 1.0) applied to the cosine factor.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete ``warmup_steps`` is negative, ``decay_steps <=
        warmup_steps`` or ``exponent`` is negative.

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm
      Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    owner = "warmup_cosine_decay_schedule"
    _checks.check_nonnegative(owner, "warmup_steps", warmup_steps)
    _check_less(owner, "warmup_steps", warmup_steps, "decay_steps", decay_steps)
    _checks.check_nonnegative(owner, "exponent", exponent)

    # alpha = end_value / peak_value, with a double where so that peak_value == 0
    # has a finite gradient (the cosine part is 0 then, whatever alpha is).
    dtype = _float_dtype(peak_value, end_value)
    peak, end = _as_float(peak_value, dtype), _as_float(end_value, dtype)
    nonzero = peak != 0
    alpha = jnp.where(nonzero, end / jnp.where(nonzero, peak, 1), 0)
    cosine_part = _cosine(peak_value, decay_steps - warmup_steps, alpha, exponent)
    return join_schedules([linear_schedule(init_value, peak_value, warmup_steps), cosine_part], [warmup_steps])


_COOLDOWNS = ("linear", "cosine", "1-sqrt")


def _cooldown(peak_value, end_value, decay_steps, decay_type: str) -> Schedule:
    """From ``peak_value`` at step 0 to ``end_value`` at ``decay_steps`` (then constant) with the given shape."""
    dtype = _float_dtype(peak_value, end_value, decay_steps)

    def schedule(count):
        peak, end = _as_float(peak_value, dtype), _as_float(end_value, dtype)
        frac, active = _progress(count, decay_steps, 0, dtype)
        x = jnp.minimum(frac, 1)
        if decay_type == "linear":
            remaining = 1 - x
        elif decay_type == "cosine":
            remaining = (1 + jnp.cos(jnp.pi * x)) / 2
        else:  # "1-sqrt" (finite derivative at x = 0, where sqrt's is infinite)
            remaining = 1 - _pow01(x, 0.5)
        return jnp.where(active, end + (peak - end) * remaining, end)

    return schedule


@pytree_factory
@_refuse_non_finite("init_value", "peak_value", "end_value")
def warmup_stable_decay_schedule(
    peak_value: ArrayLike,
    warmup_steps: ArrayLike,
    stable_steps: ArrayLike,
    decay_steps: ArrayLike,
    init_value: ArrayLike = 0.0,
    end_value: ArrayLike = 0.0,
    decay_type: str = "linear",
) -> Schedule:
    r"""Warmup-stable-decay (WSD, "trapezoidal"): a linear warmup, a long constant phase, a short cooldown.

    With :math:`W` = ``warmup_steps``, :math:`S` = ``stable_steps``, :math:`D` =
    ``decay_steps``, :math:`P` = ``peak_value``, :math:`I` = ``init_value``,
    :math:`E` = ``end_value`` and :math:`x = \min(1, (t - W - S) / D)`:

    .. math::
      v(t) = egin{cases}
        I + rac{t}{W}(P - I), & t < W \
        P, & W \le t < W + S \
        E + (P - E)\, r(x), & t \ge W + S
      \end{cases}

    with the cooldown shape :math:`r(x) = 1 - x` (``"linear"``),
    :math:`	frac12(1 + \cos \pi x)` (``"cosine"``) or :math:`1 - \sqrt{x}`
    (``"1-sqrt"``, the cooldown Hägele et al. found best). The stable phase can
    be extended and the cooldown started from any checkpoint, which is the
    point of WSD: one run serves several training lengths. Every numeric
    argument may be traced.

    Args:
      peak_value: the value of the stable phase.
      warmup_steps: :math:`W \ge 0` (``0``: start at the peak).
      stable_steps: :math:`S \ge 0`.
      decay_steps: :math:`D \ge 0`, the length of the cooldown (``0``: drop to
        ``end_value`` at once).
      init_value: the value at step 0 (default 0.0).
      end_value: the value at the end of the cooldown and after (default 0.0).
      decay_type: ``"linear"`` (default), ``"cosine"`` or ``"1-sqrt"``.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete step count is negative, or ``decay_type`` is unknown.

    References:
      Hu et al., `MiniCPM: Unveiling the Potential of Small Language Models with
      Scalable Training Strategies <https://arxiv.org/abs/2404.06395>`_, 2024;
      Hägele et al., `Scaling Laws and Compute-Optimal Training Beyond Fixed
      Training Durations <https://arxiv.org/abs/2405.18392>`_, 2024.
    """
    owner = "warmup_stable_decay_schedule"
    for name, value in (("warmup_steps", warmup_steps), ("stable_steps", stable_steps),
                        ("decay_steps", decay_steps)):
        _checks.check_nonnegative(owner, name, value)
    if decay_type not in _COOLDOWNS:
        raise ValueError(f"{owner}: decay_type must be one of {list(_COOLDOWNS)}, got {decay_type!r}")
    warmup = warmup_constant_schedule(init_value, peak_value, warmup_steps)
    return join_schedules(
        [warmup, _cooldown(peak_value, end_value, decay_steps, decay_type)], [warmup_steps + stable_steps]
    )


@pytree_factory
@_refuse_non_finite("init_value", "peak_value", "end_value")
def warmup_exponential_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: ArrayLike,
    transition_steps: ArrayLike,
    decay_rate: ArrayLike,
    transition_begin: ArrayLike = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    r"""Linear warmup from ``init_value`` to ``peak_value``, then exponential decay.

    .. math::
      v(t) = \begin{cases}
        I + \frac{t}{W}(P - I), & t < W \\
        \text{exponential\_decay}(P, T, r, B, \text{staircase}, E)(t - W), & t \ge W
      \end{cases}

    The join of :func:`linear_schedule` and :func:`exponential_decay` at
    :math:`W` = ``warmup_steps``; ``transition_begin`` counts from the end of
    the warmup.

    Args:
      init_value: the value at step 0.
      peak_value: the value at the end of the warmup.
      warmup_steps: :math:`W \ge 0`.
      transition_steps: :math:`T \ge 0`, see :func:`exponential_decay`.
      decay_rate: :math:`r \ge 0`, see :func:`exponential_decay`.
      transition_begin: :math:`B \ge 0` (default 0) steps to hold ``peak_value``.
      staircase: static bool (default False).
      end_value: optional bound (default None), see :func:`exponential_decay`.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if a concrete step count or ``decay_rate`` is negative.
    """
    owner = "warmup_exponential_decay_schedule"
    _checks.check_nonnegative(owner, "warmup_steps", warmup_steps)
    _check_decay_args(owner, transition_steps, decay_rate, transition_begin, staircase)
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            _exponential(peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value),
        ],
        [warmup_steps],
    )


# --------------------------------------------------------------------------- #
# One-cycle and warm restarts
# --------------------------------------------------------------------------- #


def _check_onecycle(owner: str, transition_steps: Any, pct_start: Any, div_factor: Any, final_div_factor: Any) -> None:
    _checks.check_positive(owner, "transition_steps", transition_steps)
    _checks.check_range(owner, "pct_start", pct_start, low=0.0, high=1.0, low_open=True, high_open=True)
    _checks.check_positive(owner, "div_factor", div_factor)
    _checks.check_positive(owner, "final_div_factor", final_div_factor)


@pytree_factory
@_refuse_non_finite("peak_value")
def linear_onecycle_schedule(
    transition_steps: ArrayLike,
    peak_value: ArrayLike,
    pct_start: ArrayLike = 0.3,
    pct_final: ArrayLike = 0.85,
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
) -> Schedule:
    r"""The one-cycle policy with three linear phases.

    With :math:`T` = ``transition_steps``, :math:`P` = ``peak_value``,
    :math:`I = P / d` (``div_factor``) and :math:`F = I / f`
    (``final_div_factor``), the value goes linearly from :math:`I` to :math:`P`
    over steps :math:`[0, \lfloor p_s T \rfloor]`, back to :math:`I` at
    :math:`\lfloor p_f T \rfloor`, then to :math:`F` at :math:`T`, and stays
    at :math:`F` (:math:`p_s` = ``pct_start``, default 0.3; :math:`p_f` =
    ``pct_final``, default 0.85; :math:`d` default 25; :math:`f` default 1e4).
    Built on :func:`piecewise_interpolate_schedule`; the phase boundaries
    :math:`\lfloor p T \rfloor` are traceable (their derivative with respect
    to ``pct_start``/``pct_final`` is zero).

    Args:
      transition_steps: :math:`T > 0`, the length of the cycle.
      peak_value: the maximum value :math:`P`.
      pct_start: :math:`p_s \in (0, 1)`, the fraction of the cycle spent rising.
      pct_final: :math:`p_f \in (p_s, 1]`, the fraction at which the value is
        back to :math:`I`.
      div_factor: :math:`d > 0`, the initial value is :math:`P / d`.
      final_div_factor: :math:`f > 0`, the final value is :math:`P / (d f)`.

    Returns:
      A function of the step count.

    Raises:
      ValueError: on concrete out-of-range arguments (see above).

    References:
      Smith & Topin, `Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2017.
    """
    owner = "linear_onecycle_schedule"
    _check_onecycle(owner, transition_steps, pct_start, div_factor, final_div_factor)
    _checks.check_range(owner, "pct_final", pct_final, low=0.0, high=1.0, low_open=True)
    _check_less(owner, "pct_start", pct_start, "pct_final", pct_final)
    dtype = _float_dtype(transition_steps, peak_value, pct_start, pct_final, div_factor, final_div_factor)
    boundaries = (
        _floor_product(pct_start, transition_steps, dtype),
        _floor_product(pct_final, transition_steps, dtype),
        transition_steps,
    )
    scales = (div_factor, 1 / div_factor, 1 / final_div_factor)
    return _interpolated("linear", peak_value / div_factor, boundaries, scales)


@pytree_factory
@_refuse_non_finite("peak_value")
def cosine_onecycle_schedule(
    transition_steps: ArrayLike,
    peak_value: ArrayLike,
    pct_start: ArrayLike = 0.3,
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
) -> Schedule:
    r"""The one-cycle policy with two cosine phases.

    With :math:`T` = ``transition_steps``, :math:`P` = ``peak_value``,
    :math:`I = P / d` and :math:`F = I / f`, the value rises from :math:`I` to
    :math:`P` along a half cosine over steps :math:`[0, \lfloor p_s T \rfloor]`,
    falls along a half cosine to :math:`F` at :math:`T`, and stays at :math:`F`
    (:math:`p_s` = ``pct_start``, default 0.3; :math:`d` = ``div_factor``,
    default 25; :math:`f` = ``final_div_factor``, default 1e4). Built on
    :func:`piecewise_interpolate_schedule` with traceable boundaries.

    Args:
      transition_steps: :math:`T > 0`, the length of the cycle.
      peak_value: the maximum value :math:`P`.
      pct_start: :math:`p_s \in (0, 1)`, the fraction of the cycle spent rising.
      div_factor: :math:`d > 0`, the initial value is :math:`P / d`.
      final_div_factor: :math:`f > 0`, the final value is :math:`P / (d f)`.

    Returns:
      A function of the step count.

    Raises:
      ValueError: on concrete out-of-range arguments (see above).

    References:
      Smith & Topin, `Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2017.
    """
    owner = "cosine_onecycle_schedule"
    _check_onecycle(owner, transition_steps, pct_start, div_factor, final_div_factor)
    dtype = _float_dtype(transition_steps, peak_value, pct_start, div_factor, final_div_factor)
    boundaries = (_floor_product(pct_start, transition_steps, dtype), transition_steps)
    scales = (div_factor, 1 / (div_factor * final_div_factor))
    return _interpolated("cosine", peak_value / div_factor, boundaries, scales)


@pytree_factory
def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, ArrayLike]]) -> Schedule:
    r"""Stochastic gradient descent with warm restarts: consecutive cycles of
    :func:`warmup_cosine_decay_schedule`.

    Cycle :math:`k` is ``warmup_cosine_decay_schedule(**cosine_kwargs[k])`` and
    lasts its ``decay_steps`` :math:`D_k`; the cycles are joined at the
    boundaries :math:`D_0, D_0 + D_1, \dots` (see :func:`join_schedules`). The
    number of cycles is static; every value in the dicts may be traced.

    Args:
      cosine_kwargs: an iterable of dicts of keyword arguments of
        :func:`warmup_cosine_decay_schedule`, each with ``decay_steps``.

    Returns:
      A function of the step count.

    Raises:
      ValueError: if ``cosine_kwargs`` is empty, an entry lacks
        ``decay_steps``, or an entry is invalid for
        :func:`warmup_cosine_decay_schedule` (the message names the entry).

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm
      Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    owner = "sgdr_schedule"
    cosine_kwargs = list(cosine_kwargs)
    if not cosine_kwargs:
        raise ValueError(f"{owner}: cosine_kwargs must contain at least one cycle")
    schedules, boundaries, end = [], [], 0
    for i, kwargs in enumerate(cosine_kwargs):
        if not isinstance(kwargs, Mapping) or "decay_steps" not in kwargs:
            raise ValueError(f"{owner}: cosine_kwargs[{i}] must be a dict with a 'decay_steps' entry, got {kwargs!r}")
        try:
            schedules.append(warmup_cosine_decay_schedule(**kwargs))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{owner}: cosine_kwargs[{i}]: {e}") from e
        end = end + kwargs["decay_steps"]
        boundaries.append(end)
    return join_schedules(schedules, boundaries[:-1])


# Imported last: the injection wrappers build on the transforms, not on this module.
from jaxopt_lite.base import StatefulSchedule  # noqa: E402
from jaxopt_lite.wrappers.hyperparams import (  # noqa: E402
    InjectHyperparamsState,
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    inject_hyperparams,
    inject_stateful_hyperparams,
)
