r"""Line searches: backtracking (Armijo) and zoom (strong Wolfe), and reuse of their value and gradient.

A line search is a transform placed after the one that computes a direction :math:`u`: it picks a step
size :math:`\eta` by evaluating the objective :math:`f` along :math:`w + \eta u`, returns :math:`\eta u`,
and keeps :math:`f(w + \eta u)` (and its gradient) in its state. Its ``update`` takes keyword arguments

* ``value``: :math:`f(w)` at the current parameters :math:`w`;
* ``grad``: :math:`\nabla f(w)`;
* ``value_fn``: :math:`f` itself, called as ``value_fn(params, **extra_args)``;
* any other keyword argument of ``value_fn`` (a batch of data, ...), passed through to it.

:func:`value_and_grad_from_state` reads :math:`f(w)` and :math:`\nabla f(w)` back from the state, so a
full-batch loop evaluates :math:`f` only inside the line search. Everything runs under ``jit`` (the
searches are ``lax.while_loop``\ s), and every float hyperparameter may be a traced array.

Conventions shared with Optax: the slope along :math:`u` is :math:`\mathrm{Re}\langle \nabla f, u\rangle`
(complex parameters are supported); a ``nan`` objective counts as an infinite violation of the
criteria; scalars (step sizes, values, errors) are kept in the real dtype of the parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformationExtraArgs, Params, Updates, pytree_factory

# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _value_dtype(params: Params) -> Any:
    """The real floating dtype in which a line search keeps values and step sizes."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.result_type(float)
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.result_type(float)


def _slope(grad: Updates, updates: Updates, dtype: Any) -> jax.Array:
    r"""The derivative of :math:`\eta \mapsto f(w + \eta u)`: :math:`\mathrm{Re}\sum \nabla f \cdot u`."""
    return jnp.real(_tree.vdot(_tree.conj(grad), updates)).astype(dtype)


def _violation(error: jax.Array) -> jax.Array:
    """``max(error, 0)``, with ``nan`` (an objective that is not a number) an infinite violation."""
    return jnp.where(jnp.isnan(error), jnp.inf, jnp.maximum(error, 0.0))


def _objective(owner: str, value_fn: Callable, extra_args: dict[str, Any]) -> Callable:
    """``value_fn`` with the extra keyword arguments it accepts bound; any other is an error."""
    try:
        signature = inspect.signature(value_fn)
    except (TypeError, ValueError):  # a builtin or C function: pass everything through
        return functools.partial(value_fn, **extra_args)
    parameters = signature.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unused = sorted(set(extra_args) - accepted)
        if unused:
            raise TypeError(
                f"{owner}: update got extra keyword arguments {unused} that value_fn{signature} does not accept; "
                "every extra argument is passed to value_fn"
            )
    return functools.partial(value_fn, **extra_args)


def _check_update_args(owner: str, params: Any, value: Any, grad: Any, value_fn: Any) -> None:
    missing = [name for name, arg in (("params", params), ("value", value), ("grad", grad)) if arg is None]
    if value_fn is None:
        missing.append("value_fn")
    if missing:
        raise ValueError(
            f"{owner}: update needs params and the keyword arguments value=f(params), grad=grad f(params) and "
            f"value_fn=f; missing: {', '.join(missing)}"
        )
    if not callable(value_fn):
        raise TypeError(f"{owner}: value_fn must be callable, got {value_fn!r}")
    if jnp.ndim(value) != 0:
        raise ValueError(f"{owner}: value must be the scalar f(params), got shape {jnp.shape(value)}")


def _print_if(condition: jax.Array, message: str, **values: Any) -> None:
    jax.lax.cond(condition, lambda: jax.debug.print(message, **values, ordered=True), lambda: None)


# --------------------------------------------------------------------------------------------------
# Backtracking line search (sufficient decrease)
# --------------------------------------------------------------------------------------------------


