"""Hyperparameters kept in the optimizer state, settable between steps."""

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    _recording,
    with_extra_args_support,
)

# ----------------------------------------------------------------------------
# Hyperparameters in the state.
# ----------------------------------------------------------------------------


class InjectStatefulHyperparamsState(NamedTuple):
    """State of a transformation built by :func:`inject_hyperparams` (Optax's name and fields).

    Attributes:
      count: int32 number of ``update`` calls so far.
      hyperparams: dict from argument name to a JAX array: the numeric
        hyperparameters, and the scheduled ones' values at the last step (at
        step 0 right after ``init``). Replace a numeric entry between steps
        to change it (see :func:`set_hyperparams`); a scheduled entry is
        recomputed each step, so replacing it has no effect.
      hyperparams_states: dict from the name of each scheduled argument to its
        schedule's state (:class:`WrappedScheduleState` for a plain schedule of
        the step count, whatever a :class:`~jaxopt_lite.base.StatefulSchedule` keeps).
      inner_state: the state of the wrapped transformation.
    """

    count: jax.Array
    hyperparams: dict[str, jax.Array]
    hyperparams_states: dict[str, Any]
    inner_state: OptState


InjectHyperparamsState = InjectStatefulHyperparamsState  # the name of Optax < 0.1.9, kept as an alias


class WrappedScheduleState(NamedTuple):
    """The step count of a :class:`WrappedSchedule`."""

    count: jax.Array


class WrappedSchedule:
    """A :class:`~jaxopt_lite.base.StatefulSchedule` made of a plain schedule of the step count.

    ``init()`` starts the count at 0, ``update`` adds 1 (saturating), and
    calling it evaluates ``schedule_fn(count)``.
    """

    def __init__(self, schedule_fn: Callable[[jax.Array], Any]):
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(count=_tree.zero_count())

    def update(self, state: WrappedScheduleState, **extra_args: Any) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(count=_tree.safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args: Any) -> Any:
        del extra_args
        return self.schedule_fn(state.count)


_NUMERIC_WORDS = ("float", "Scalar", "Schedule", "Numeric", "Number")


def _annotation_text(param: inspect.Parameter) -> str | None:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return None
    return ann if isinstance(ann, str) else str(ann)


def _looks_numeric(param: inspect.Parameter) -> bool | None:
    """Whether a factory parameter is declared as a float (None if it says nothing)."""
    if isinstance(param.default, (float, np.floating)) and not isinstance(param.default, bool):
        return True
    text = _annotation_text(param)
    if text is None:
        return None
    return any(word in text for word in _NUMERIC_WORDS)


_KEY_NAMES = ("key", "rng", "rng_key", "prng_key", "seed")


