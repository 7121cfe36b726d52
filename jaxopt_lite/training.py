"""Training-loop helpers driven by a monitored value: early stopping and LR reduction.

Both helpers are pure: their state is a pytree of arrays and their ``update``
functions only use ``jax.numpy`` and ``lax`` operations, so they run inside
``jax.jit``, ``jax.vmap``, ``lax.scan`` and ``lax.while_loop``, and every
numeric hyperparameter may be a traced array (one value per member of a
vmapped sweep, for instance).

* :func:`early_stopping` tells a loop when the monitored value (a validation
  loss, an accuracy, ...) has stopped improving, and can remember the
  parameters at the best value.
* :func:`reduce_on_plateau` is a gradient transformation that multiplies the
  updates by a scale which is cut by ``factor`` whenever the loss passed as
  ``value=`` plateaus (Optax's ``optax.contrib.reduce_on_plateau``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformationExtraArgs, Params, Updates, pytree_factory

__all__ = [
    "EarlyStopping",
    "EarlyStoppingState",
    "ReduceLROnPlateauState",
    "early_stopping",
    "reduce_on_plateau",
]

_MODES = ("min", "max")


def _default_float():
    """float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.result_type(float)


def _scalar_value(owner: str, value: Any, dtype) -> jax.Array:
    value = jnp.asarray(value)
    if value.ndim != 0:
        raise ValueError(
            f"{owner}: the monitored value must be a scalar, got shape {value.shape} "
            "(reduce it first, e.g. with jnp.mean)"
        )
    if not jnp.issubdtype(value.dtype, jnp.number) and value.dtype != jnp.bool_:
        raise TypeError(f"{owner}: the monitored value must be a number, got dtype {value.dtype}")
    return value.astype(dtype)


# --------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------


class EarlyStoppingState(NamedTuple):
    """The state of :func:`early_stopping`.

    Attributes:
      best_value: the best monitored value so far (``+inf`` for ``mode='min'``,
        ``-inf`` for ``mode='max'``, or ``baseline``, before any improvement).
      best_step: the 0-based index of the update that gave ``best_value``
        (``-1`` before any improvement), int32.
      steps_since_improvement: updates since the last improvement, int32.
      count: the number of updates taken into account, int32 (it stops
        growing once ``should_stop`` is set).
      should_stop: scalar bool array; once ``True`` it stays ``True`` and the
        state no longer changes.
      best_params: the parameters passed with the best value (the parameters
        given to ``init`` before any improvement) if ``restore_best=True``,
        else ``None``.
    """

    best_value: jax.Array
    best_step: jax.Array
    steps_since_improvement: jax.Array
    count: jax.Array
    should_stop: jax.Array
    best_params: Any = None


class EarlyStopping(NamedTuple):
    """A pair of pure functions returned by :func:`early_stopping`.

    ``init(params=None) -> EarlyStoppingState`` and
    ``update(value, state, params=None) -> EarlyStoppingState``.
    """

    init: Callable[..., EarlyStoppingState]
    update: Callable[..., EarlyStoppingState]