class BacktrackingLinesearchInfo(NamedTuple):
    """Diagnostics of the last backtracking search.

    ``num_linesearch_steps``: objective evaluations made; ``decrease_error``: the violation of the
    sufficient-decrease criterion at the step size returned (0 when it holds).
    """

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """The accepted ``learning_rate``, ``value`` :math:`f(w + \\eta u)`, its ``grad`` (``None`` unless
    ``store_grad``) and the search's ``info``."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates | None
    info: BacktrackingLinesearchInfo


@pytree_factory
def scale_by_backtracking_linesearch(
    max_backtracking_steps: int | jax.Array,
    slope_rtol: float | jax.Array = 1e-4,
    decrease_factor: float | jax.Array = 0.8,
    increase_factor: float | jax.Array = 1.5,
    max_learning_rate: float | jax.Array = 1.0,
    atol: float | jax.Array = 0.0,
    rtol: float | jax.Array = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Backtracking line search: the first step size of a geometric sequence with sufficient decrease.

    Tries :math:`\eta_0 = \min(\text{increase\_factor}\cdot\eta_{\text{prev}}, \text{max\_learning\_rate})`,
    then :math:`\eta_{j+1} = \text{decrease\_factor}\cdot\eta_j`, and accepts the first :math:`\eta` with

    .. math::
        f(w + \eta u) \le (1 + \text{rtol})\, f(w) + \text{slope\_rtol}\ \eta\, \langle \nabla f(w), u\rangle
        + \text{atol}

    (Armijo's criterion with tolerances), after at most ``max_backtracking_steps`` reductions. The
    update is :math:`\eta u`; :math:`u` must be a descent direction (:math:`\langle\nabla f, u\rangle < 0`).
    If the last trial's objective is ``inf`` or ``nan`` no step is taken (:math:`\eta = 0`).

    Args:
        max_backtracking_steps: the most reductions of the step size per search.
        slope_rtol: the fraction of the linear decrease required (Armijo's :math:`c_1`).
        decrease_factor: the reduction factor, in (0, 1).
        increase_factor: the first trial is this times the previous step size (``1`` keeps it,
            ``inf`` starts every search at ``max_learning_rate``).
        max_learning_rate: the largest step size tried.
        atol, rtol: absolute and relative tolerances of the criterion.
        store_grad: also compute and store :math:`\nabla f(w + \eta u)` (one extra value-and-gradient
            evaluation at the accepted point), for :func:`value_and_grad_from_state`.
        verbose: print a diagnostic when the search fails.

    State: :class:`ScaleByBacktrackingLinesearchState` (a few scalars, plus one copy of the
    parameters with ``store_grad``). ``update`` takes ``value``, ``grad``, ``value_fn`` and the
    extra arguments of ``value_fn`` (see the module docstring).

    Differences from Optax: when no step is taken, the state keeps the last step size tried rather
    than 0 (from which Optax's next search would start at 0 and never move again); the stored value
    is the objective at the parameters actually reached.

    References: Armijo, 1966; Nocedal & Wright, *Numerical Optimization*, 2006, Algorithm 3.1;
    Vaswani et al., *Painless Stochastic Gradient*, 2019.
    """
    owner = "scale_by_backtracking_linesearch"
    _checks.check_nonnegative(owner, "max_backtracking_steps", max_backtracking_steps)
    _checks.check_range(owner, "slope_rtol", slope_rtol, low=0.0, high=1.0, high_open=True)
    _checks.check_range(owner, "decrease_factor", decrease_factor, low=0.0, high=1.0, low_open=True, high_open=True)
    _checks.check_range(owner, "increase_factor", increase_factor, low=1.0)
    _checks.check_positive(owner, "max_learning_rate", max_learning_rate)
    _checks.check_nonnegative(owner, "atol", atol)
    _checks.check_nonnegative(owner, "rtol", rtol)

    def init(params):
        dtype = _value_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones([], dtype),
            value=jnp.full([], jnp.inf, dtype),
            grad=_tree.zeros_like(params) if store_grad else None,
            info=BacktrackingLinesearchInfo(jnp.zeros([], jnp.int32), jnp.full([], jnp.inf, dtype)),
        )

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
        _check_update_args(owner, params, value, grad, value_fn)
        fn = _objective(owner, value_fn, extra_args)
        dtype = state.value.dtype
        value = jnp.asarray(value).astype(dtype)
        slope = _slope(grad, updates, dtype)

        def decrease_error(stepsize, new_value):
            return _violation(new_value - (1.0 + rtol) * value - slope_rtol * stepsize * slope).astype(dtype)

        def searching(carry):
            _, _, error, steps = carry
            return ~(error <= atol) & (steps <= max_backtracking_steps)

        def trial(carry):
            stepsize, _, _, steps = carry
            stepsize = jnp.where(steps > 0, decrease_factor * stepsize, stepsize).astype(dtype)
            new_value = jnp.asarray(fn(_tree.add_scale(params, stepsize, updates))).astype(dtype)
            return stepsize, new_value, decrease_error(stepsize, new_value), steps + 1

        first = jnp.minimum(increase_factor * state.learning_rate, max_learning_rate).astype(dtype)
        start = (first, value, jnp.full([], jnp.inf, dtype), jnp.zeros([], jnp.int32))
        stepsize, new_value, error, steps = jax.lax.while_loop(searching, trial, start)

        refused = jnp.isinf(error)  # the objective is not finite even at the smallest step tried
        taken = jnp.where(refused, 0.0, stepsize).astype(dtype)
        new_grad = None
        if store_grad:
            new_value, new_grad = jax.value_and_grad(fn)(_tree.add_scale(params, taken, updates))
            new_value, new_grad = jnp.asarray(new_value).astype(dtype), _tree.cast_like(new_grad, state.grad)
        else:
            new_value = jnp.where(refused, value, new_value)
        if verbose:
            _print_if(
                error > atol,
                "scale_by_backtracking_linesearch: no step size with sufficient decrease found (value {value}, "
                "slope {slope}, last step size {stepsize}, decrease error {error}); step size taken: {taken}",
                value=value, slope=slope, stepsize=stepsize, error=error, taken=taken,
            )
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=stepsize, value=new_value, grad=new_grad, info=BacktrackingLinesearchInfo(steps, error)
        )
        return _tree.scale(taken, updates), new_state

    return GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------------------------------