def _is_prng_key(param: inspect.Parameter, value: Any) -> bool:
    """A PRNG key (typed, or a raw uint32 key passed for a key-named argument) is an input, not a hyperparameter."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return param.name in _KEY_NAMES and dtype is not None and np.dtype(dtype) == np.uint32


def _is_stateful_schedule(value: Any) -> bool:
    return callable(value) and callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))


def _classify(param: inspect.Parameter, value: Any, static_names: set[str]) -> str:
    """'static', 'numeric' or 'schedule' for one argument of the factory."""
    if param.name in static_names or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        return "static"
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)) or _is_prng_key(param, value):
        return "static"
    if _is_stateful_schedule(value):
        return "schedule"
    if isinstance(value, (int, np.integer)):
        # Ints are structural (counts, periods, sizes) unless the factory declares a float.
        return "numeric" if _looks_numeric(param) else "static"
    if isinstance(value, (float, complex, np.floating, np.complexfloating)):
        return "numeric"
    if isinstance(value, (jax.Array, np.ndarray)):
        return "static" if np.dtype(value.dtype) == np.bool_ else "numeric"
    if callable(value):
        if inspect.isclass(value) or (hasattr(value, "init") and hasattr(value, "update")):
            return "static"  # a dtype, a class, or a transformation passed as an argument
        # A function argument is a schedule, unless the factory declares the
        # parameter with a type that is neither a float nor a schedule (a mask
        # function, a callback, ...).
        return "static" if _looks_numeric(param) is False else "schedule"
    return "static"  # tuples, dicts, dtypes, arbitrary objects: they shape the transformation


def _float_dtype_of(params: Any) -> Any:
    """The highest floating dtype among the params (the real dtype of a complex one)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    dtypes = [jnp.finfo(d).dtype for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    if not dtypes:
        return jnp.result_type(float)
    return functools.reduce(jnp.promote_types, dtypes)


def _as_hyperparam(value: Any, dtype: Any) -> jax.Array:
    """A numeric hyperparameter as an array, with Optax's dtype rules.

    A JAX array with a strong dtype (``jnp.asarray(0.9, jnp.bfloat16)``) keeps
    it, even when ``hyperparam_dtype`` is set; other floats (Python or NumPy
    floats, weakly typed arrays, and ints given for float arguments) take ``dtype``.
    """
    if isinstance(value, jax.Array) and not getattr(value, "weak_type", False):
        return value
    arr = jnp.asarray(value)
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        return arr
    return arr.astype(dtype)


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Moves a transformation's numeric hyperparameters into its state.

    ``inject_hyperparams(adam)(learning_rate=1e-3)`` builds a transformation
    that behaves like ``adam(1e-3)`` but keeps ``learning_rate`` (and ``b1``,
    ``b2``, ``eps``, ...) as arrays in ``state.hyperparams``: they can be read
    and changed between steps without recompiling a jitted step, vmapped over
    (to train several configurations at once), or given as schedules (functions
    of the step count, evaluated at ``count`` = 0, 1, 2, ...).

    Each argument of ``inner_factory`` is sorted once, when the returned
    function is called:

    * static (passed to the factory as given, never in the state): arguments
      named in ``static_args``; ``None``, bools, strings; Python ints (periods,
      sizes, counts; an int for a parameter whose default is a float or whose
      annotation mentions float/Scalar/Schedule is numeric instead); boolean
      arrays; tuples, dicts, dtypes, classes, transformations and other
      structural values; and functions for a parameter annotated with a type
      that mentions neither float nor schedule (e.g. a mask function);
      PRNG keys (typed keys, or uint32 keys for an argument named ``key``,
      ``rng``, ``seed``...) are static too;
    * numeric (stored in the state): floats, and float/int arrays;
    * schedule (evaluated each step, value stored in the state): stateful
      schedules (objects with ``init``, ``update`` and ``__call__``, see
      :class:`~jaxopt_lite.base.StatefulSchedule`) and other callables, which
      are wrapped in a :class:`WrappedSchedule` of the step count.

    Unlike Optax, ``static_args`` is thus rarely needed; it still forces an
    argument to be static.

    Args:
      inner_factory: a function returning a ``GradientTransformation``.
      static_args: name(s) of arguments to treat as static.
      hyperparam_dtype: the dtype of float hyperparameters; default: the
        highest float dtype among the params (given to ``init``; the real dtype
        for complex params). A JAX array given with a strong dtype keeps it
        (``jnp.asarray(0.95, jnp.bfloat16)`` stays bfloat16), as in Optax.

    Returns:
      A function with the factory's signature returning a
      ``GradientTransformationExtraArgs`` with state
      :class:`InjectStatefulHyperparamsState` ``(count, hyperparams, hyperparams_states,
      inner_state)``.
      ``update`` calls ``inner_factory`` with the current hyperparameters and
      runs the resulting transformation (under ``jit`` this happens once, at
      trace time).

    Raises:
      ValueError: if ``static_args`` names an argument the factory lacks.
    """
    static_names = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static_names - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"inject_hyperparams: static_args {sorted(unknown)} are not parameters of "
            f"{getattr(inner_factory, '__name__', inner_factory)!r}; its parameters are {list(signature.parameters)}"
        )
    cast_dtype = None if hyperparam_dtype is None else jnp.dtype(hyperparam_dtype)

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        kinds = {name: _classify(signature.parameters[name], v, static_names) for name, v in arguments.items()}
        numeric = {n: arguments[n] for n, k in kinds.items() if k == "numeric"}
        schedules = {n: arguments[n] for n, k in kinds.items() if k == "schedule"}

        def build(hyperparams):
            call = dict(arguments)
            call.update(hyperparams)
            ba = inspect.BoundArguments(signature, call)
            return with_extra_args_support(inner_factory(*ba.args, **ba.kwargs))

        stateful = {n: f if _is_stateful_schedule(f) else WrappedSchedule(f) for n, f in schedules.items()}

        def init(params):
            dtype = cast_dtype if cast_dtype is not None else _float_dtype_of(params)
            hyperparams = {n: _as_hyperparam(v, dtype) for n, v in numeric.items()}
            schedule_states = {n: f.init() for n, f in stateful.items()}
            for n, f in stateful.items():
                hyperparams[n] = _as_hyperparam(f(schedule_states[n]), dtype)
            inner_state = build(hyperparams).init(params)
            state = InjectStatefulHyperparamsState(
                count=_tree.zero_count(),
                hyperparams=hyperparams,
                hyperparams_states=schedule_states,
                inner_state=inner_state,
            )
            return _tree.place_on_params_mesh(state, params)

        def update(updates, state, params=None, **extra_args):
            hyperparams = dict(state.hyperparams)
            for n in numeric:
                if n not in hyperparams:
                    raise KeyError(
                        f"inject_hyperparams: state.hyperparams lacks {n!r}; it has {sorted(hyperparams)}"
                    )
                if cast_dtype is not None or params is not None:  # a float set between steps takes the dtype
                    hyperparams[n] = _as_hyperparam(hyperparams[n], cast_dtype or _float_dtype_of(params))
                else:
                    hyperparams[n] = jnp.asarray(hyperparams[n])
            for n, f in stateful.items():
                old = state.hyperparams.get(n)
                dtype = cast_dtype if cast_dtype is not None else (jnp.result_type(old) if old is not None else None)
                value = jnp.asarray(f(state.hyperparams_states[n], **extra_args))
                hyperparams[n] = value if dtype is None else value.astype(dtype)
            schedule_states = {n: f.update(state.hyperparams_states[n], **extra_args) for n, f in stateful.items()}
            new_updates, inner_state = build(hyperparams).update(updates, state.inner_state, params, **extra_args)
            return new_updates, InjectStatefulHyperparamsState(
                count=_tree.safe_increment(state.count),
                hyperparams=hyperparams,
                hyperparams_states=schedule_states,
                inner_state=inner_state,
            )

        return GradientTransformationExtraArgs(init, update)

    # What it returns is a pytree of the factory's numeric arguments; two calls of inject_hyperparams
    # with the same factory and options make equal tree structures (one trace for both under jit).
    key = ("inject_hyperparams", inner_factory, tuple(sorted(static_names)), cast_dtype)
    name = f"inject_hyperparams({getattr(inner_factory, '__name__', 'factory')})"
    return _recording(wrapped, key=key, signature=signature, wrapped=inner_factory, name=name)


def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """The same as :func:`inject_hyperparams` (which takes stateful schedules too); Optax's older name."""
    return inject_hyperparams(inner_factory, static_args, hyperparam_dtype)


def set_hyperparams(state: InjectStatefulHyperparamsState, **values: Any) -> InjectStatefulHyperparamsState:
    """Returns ``state`` with the named hyperparameters replaced (a new state; no mutation).

    Each new value is cast to the dtype of the entry it replaces, so a jitted
    step taking the new state is not recompiled (a scalar replacing a scalar
    keeps the same shape too). Setting a scheduled hyperparameter has no
    effect: schedules are re-evaluated every step.

    Raises:
      KeyError: if a name is not in ``state.hyperparams`` (the known names are listed).
    """
    hyperparams = dict(state.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise KeyError(f"set_hyperparams: no hyperparameter {name!r}; known: {sorted(hyperparams)}")
        hyperparams[name] = jnp.asarray(value, dtype=jnp.result_type(hyperparams[name]))
    return state._replace(hyperparams=hyperparams)