def early_stopping(
    patience: int | jax.Array,
    min_delta: float | jax.Array = 0.0,
    mode: str = "min",
    restore_best: bool = False,
    baseline: float | jax.Array | None = None,
    min_steps: int | jax.Array = 0,
) -> EarlyStopping:
    """Stops training once a monitored value has stopped improving.

    Rule, for each call ``update(value, state, params)`` while
    ``state.should_stop`` is ``False``:

    * ``value`` *improves* when ``value < best_value - min_delta``
      (``mode='min'``) or ``value > best_value + min_delta`` (``mode='max'``).
      A NaN value never improves.
    * On an improvement, ``best_value = value``, ``best_step = count``,
      ``steps_since_improvement = 0`` and, with ``restore_best``,
      ``best_params = params``; otherwise ``steps_since_improvement += 1``.
    * ``count += 1``, then ``should_stop = steps_since_improvement >=
      max(patience, 1) and count >= min_steps``: training stops after
      ``patience`` consecutive updates without improvement (as in Keras'
      ``EarlyStopping``; ``patience=0`` and ``patience=1`` both stop at the first
      update that does not improve).

    Once ``should_stop`` is ``True`` further updates return the state unchanged,
    so a ``lax.scan`` over a fixed number of steps ends with the same state as a
    ``lax.while_loop`` that exits when ``should_stop`` is set.

    Args:
      patience: number of consecutive non-improving updates after which to stop
        (an integer >= 0; may be a traced array).
      min_delta: the smallest change that counts as an improvement (>= 0,
        default 0.0; may be traced).
      mode: ``'min'`` (default) when smaller values are better (a loss),
        ``'max'`` when larger values are better (an accuracy).
      restore_best: if ``True``, the state keeps a copy of the parameters passed
        with the best value in ``state.best_params`` (``init`` and ``update``
        then need ``params``). Default ``False``.
      baseline: the value to beat before anything counts as an improvement
        (default: none, so the first finite value improves).
      min_steps: never set ``should_stop`` before this many updates (default 0).

    Returns:
      An :class:`EarlyStopping` with pure ``init(params=None)`` and
      ``update(value, state, params=None)``.

    Example::

      stopper = early_stopping(patience=5, restore_best=True)
      state = stopper.init(params)
      def cond(carry):
          return ~carry[1].should_stop
      def body(carry):
          params, es = carry
          params = train_epoch(params)
          return params, stopper.update(val_loss(params), es, params)
      params, es = jax.lax.while_loop(cond, body, (params, state))
      params = es.best_params

    References:
      Prechelt, "Early Stopping - But When?", Neural Networks: Tricks of the
      Trade, 1998; ``keras.callbacks.EarlyStopping``;
      ``flax.training.early_stopping``.
    """
    owner = "early_stopping"
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
    if not isinstance(restore_best, bool):
        raise TypeError(f"{owner}: restore_best must be a bool, got {restore_best!r}")
    if patience is None:
        raise ValueError(f"{owner}: patience must be an integer >= 0, got None")
    _checks.check_nonnegative(owner, "patience", patience)
    _checks.check_nonnegative(owner, "min_delta", min_delta)
    _checks.check_nonnegative(owner, "min_steps", min_steps)
    if baseline is not None:
        _checks.check_range(owner, "baseline", baseline)  # rejects NaN

    maximize = mode == "max"

    def init(params: Params | None = None) -> EarlyStoppingState:
        dtype = _default_float()
        if baseline is None:
            best = jnp.asarray(-jnp.inf if maximize else jnp.inf, dtype)
        else:
            best = jnp.asarray(baseline, dtype)
        if restore_best:
            if params is None:
                raise ValueError(f"{owner}: restore_best=True needs init(params) to be given the parameters")
            best_params = jax.tree.map(jnp.asarray, params)
        else:
            best_params = None
        return EarlyStoppingState(
            best_value=best,
            best_step=jnp.asarray(-1, jnp.int32),
            steps_since_improvement=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            should_stop=jnp.zeros([], jnp.bool_),
            best_params=best_params,
        )

    def update(value: Any, state: EarlyStoppingState, params: Params | None = None) -> EarlyStoppingState:
        value = _scalar_value(owner, value, state.best_value.dtype)
        if restore_best:
            if params is None:
                raise ValueError(f"{owner}: restore_best=True needs update(value, state, params)")
            _tree.check_same_structure(params, state.best_params, "params", "state.best_params")
        delta = jnp.asarray(min_delta, value.dtype)
        if maximize:
            improved = value > state.best_value + delta
        else:
            improved = value < state.best_value - delta
        count = state.count
        new_count = _tree.safe_increment(count)
        since = jnp.where(improved, 0, _tree.safe_increment(state.steps_since_improvement)).astype(jnp.int32)
        stop = (since >= jnp.maximum(patience, 1)) & (new_count >= min_steps)
        if restore_best:
            best_params = jax.tree.map(
                lambda new, old: jnp.where(improved, jnp.asarray(new, old.dtype), old), params, state.best_params
            )
        else:
            best_params = state.best_params
        new_state = EarlyStoppingState(
            best_value=jnp.where(improved, value, state.best_value),
            best_step=jnp.where(improved, count, state.best_step).astype(jnp.int32),
            steps_since_improvement=since,
            count=new_count,
            should_stop=jnp.asarray(stop, jnp.bool_),
            best_params=best_params,
        )
        # A stopped state is frozen.
        return jax.tree.map(lambda old, new: jnp.where(state.should_stop, old, new), state, new_state)

    return EarlyStopping(init, update)