# Zoom line search (strong Wolfe)
# --------------------------------------------------------------------------------------------------


class ZoomLinesearchInfo(NamedTuple):
    """Diagnostics of the last zoom search.

    ``num_linesearch_steps``: value-and-gradient evaluations made. ``decrease_error`` and
    ``curvature_error``: the violations of the sufficient-decrease and curvature criteria at the last
    point tried (0 when they hold). A positive ``curvature_error`` alone is benign (the search fell
    back to a step with sufficient decrease); a positive ``decrease_error`` means the values may not
    decrease monotonically.
    """

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class ScaleByZoomLinesearchState(NamedTuple):
    """The accepted ``learning_rate``, ``value`` :math:`f(w + \\eta u)`, ``grad``
    :math:`\\nabla f(w + \\eta u)`, and the search's ``info``."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates
    info: ZoomLinesearchInfo


class _Search(NamedTuple):
    """The running state of one zoom search: step sizes along ``u`` and what was seen there."""

    count: jax.Array
    # The latest trial point.
    stepsize: jax.Array
    value: jax.Array
    grad: Updates
    slope: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    # Phase and termination flags.
    bracketed: jax.Array
    done: jax.Array
    failed: jax.Array
    # A bracket [low, high] (in either order) holding a point that satisfies both criteria; value(low)
    # is the lowest seen in it. ``ref`` is the third point of the cubic interpolation.
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    ref: jax.Array
    value_ref: jax.Array
    # The best point with sufficient decrease, a fallback if the curvature criterion cannot be met.
    safe_stepsize: jax.Array
    safe_value: jax.Array
    safe_grad: Updates


def _cubic_minimizer(a, fa, fpa, b, fb, c, fc):
    """The local minimizer of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a (nan if none)."""
    db, dc = b - a, c - a
    rb, rc = fb - fa - fpa * db, fc - fa - fpa * dc
    denom = (db * dc) ** 2 * (db - dc)
    cubic = (dc**2 * rb - db**2 * rc) / denom  # p(x) = cubic (x-a)^3 + quad (x-a)^2 + fpa (x-a) + fa
    quad = (db**3 * rc - dc**3 * rb) / denom
    return a + (-quad + jnp.sqrt(quad * quad - 3.0 * cubic * fpa)) / (3.0 * cubic)


def _quadratic_minimizer(a, fa, fpa, b, fb):
    """The minimizer of the parabola through (a, fa) and (b, fb) with slope fpa at a."""
    db = b - a
    curvature = (fb - fa - fpa * db) / db**2
    return a - fpa / (2.0 * curvature)


@pytree_factory
def scale_by_zoom_linesearch(
    max_linesearch_steps: int | jax.Array,
    max_learning_rate: float | jax.Array | None = None,
    tol: float | jax.Array = 0.0,
    increase_factor: float | jax.Array = 2.0,
    slope_rtol: float | jax.Array = 1e-4,
    curv_rtol: float | jax.Array = 0.9,
    approx_dec_rtol: float | jax.Array | None = 1e-6,
    stepsize_precision: float | jax.Array = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Zoom line search: a step size satisfying the strong Wolfe conditions.

    Finds :math:`\eta` with sufficient decrease and small curvature along :math:`u`,

    .. math::
        f(w + \eta u) &\le f(w) + c_1 \eta \langle \nabla f(w), u\rangle + \text{tol}, \\
        |\langle \nabla f(w + \eta u), u\rangle| &\le c_2 |\langle \nabla f(w), u\rangle| + \text{tol},

    with :math:`c_1` = ``slope_rtol`` and :math:`c_2` = ``curv_rtol``. Close to a minimum, where
    :math:`f(w + \eta u) \le f(w) + c_3 |f(w)|` (:math:`c_3` = ``approx_dec_rtol``), the first condition
    may instead hold in Hager and Zhang's approximate form
    :math:`\langle \nabla f(w + \eta u), u\rangle \le (2 c_1 - 1)\langle \nabla f(w), u\rangle`, which
    resolves decreases down to machine precision rather than its square root (``approx_dec_rtol=None``
    turns it off).

    Phase 1 (bracketing, Nocedal & Wright Algorithm 3.5) tries :math:`\eta_0` (1 or the previous step
    size, by ``initial_guess_strategy``), then multiplies by ``increase_factor`` (capped at
    ``max_learning_rate``) until an interval containing an acceptable step is found. Phase 2 (zoom,
    Algorithm 3.6) shrinks it, trying the minimizer of the cubic through the two ends and the last
    discarded point if it lies in the middle 60% of the interval, else that of the parabola through the
    ends if in the middle 80%, else the midpoint. Each trial is one value-and-gradient evaluation. When
    ``max_linesearch_steps`` trials are spent, or the interval is shorter than ``stepsize_precision``
    and a step with sufficient decrease is known, the search returns the best step with sufficient
    decrease (the last trial if there is none, step 0 if the objective is not finite there).

    Args:
        max_linesearch_steps: the most trials (value-and-gradient evaluations) per search.
        max_learning_rate: the largest step size tried (``None``: unbounded).
        tol: absolute tolerance of both criteria.
        increase_factor: growth of the trial step size while bracketing (> 1).
        slope_rtol: :math:`c_1` of the sufficient-decrease condition.
        curv_rtol: :math:`c_2` of the curvature condition (``inf`` drops it, leaving an interpolating
            backtracking search).
        approx_dec_rtol: :math:`c_3` above, or ``None``.
        stepsize_precision: the interval length below which a step with sufficient decrease is taken.
        initial_guess_strategy: ``"one"`` (first trial 1: for Newton and quasi-Newton directions such as
            L-BFGS) or ``"keep"`` (the previous step size: for gradient directions).
        verbose: print a diagnostic when the search fails.

    State: :class:`ScaleByZoomLinesearchState` (a few scalars and one copy of the parameters, the
    gradient at the new point, for :func:`value_and_grad_from_state`). ``update`` takes ``value``,
    ``grad``, ``value_fn`` and the extra arguments of ``value_fn`` (see the module docstring).

    Difference from Optax: with ``"keep"``, a previous step size of 0 (a failed search) restarts at 1
    instead of 0, from which no search can move.

    References: Nocedal & Wright, *Numerical Optimization*, 2006, Algorithms 3.5 and 3.6; Hager & Zhang,
    *Algorithm 851: CG_DESCENT*, 2006 (approximate Wolfe conditions).
    """
    owner = "scale_by_zoom_linesearch"
    _checks.check_range(owner, "max_linesearch_steps", max_linesearch_steps, low=1.0)
    if max_learning_rate is not None:
        _checks.check_positive(owner, "max_learning_rate", max_learning_rate)
    _checks.check_nonnegative(owner, "tol", tol)
    _checks.check_range(owner, "increase_factor", increase_factor, low=1.0, low_open=True)
    _checks.check_range(owner, "slope_rtol", slope_rtol, low=0.0, high=1.0, high_open=True)
    _checks.check_positive(owner, "curv_rtol", curv_rtol)
    if approx_dec_rtol is not None:
        _checks.check_nonnegative(owner, "approx_dec_rtol", approx_dec_rtol)
    _checks.check_nonnegative(owner, "stepsize_precision", stepsize_precision)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(f"{owner}: initial_guess_strategy must be 'one' or 'keep', got {initial_guess_strategy!r}")

    def init(params):
        dtype = _value_dtype(params)
        inf = jnp.full([], jnp.inf, dtype)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones([], dtype),
            value=inf,
            grad=_tree.zeros_like(params),
            info=ZoomLinesearchInfo(jnp.zeros([], jnp.int32), inf, inf),
        )

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
        _check_update_args(owner, params, value, grad, value_fn)
        value_and_grad = jax.value_and_grad(_objective(owner, value_fn, extra_args))
        dtype = state.value.dtype
        value0 = jnp.asarray(value).astype(dtype)
        grad0 = _tree.cast_like(grad, state.grad)
        slope0 = _slope(grad0, updates, dtype)
        if initial_guess_strategy == "one":
            guess = jnp.ones([], dtype)
        else:
            guess = jnp.where(state.learning_rate > 0, state.learning_rate, 1.0).astype(dtype)

        def evaluate(stepsize):
            new_value, new_grad = value_and_grad(_tree.add_scale(params, stepsize, updates))
            new_grad = _tree.cast_like(new_grad, grad0)
            return jnp.asarray(new_value).astype(dtype), new_grad, _slope(new_grad, updates, dtype)

        def errors(stepsize, new_value, new_slope):
            decrease = new_value - value0 - slope_rtol * stepsize * slope0  # Armijo
            if approx_dec_rtol is not None:  # Hager-Zhang, only once the value is near value0
                approximate = jnp.maximum(
                    new_slope - (2.0 * slope_rtol - 1.0) * slope0,
                    new_value - value0 - approx_dec_rtol * jnp.abs(value0),
                )
                decrease = jnp.minimum(decrease, approximate)
            curvature = jnp.abs(new_slope) - curv_rtol * jnp.abs(slope0)
            return _violation(decrease).astype(dtype), _violation(curvature).astype(dtype)

        def interpolate(s: _Search) -> jax.Array:
            """The next trial inside the bracket: cubic, else quadratic, else bisection."""
            width = jnp.abs(s.high - s.low)
            left, right = jnp.minimum(s.low, s.high), jnp.maximum(s.low, s.high)

            def inside(x, margin):
                return (x > left + margin * width) & (x < right - margin * width)

            cubic = _cubic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high, s.ref, s.value_ref)
            quadratic = _quadratic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high)
            bisection = (s.low + s.high) / 2
            return jnp.where(inside(cubic, 0.2), cubic, jnp.where(inside(quadratic, 0.1), quadratic, bisection))

        def trial(s: _Search) -> _Search:
            # One trial of either phase: both phases' bookkeeping is a few scalars, so it is computed for both
            # and selected, and the objective is evaluated (and compiled) once.
            zooming = s.bracketed
            grown = jnp.where(s.count == 0, guess, increase_factor * s.stepsize)
            at_max = jnp.asarray(False)
            if max_learning_rate is not None:
                at_max = ~zooming & (grown >= max_learning_rate)
                grown = jnp.minimum(grown, max_learning_rate)
            stepsize = jnp.where(zooming, interpolate(s), grown).astype(dtype)
            new_value, new_grad, new_slope = evaluate(stepsize)
            decrease, curvature = errors(stepsize, new_value, new_slope)
            acceptable = jnp.maximum(decrease, curvature) <= tol
            keep_as_safe = (decrease <= tol) & (~zooming | (new_value < s.safe_value))
            safe = _tree.where(
                keep_as_safe, (stepsize, new_value, new_grad), (s.safe_stepsize, s.safe_value, s.safe_grad)
            )
            new, previous = (stepsize, new_value, new_slope), (s.stepsize, s.value, s.slope)
            low, high = (s.low, s.value_low, s.slope_low), (s.high, s.value_high, s.slope_high)

            # Bracketing: the new point ends the bracket if it does not decrease enough or is no lower than the
            # previous one (high = new), or if the slope turned non-negative there (low = new, high = previous).
            high_is_new = (decrease > 0) | ((new_value >= s.value) & (s.count > 0))
            low_is_new = (new_slope >= 0) & ~high_is_new
            found = high_is_new | low_is_new | acceptable
            bracket_low = _tree.where(low_is_new, new, previous)
            bracket = (bracket_low, _tree.where(low_is_new, previous, new), bracket_low[:2])

            # Zooming: the new point replaces high if it is no lower than low, else it becomes low, and the old low
            # becomes high if the slope at the new point points away from the old high. The dropped end is the
            # next cubic's third point.
            high_to_new = (decrease > 0) | (new_value >= s.value_low)
            high_to_low = (new_slope * (s.high - s.low) >= 0) & ~high_to_new
            zoom = (
                _tree.where(high_to_new, low, new),
                _tree.where(high_to_new, new, _tree.where(high_to_low, low, high)),
                _tree.where(high_to_new | high_to_low, high[:2], low[:2]),
            )
            new_low, new_high, new_ref = _tree.where(zooming, zoom, bracket)

            done = acceptable | (at_max & ~found)  # at the cap with no bracket: take the cap
            stalled = zooming & (jnp.abs(s.high - s.low) <= stepsize_precision) & (safe[0] > 0)
            failed = ((s.count + 1 >= max_linesearch_steps) | stalled) & ~done
            return _Search(
                s.count + 1, stepsize, new_value, new_grad, new_slope, decrease, curvature,
                zooming | found, done, failed, *new_low, *new_high, *new_ref, *safe,
            )  # fmt: skip

        zero = jnp.zeros([], dtype)
        inf = jnp.full([], jnp.inf, dtype)
        false = jnp.asarray(False)
        start = _Search(
            jnp.zeros([], jnp.int32), zero, value0, grad0, slope0, inf, inf, false, false, false,
            zero, value0, slope0, zero, value0, slope0, zero, value0, zero, value0, grad0,
        )  # fmt: skip
        s = jax.lax.while_loop(lambda s: ~(s.done | s.failed), trial, start)
        # On failure fall back to the best step with sufficient decrease, or to no step at all if the
        # objective was not finite at the last trial.
        fall_back = s.failed & ((s.safe_stepsize > 0) | jnp.isinf(s.decrease_error))
        stepsize, new_value, new_grad = _tree.where(
            fall_back, (s.safe_stepsize, s.safe_value, s.safe_grad), (s.stepsize, s.value, s.grad)
        )
        if verbose:
            _print_if(
                s.failed,
                "scale_by_zoom_linesearch: no step size satisfying both conditions found in {steps} trials (value "
                "{value}, slope {slope}, last step size {last}, decrease error {decrease}, curvature error "
                "{curvature}); step size taken: {stepsize}. A non-negative slope means the direction is not a "
                "descent direction.",
                steps=s.count, value=value0, slope=slope0, last=s.stepsize, decrease=s.decrease_error,
                curvature=s.curvature_error, stepsize=stepsize,
            )  # fmt: skip
        new_state = ScaleByZoomLinesearchState(
            learning_rate=stepsize,
            value=new_value,
            grad=new_grad,
            info=ZoomLinesearchInfo(s.count, s.decrease_error, s.curvature_error),
        )
        return _tree.scale(stepsize, updates), new_state

    return GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------------------------------
