"""Validation of hyperparameters that never touches a traced value.

A hyperparameter may be a Python number, a NumPy value, a concrete JAX array or
a tracer (inside ``jit``/``vmap``/``grad``). We check the first three eagerly and
skip tracers: a check must never force a value to the host inside a trace.
"""

from typing import Any

import jax
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
    """Returns ``x`` as a NumPy array if its value is known now, else ``None``."""
    if x is None or callable(x):
        return None
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return None


def _as_float64(owner: str, name: str, value: Any) -> np.ndarray | None:
    """A concrete numeric ``value`` as float64 (any float dtype: bfloat16 and float16 arrays too), else ``None``."""
    arr = concrete(value)
    if arr is None:
        return None
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if not jax.dtypes.issubdtype(arr.dtype, np.number):  # ml_dtypes' bfloat16 is no NumPy "number"
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if jax.dtypes.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    return arr.astype(np.float64)


def check_finite(owner: str, name: str, value: Any) -> None:
    """Raises ``ValueError`` if a concrete ``value`` (any element of it) is ``nan`` or infinite."""
    arr = _as_float64(owner, name, value)
    if arr is not None and not np.all(np.isfinite(arr)):
        shown = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{owner}: {name} must be finite, got {shown:g}")


def check_range(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises ``ValueError`` if a concrete ``value`` is not finite or lies outside the interval.

    Every element is checked, so a batch of values (a sweep) is validated too.
    Tracers and callables (schedules) pass through unchecked.
    """
    arr = _as_float64(owner, name, value)
    if arr is None:
        return
    bad = np.isnan(arr)
    if low is not None:
        bad |= (arr <= low) if low_open else (arr < low)
    if high is not None:
        bad |= (arr >= high) if high_open else (arr > high)
    if np.any(bad):
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        shown = arr[bad].ravel()[0]
        raise ValueError(f"{owner}: {name} must be in {lo}, {hi}, got {shown:g}")
    check_finite(owner, name, value)  # an infinite value inside an unbounded interval


def check_nonnegative(owner: str, name: str, value: Any) -> None:
    check_range(owner, name, value, low=0.0)


def check_positive(owner: str, name: str, value: Any) -> None:
    check_range(owner, name, value, low=0.0, low_open=True)


def check_decay(owner: str, name: str, value: Any) -> None:
    """A decay rate (EMA coefficient) must lie in [0, 1)."""
    check_range(owner, name, value, low=0.0, high=1.0, high_open=True)


def check_learning_rate(owner: str, value: Any) -> None:
    check_nonnegative(owner, "learning_rate", value)


def check_state_type(owner: str, state: Any, expected: type) -> None:
    """Raises ``ValueError`` if ``state`` is not an ``expected`` (the state ``owner``'s init makes)."""
    if not isinstance(state, expected):
        raise ValueError(  # noqa: TRY004 - a ValueError, as base.with_owner reports a foreign state
            f"{owner}: the state passed to update must be of type {expected.__name__} (what {owner}'s init makes), "
            f"got {type(state).__name__}: another optimizer's state, or state and params swapped?"
        )