# --------------------------------------------------------------------------------------
# Reduce on plateau
# --------------------------------------------------------------------------------------


class ReduceLROnPlateauState(NamedTuple):
    """The state of :func:`reduce_on_plateau` (Optax's field names).

    Attributes:
      scale: the current multiplier of the updates (starts at 1), in the
        lowest floating dtype of the parameters.
      best_value: the best (lowest) averaged value so far (starts at ``+inf``),
        in the highest floating dtype of the parameters.
      plateau_count: evaluations since the last improvement, int32.
      cooldown_count: evaluations left in the current cooldown, int32.
      count: values accumulated since the last evaluation, int32.
      avg_value: the running mean of those values.
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array
    avg_value: jax.Array


def _float_dtypes(params: Params):
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    if not dtypes:
        default = _default_float()
        return default, default
    lowest = min(dtypes, key=lambda d: jnp.dtype(d).itemsize)
    highest = jnp.result_type(*dtypes)
    return lowest, highest


@pytree_factory
def reduce_on_plateau(
    factor: float | jax.Array = 0.1,
    patience: int | jax.Array = 10,
    rtol: float | jax.Array = 1e-4,
    atol: float | jax.Array = 0.0,
    cooldown: int | jax.Array = 0,
    accumulation_size: int | jax.Array = 1,
    min_scale: float | jax.Array = 0.0,
) -> GradientTransformationExtraArgs:
    """Scales the updates down by ``factor`` when the loss stops improving.

    ``update(updates, state, params=None, *, value)`` takes the monitored loss
    as the keyword extra argument ``value`` (in a :func:`~jaxopt_lite.chain`,
    pass ``value=loss`` to the chain's update). Rule:

    * Values are averaged over ``accumulation_size`` consecutive updates; each
      time that many have been seen, the average ``avg`` is *evaluated* and the
      accumulator is reset.
    * An evaluation *improves* when ``avg < best - rtol * |best| - atol``; then
      ``best = avg`` and ``plateau_count = 0``, else ``plateau_count += 1``.
    * During a cooldown (``cooldown_count > 0``) ``plateau_count`` is held at 0
      and ``cooldown_count`` decreases by one. Otherwise, when an evaluation
      does not improve and ``plateau_count >= patience``, the scale becomes
      ``max(scale * factor, min_scale)``, ``plateau_count = 0`` and
      ``cooldown_count = cooldown``.
    * Every update is multiplied by the current (post-evaluation) ``scale``.

    For positive losses and ``patience >= 1`` this is exactly Optax's
    ``optax.contrib.reduce_on_plateau``. Two deliberate differences: Optax's
    threshold ``(1 - rtol) * best - atol`` is wrong for negative losses (it
    lets a worse value count as an improvement), so the relative tolerance
    here uses ``|best|``; and with ``patience=0`` Optax reduces the scale on
    *improving* evaluations, whereas here it reduces it on every evaluation
    that does not improve (PyTorch's meaning of ``patience=0``).

    Args:
      factor: multiplier applied to the scale on a plateau, in (0, 1)
        (default 0.1).
      patience: evaluations without improvement before the scale is reduced
        (>= 0, default 10).
      rtol: relative tolerance for a new best value, in [0, 1] (default 1e-4).
      atol: absolute tolerance for a new best value, >= 0 (default 0.0). At
        least one of ``rtol`` and ``atol`` must be positive.
      cooldown: evaluations to wait after a reduction before counting plateaus
        again (>= 0, default 0).
      accumulation_size: number of values averaged per evaluation (>= 1,
        default 1; use more when ``value`` is a noisy minibatch loss).
      min_scale: the scale never goes below this (>= 0, default 0.0).

    All of them may be traced arrays; concrete values are validated eagerly.

    Returns:
      A :class:`~jaxopt_lite.GradientTransformationExtraArgs` whose state is a
      :class:`ReduceLROnPlateauState`.

    References:
      ``torch.optim.lr_scheduler.ReduceLROnPlateau``;
      ``keras.callbacks.ReduceLROnPlateau``; ``optax.contrib.reduce_on_plateau``.
    """
    owner = "reduce_on_plateau"
    _checks.check_range(owner, "factor", factor, low=0.0, high=1.0, low_open=True, high_open=True)
    _checks.check_nonnegative(owner, "patience", patience)
    _checks.check_range(owner, "rtol", rtol, low=0.0, high=1.0)
    _checks.check_nonnegative(owner, "atol", atol)
    _checks.check_nonnegative(owner, "cooldown", cooldown)
    _checks.check_range(owner, "accumulation_size", accumulation_size, low=1.0)
    _checks.check_nonnegative(owner, "min_scale", min_scale)
    rtol_c, atol_c = _checks.concrete(rtol), _checks.concrete(atol)
    if rtol_c is not None and atol_c is not None and np.any((rtol_c == 0) & (atol_c == 0)):
        raise ValueError(f"{owner}: at least one of rtol and atol must be positive, got rtol={rtol}, atol={atol}")

    def init(params: Params) -> ReduceLROnPlateauState:
        lowest, highest = _float_dtypes(params)
        return ReduceLROnPlateauState(
            scale=jnp.ones([], lowest),
            best_value=jnp.asarray(jnp.inf, highest),
            plateau_count=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], highest),
        )

    def evaluate(state: ReduceLROnPlateauState) -> ReduceLROnPlateauState:
        avg, best = state.avg_value, state.best_value
        threshold = jnp.where(jnp.isfinite(best), best - rtol * jnp.abs(best) - atol, best)
        improved = avg < threshold
        plateau = jnp.where(improved, 0, _tree.safe_increment(state.plateau_count)).astype(jnp.int32)
        in_cooldown = state.cooldown_count > 0
        reduce = (~in_cooldown) & (~improved) & (plateau >= patience)
        scale = jnp.where(reduce, state.scale * factor, state.scale)
        scale = jnp.where(in_cooldown, state.scale, jnp.maximum(scale, min_scale)).astype(state.scale.dtype)
        cooldown_count = jnp.where(
            in_cooldown, state.cooldown_count - 1, jnp.where(reduce, cooldown, 0)
        ).astype(jnp.int32)
        plateau = jnp.where(in_cooldown | reduce, 0, plateau).astype(jnp.int32)
        return ReduceLROnPlateauState(
            scale=scale,
            best_value=jnp.where(improved, avg, best).astype(best.dtype),
            plateau_count=plateau,
            cooldown_count=cooldown_count,
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], avg.dtype),
        )

    def update(
        updates: Updates,
        state: ReduceLROnPlateauState,
        params: Params | None = None,
        *,
        value: Any = None,
        **extra_args: Any,
    ) -> tuple[Updates, ReduceLROnPlateauState]:
        del params, extra_args
        if value is None:
            raise TypeError(
                f"{owner}: update needs the monitored loss as a keyword argument, "
                "e.g. tx.update(grads, state, params, value=loss)"
            )
        value = _scalar_value(owner, value, state.avg_value.dtype)
        new_count = _tree.safe_increment(state.count)
        avg = ((state.count * state.avg_value + value) / new_count).astype(state.avg_value.dtype)
        state = state._replace(avg_value=avg, count=new_count)
        state = jax.lax.cond(new_count >= accumulation_size, evaluate, lambda s: s, state)
        scale = state.scale
        updates = jax.tree.map(lambda g: (scale * g).astype(jnp.result_type(g)), updates)
        return updates, state

    return GradientTransformationExtraArgs(init, update)
