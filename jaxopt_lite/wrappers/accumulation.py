"""Gradient accumulation, periodic application, and skipping bad steps."""

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    Updates,
    _Recipe,
    _recording,
    pytree_factory,
    register_recorded,
    with_extra_args_support,
)

# ----------------------------------------------------------------------------
# Gradient accumulation.
# ----------------------------------------------------------------------------


class ShouldSkipUpdateFunction(Protocol):
    """Decides whether :class:`MultiSteps` should ignore a mini-step's gradients.

    Called as ``fn(updates, gradient_step, params)``; returns a scalar boolean
    array (``True`` to skip) and a pytree stored in ``MultiStepsState.skip_state``
    (for monitoring). Its structure must not depend on the input values.
    """

    def __call__(self, updates: Updates, gradient_step: jax.Array, params: Params | None) -> tuple[jax.Array, Any]:
        ...


def skip_not_finite(updates: Updates, gradient_step: jax.Array, params: Params | None) -> tuple[jax.Array, Any]:
    """Skips a mini-step whose updates hold a NaN or an infinity.

    Returns ``(should_skip, {"should_skip": should_skip, "num_not_finite": n})``,
    where ``n`` (int32) counts the non-finite elements over all leaves.
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(u), dtype=jnp.int32) for u in jax.tree.leaves(updates)]
    num_not_finite = sum(counts, jnp.zeros([], jnp.int32))
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(
    updates: Updates, gradient_step: jax.Array, params: Params | None, max_squared_norm: float | jax.Array
) -> tuple[jax.Array, Any]:
    """Skips a mini-step whose squared global norm is not below ``max_squared_norm``.

    A NaN norm also skips. Bind the threshold with ``functools.partial``.
    Returns ``(should_skip, {"should_skip": should_skip, "norm_squared": sq})``;
    the squared norm is accumulated in at least float32.
    """
    del gradient_step, params
    norm_sq = _tree.norm(updates, squared=True)
    should_skip = jnp.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps`.

    Attributes:
      mini_step: int32, the number of mini-steps accumulated since the last
        inner update (back to 0 after each inner update).
      gradient_step: int32, the number of inner (real) updates made so far.
      inner_opt_state: the state of the wrapped optimizer.
      acc_grads: the running mean (or sum) of this round's gradients, one buffer
        per parameter in ``accumulator_dtype``.
      skip_state: what ``should_skip_update_fn`` returned last (``()`` without one).
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


def _cond(pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
    """``lax.cond`` on a traced predicate; a plain Python branch on a concrete one.

    Eager calls then run (and compile) only the branch taken.
    """
    value = _checks.concrete(pred)
    if value is not None:
        return true_fn() if bool(value) else false_fn()
    return jax.lax.cond(pred, true_fn, false_fn)


def _no_skip(updates, gradient_step, params):
    del updates, gradient_step, params
    return jnp.zeros([], jnp.bool_), ()


def _check_k(owner: str, k: Any, name: str = "every_k_schedule") -> None:
    """Raises if a concrete ``k`` is not a positive integer (traced values pass unchecked)."""
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a positive integer, got {k!r}")
    arr = _checks.concrete(k)
    if arr is None:
        return
    if arr.shape != () or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{owner}: {name} must be a scalar integer, got {k!r}")
    if np.issubdtype(arr.dtype, np.floating) and not float(arr).is_integer():
        raise TypeError(f"{owner}: {name} must be an integer, got {float(arr):g}")
    if arr < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer (number of steps), got {arr.item()}")


class MultiSteps:
    """Gradient accumulation: one real optimizer step every ``k`` mini-steps.

    Each call to :meth:`update` adds the given gradients to a running mean (or
    sum); the wrapped optimizer is only run on the ``k``-th call, on the
    accumulated gradients, and its updates are returned then. On the other
    calls the returned updates are zeros (so ``apply_updates`` leaves the params
    unchanged) and the inner state is untouched. With ``use_grad_mean=True``,
    ``k`` steps on micro-batches equal one step on their concatenation (for a
    loss that is a mean over examples).

    Memory: one accumulator the size of the params (``acc_grads``), on top of
    the inner optimizer's state.

    Args:
      opt: the wrapped optimizer.
      every_k_schedule: the number of mini-steps per real step, an ``int >= 1``
        or a function of the (int32) ``gradient_step`` count returning one (to
        grow the effective batch size during training).
      use_grad_mean: average the accumulated gradients (default ``True``); if
        ``False`` they are summed.
      should_skip_update_fn: optional :class:`ShouldSkipUpdateFunction`, e.g.
        :func:`skip_not_finite`; a skipped mini-step changes nothing but
        ``skip_state`` and returns zero updates.
      accumulator_dtype: the dtype of ``acc_grads`` (default ``float32``);
        ``None`` uses each parameter's dtype.

    Raises:
      ValueError: if ``every_k_schedule`` (or, when concrete, its value) is not
        a positive integer.

    State: :class:`MultiStepsState`. Use :meth:`gradient_transformation` to get
    a plain transformation (e.g. to chain it), and :meth:`has_updated` to know
    whether the last call made a real step.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[jax.Array], jax.Array],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: Any = jnp.float32,
    ):
        if callable(every_k_schedule):
            _check_k("MultiSteps", every_k_schedule(jnp.zeros([], jnp.int32)))
        else:
            _check_k("MultiSteps", every_k_schedule)
            if _checks.concrete(every_k_schedule) is not None:
                every_k_schedule = int(every_k_schedule)
        self._setup(opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype)
        # A pytree of its numeric arguments (the inner optimizer's, a schedule's), like the transformations.
        self._pytree = _Recipe(
            MultiSteps,
            None,
            _MULTI_STEPS_SIGNATURE,
            "MultiSteps",
            call=((opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype), {}),
            built=self,
        )

    def _setup(self, opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype) -> None:
        """Sets the attributes from checked arguments (or from leaves JAX rebuilt, which are never checked)."""
        self._opt = with_extra_args_support(opt)
        if callable(every_k_schedule):
            self._every_k_schedule = every_k_schedule
        else:
            self._every_k_schedule = lambda step: every_k_schedule
        self._use_grad_mean = bool(use_grad_mean)
        self._should_skip_update_fn = should_skip_update_fn if should_skip_update_fn is not None else _no_skip
        self._accumulator_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

    @property
    def inner_opt(self) -> GradientTransformationExtraArgs:
        """The wrapped optimizer."""
        return self._opt

    def init(self, params: Params) -> MultiStepsState:
        """Zero accumulator and counters, and the inner optimizer's initial state."""
        gradient_step = jnp.zeros([], jnp.int32)
        _, skip_state = self._should_skip_update_fn(_tree.zeros_like(params), gradient_step, params)
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=_tree.accumulator_zeros(params, self._accumulator_dtype),
            skip_state=skip_state,
        )

    def update(
        self, updates: Updates, state: MultiStepsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MultiStepsState]:
        """Accumulates ``updates``; on every ``k``-th call runs the inner optimizer on the accumulation."""
        _checks.check_state_type("MultiSteps", state, MultiStepsState)
        _tree.check_same_shapes(updates, state.acc_grads, "updates", "MultiSteps's accumulated gradients (state.acc_grads)")
        k = self._every_k_schedule(state.gradient_step)
        _check_k("MultiSteps", k)
        skip, skip_state = self._should_skip_update_fn(updates, state.gradient_step, params)
        skip = jnp.asarray(skip)
        if skip.shape != () or skip.dtype != jnp.bool_:
            raise ValueError(
                "MultiSteps: should_skip_update_fn must return a scalar boolean array first, "
                f"got dtype {skip.dtype} and shape {skip.shape}"
            )
        n = state.mini_step

        def accumulate(g, acc):
            if self._use_grad_mean:
                # Running mean, acc_n+1 = acc_n + (g - acc_n) / (n + 1): stays well scaled for any k.
                new = acc + (g.astype(acc.dtype) - acc) / (n + 1).astype(acc.dtype)
            else:
                new = acc + g.astype(acc.dtype)
            return new.astype(acc.dtype)

        acc = jax.tree.map(accumulate, updates, state.acc_grads)
        emit = jnp.logical_and(n >= k - 1, jnp.logical_not(skip))
        grads = _tree.cast_like(acc, updates)
        inner_state = state.inner_opt_state

        def run_inner():
            new_updates, new_state = self._opt.update(grads, inner_state, params, **extra_args)
            new_state = jax.tree.map(
                lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), new_state, inner_state
            )
            return new_updates, new_state

        def hold():
            out_shape = jax.eval_shape(run_inner)[0]
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape), inner_state

        new_updates, new_inner_state = _cond(emit, run_inner, hold)
        new_acc = jax.tree.map(
            lambda a, old: jnp.where(skip, old, jnp.where(emit, jnp.zeros_like(a), a)), acc, state.acc_grads
        )
        new_state = MultiStepsState(
            mini_step=jnp.where(skip, n, jnp.where(emit, 0, _tree.safe_increment(n))).astype(jnp.int32),
            gradient_step=jnp.where(emit, _tree.safe_increment(state.gradient_step), state.gradient_step).astype(
                jnp.int32
            ),
            inner_opt_state=new_inner_state,
            acc_grads=new_acc,
            skip_state=skip_state,
        )
        return new_updates, new_state

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the call that produced ``state`` made a real (inner) step."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        """This accumulator as a plain transformation (``init``, ``update``); a pytree as this object is."""
        return _multi_steps_transformation(self)

    def __repr__(self) -> str:
        return self._pytree.describe()


_MULTI_STEPS_SIGNATURE = inspect.signature(MultiSteps)


def _multi_steps_from_recipe(recipe: _Recipe) -> MultiSteps:
    multi_steps = MultiSteps.__new__(MultiSteps)
    multi_steps._setup(*recipe.arguments().values())
    multi_steps._pytree = recipe
    recipe._built = multi_steps
    return multi_steps


register_recorded(MultiSteps, _multi_steps_from_recipe)


def _as_transformation(multi_steps: MultiSteps) -> GradientTransformationExtraArgs:
    return GradientTransformationExtraArgs(init=multi_steps.init, update=multi_steps.update)


_multi_steps_transformation = _recording(
    _as_transformation,
    key=_as_transformation,
    signature=inspect.signature(_as_transformation),
    wrapped=_as_transformation,
    name="MultiSteps.gradient_transformation",
)


class ApplyEvery(NamedTuple):
    """State of :func:`apply_every`: an int32 ``count`` and the running sum ``grad_acc``."""

    count: jax.Array
    grad_acc: Updates


@pytree_factory
def apply_every(k: int = 1) -> GradientTransformation:
    """Sums the updates over ``k`` steps and emits the sum every ``k``-th step, zeros otherwise.

    Unlike :class:`MultiSteps` this is a plain link in a chain: transforms
    before it still update their state every step. Default ``k=1`` (a no-op).
    State: ``ApplyEvery(count, grad_acc)`` where ``grad_acc`` has the params'
    structure and dtypes.
    """
    _check_k("apply_every", k, "k")

    def init(params):
        return ApplyEvery(count=_tree.zero_count(), grad_acc=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.grad_acc, "updates", "state.grad_acc")
        c = state.count % k
        restart = c == 0
        grad_acc = jax.tree.map(
            lambda u, a: (jnp.where(restart, jnp.zeros_like(a), a) + u).astype(a.dtype), updates, state.grad_acc
        )
        emit = c == k - 1
        out = jax.tree.map(lambda a, u: jnp.where(emit, a, jnp.zeros_like(a)).astype(u.dtype), grad_acc, updates)
        return out, ApplyEvery(count=(_tree.safe_increment(state.count) % k).astype(jnp.int32), grad_acc=grad_acc)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Robustness to non-finite gradients.
# ----------------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`.

    Attributes:
      notfinite_count: int32, consecutive steps with a NaN/Inf (reset by a finite step).
      last_finite: bool, whether the last step's updates were all finite.
      total_notfinite: int32, all steps with a NaN/Inf since ``init`` (never reset).
      inner_state: the wrapped transformation's state.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.ones([], jnp.bool_))


@pytree_factory
def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformationExtraArgs:
    """Skips the steps whose updates hold a NaN or an infinity.

    A step with a non-finite update returns zero updates and leaves ``inner``'s
    state as it was (so params and optimizer moments are not corrupted); the
    step is counted. After more than ``max_consecutive_errors`` such steps in a
    row the wrapper gives up and passes the update to ``inner`` anyway (so a
    run that is truly broken shows it).

    State: :class:`ApplyIfFiniteState` ``(notfinite_count, last_finite,
    total_notfinite, inner_state)``.
    """
    _checks.check_nonnegative("apply_if_finite", "max_consecutive_errors", max_consecutive_errors)
    inner = with_extra_args_support(inner)

    def init(params):
        return ApplyIfFiniteState(
            notfinite_count=_tree.zero_count(),
            last_finite=jnp.ones([], jnp.bool_),
            total_notfinite=_tree.zero_count(),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        _checks.check_state_type("apply_if_finite", state, ApplyIfFiniteState)
        finite = _all_finite(updates)
        notfinite_count = jnp.where(finite, 0, _tree.safe_increment(state.notfinite_count)).astype(jnp.int32)
        accept = jnp.logical_or(finite, notfinite_count > max_consecutive_errors)
        old_inner = state.inner_state

        def run():
            u, s = inner.update(updates, old_inner, params, **extra_args)
            s = jax.tree.map(lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), s, old_inner)
            return u, s

        def reject():
            out_shape = jax.eval_shape(run)[0]
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape), old_inner

        new_updates, new_inner = _cond(accept, run, reject)
        total = jnp.where(finite, state.total_notfinite, _tree.safe_increment(state.total_notfinite))
        return new_updates, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=total.astype(jnp.int32),
            inner_state=new_inner,
        )

    return GradientTransformationExtraArgs(init, update)