# Reusing the line search's evaluations
# --------------------------------------------------------------------------------------------------


def value_and_grad_from_state(value_fn: Callable[..., jax.Array]) -> Callable[..., tuple[jax.Array, Updates]]:
    """Like ``jax.value_and_grad(value_fn)``, but reads the value and gradient a line search stored.

    The returned function is called as ``value_and_grad(params, *args, state=opt_state, **kwargs)``. It
    finds the one ``value`` and the one ``grad`` field in ``opt_state`` (the line search's, computed at
    the parameters it returned) and returns them; when the stored value is ``inf`` or ``nan`` (the
    first iteration, or a failed step) it evaluates ``jax.value_and_grad(value_fn)(params, *args,
    **kwargs)`` instead. Only valid for a deterministic (full-batch) objective, evaluated at the
    parameters the optimizer just produced.

    Example (the loop of :func:`~jaxopt_lite.lbfgs`)::

        value_and_grad = value_and_grad_from_state(f)
        value, grad = value_and_grad(params, state=opt_state)
        updates, opt_state = opt.update(grad, opt_state, params, value=value, grad=grad, value_fn=f)
        params = apply_updates(params, updates)
    """
    owner = "value_and_grad_from_state"
    if not callable(value_fn):
        raise TypeError(f"{owner}: value_fn must be callable, got {value_fn!r}")

    def value_and_grad(params, *fn_args, state, **fn_kwargs):
        stored_value, stored_grad = _tree.get(state, "value"), _tree.get(state, "grad")
        if stored_value is None or stored_grad is None:
            raise ValueError(
                f"{owner}: the optimizer state holds no 'value' and 'grad' to reuse; chain a line search that "
                "stores them (scale_by_zoom_linesearch, or scale_by_backtracking_linesearch(store_grad=True))"
            )

        def evaluate():
            value, grad = jax.value_and_grad(value_fn)(params, *fn_args, **fn_kwargs)
            return jnp.asarray(value).astype(stored_value.dtype), _tree.cast_like(grad, stored_grad)

        return jax.lax.cond(jnp.isfinite(stored_value), lambda: (stored_value, stored_grad), evaluate)

    return value_and_grad
