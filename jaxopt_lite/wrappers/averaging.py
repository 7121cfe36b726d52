"""Averaging of weights: lookahead's slow weights and an EMA of the parameters."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    pytree_factory,
    with_extra_args_support,
)
from jaxopt_lite.wrappers.accumulation import _check_k

# ----------------------------------------------------------------------------
# Lookahead.
# ----------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: the fast optimizer's state and an int32 ``steps_since_sync``."""

    fast_state: OptState
    steps_since_sync: jax.Array


class LookaheadParams(NamedTuple):
    """The two copies of the parameters lookahead keeps.

    Compute gradients at ``fast``; evaluate (and deploy) ``slow``.
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> "LookaheadParams":
        """Both copies equal to ``params``."""
        return cls(fast=params, slow=params)


@pytree_factory
def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float | jax.Array,
    reset_state: bool = False,
) -> GradientTransformation:
    """Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back").

    The params are a :class:`LookaheadParams` ``(fast, slow)``. Each step runs
    ``fast_optimizer`` on the gradient at ``fast``. Every ``sync_period``-th
    step, after that fast step, the slow weights move toward the fast ones,
    ``slow <- slow + slow_step_size * (fast - slow)``, and the fast weights are
    reset to the new slow weights. ``update`` returns a ``LookaheadParams`` of
    updates doing exactly this under ``apply_updates`` (do not alter them).

    Args:
      fast_optimizer: the inner optimizer.
      sync_period: fast steps per synchronisation, an ``int >= 1``.
      slow_step_size: the slow weights' interpolation factor, in ``[0, 1]``.
      reset_state: re-initialise the fast optimizer's state at every sync
        (default ``False``).

    ``init`` accepts a ``LookaheadParams`` or plain params (taken as the fast
    ones). State: ``LookaheadState(fast_state, steps_since_sync)``.
    """
    _check_k("lookahead", sync_period, "sync_period")
    _checks.check_range("lookahead", "slow_step_size", slow_step_size, low=0.0, high=1.0)
    fast_optimizer = with_extra_args_support(fast_optimizer)

    def init(params):
        fast = params.fast if isinstance(params, LookaheadParams) else params
        return LookaheadState(fast_state=fast_optimizer.init(fast), steps_since_sync=_tree.zero_count())

    def update(updates, state, params=None, **extra_args):
        if not isinstance(params, LookaheadParams):
            raise TypeError(
                "lookahead: update needs params=LookaheadParams(fast=..., slow=...), "
                f"got {type(params).__name__}; start from LookaheadParams.init_synced(params)"
            )
        _tree.check_same_structure(updates, params.fast, "updates", "params.fast")
        fast_updates, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast, **extra_args)
        sync = state.steps_since_sync >= sync_period - 1

        def leaf(f, u, s):
            # After the fast step the fast weights are f + u; at a sync the slow
            # weights move by alpha * (f + u - s) and the fast ones land on them.
            diff = f + u - s
            slow_u = jnp.where(sync, slow_step_size * diff, jnp.zeros_like(diff)).astype(s.dtype)
            fast_u = jnp.where(sync, s + slow_step_size * diff - f, u).astype(u.dtype)
            return fast_u, slow_u

        pairs = jax.tree.map(leaf, params.fast, fast_updates, params.slow)
        treedef = jax.tree.structure(params.fast)
        flat = treedef.flatten_up_to(pairs)
        new_fast = treedef.unflatten([p[0] for p in flat])
        new_slow = treedef.unflatten([p[1] for p in flat])
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(
                lambda cur, new: jnp.where(sync, new, cur).astype(jnp.result_type(cur)), fast_state, fresh
            )
        steps = jnp.where(sync, 0, _tree.safe_increment(state.steps_since_sync)).astype(jnp.int32)
        return LookaheadParams(fast=new_fast, slow=new_slow), LookaheadState(fast_state, steps)

    return GradientTransformationExtraArgs(init, update)

# ----------------------------------------------------------------------------
# Exponential moving average of the parameters (weight averaging).
# ----------------------------------------------------------------------------


class ParamsEMAState(NamedTuple):
    """State of :func:`params_ema`.

    Attributes:
      count: int32 number of :meth:`ParamsEMA.update` calls so far.
      ema: the running average of the parameters (the params' structure; each
        leaf in the accumulator dtype, by default the parameter's own dtype).
    """

    count: jax.Array
    ema: Params


class ParamsEMA(NamedTuple):
    """An exponential moving average of the parameters: pure ``init``/``update``/``average``.

    Built by :func:`params_ema`; see there. All three are pure functions of
    their arguments and can be jitted.
    """

    init: Callable[[Params], ParamsEMAState]
    update: Callable[[Params, ParamsEMAState], tuple[Params, ParamsEMAState]]
    average: Callable[[ParamsEMAState, Params], Params]


def params_ema(
    decay: float | Callable[[jax.Array], jax.Array] = 0.999,
    *,
    overwrite_every: int | None = None,
    accumulator_dtype: Any = None,
) -> ParamsEMA:
    """Polyak/EMA weight averaging of the parameters, kept beside the optimizer.

    Usage, once per training step after the optimizer step::

        ema = params_ema(0.999)
        ema_state = ema.init(params)
        ...
        params = apply_updates(params, updates)
        params, ema_state = ema.update(params, ema_state)
        eval_params = ema.average(ema_state, params)

    ``init(params)`` starts the average at ``params`` (so no bias correction is
    needed) with ``count = 0``. ``update(params, state)`` returns
    ``(params_out, new_state)`` with::

        ema <- decay * ema + (1 - decay) * params,   count <- count + 1

    and ``params_out`` equal to ``params``, except that if ``overwrite_every``
    is an int ``N`` then every ``N``-th update (``count % N == 0``) replaces the
    live parameters by the new average (Keras' ``use_ema`` with
    ``ema_overwrite_frequency``). ``average(state, like)`` returns the average
    cast to the dtypes of ``like`` (pass the params; omit to get the raw
    accumulator).

    Args:
      decay: the weight of the old average, in ``[0, 1]``, default ``0.999``;
        or a schedule (function of the int32 ``count`` before the update),
        e.g. ``lambda t: jnp.minimum(0.999, (1 + t) / (10 + t))`` for a warm-up.
      overwrite_every: ``None`` (default: never touch the live params) or a
        positive int.
      accumulator_dtype: dtype of the average (e.g. ``jnp.float32`` for
        bfloat16 params); default each parameter's dtype.
    """
    _checks.check_range("params_ema", "decay", decay, low=0.0, high=1.0)
    if overwrite_every is not None:
        _check_k("params_ema", overwrite_every, "overwrite_every")
    acc_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

    def init(params):
        ema = jax.tree.map(lambda p: jnp.asarray(p).astype(_tree.accumulator_dtype(p, acc_dtype)), params)
        return ParamsEMAState(count=_tree.zero_count(), ema=ema)

    def update(params, state):
        _tree.check_same_structure(params, state.ema, "params", "state.ema")
        d = decay(state.count) if callable(decay) else decay
        ema = jax.tree.map(
            lambda p, e: (d * e + (1.0 - d) * p.astype(e.dtype)).astype(e.dtype), params, state.ema
        )
        count = _tree.safe_increment(state.count)
        if overwrite_every is not None:
            overwrite = count % overwrite_every == 0
            params = jax.tree.map(
                lambda p, e: jnp.where(overwrite, e.astype(jnp.result_type(p)), p), params, ema
            )
        return params, ParamsEMAState(count=count, ema=ema)

    def average(state, like=None):
        if like is None:
            return state.ema
        return _tree.cast_like(state.ema, like)

    return ParamsEMA(init=init, update=update, average=average)


# ----------------------------------------------------------------------------
# swa: the uniform (stochastic weight) average
# ----------------------------------------------------------------------------


class SWAState(NamedTuple):
    """State of :func:`swa`.

    Attributes:
      count: int32 number of :meth:`SWA.update` calls so far.
      n_averaged: int32 number of parameter snapshots in the average.
      average: their mean (the params' structure; each leaf in the accumulator
        dtype, by default the parameter's own dtype); the live params until the
        first snapshot.
    """

    count: jax.Array
    n_averaged: jax.Array
    average: Params


class SWA(NamedTuple):
    """The uniform average of parameter snapshots: pure ``init``/``update``/``average`` (see :func:`swa`)."""

    init: Callable[[Params], SWAState]
    update: Callable[[Params, SWAState], tuple[Params, SWAState]]
    average: Callable[[SWAState, Params], Params]


def swa(start_step: int | jax.Array = 0, every: int | jax.Array = 1, *, accumulator_dtype: Any = None) -> SWA:
    """Stochastic weight averaging (Izmailov et al., 2018): the uniform mean of the parameters from a step on.

    Used like :func:`params_ema`, once per step after the optimizer step::

        averager = swa(start_step=1000, every=10)
        swa_state = averager.init(params)
        ...
        params = apply_updates(params, updates)
        params, swa_state = averager.update(params, swa_state)
        eval_params = averager.average(swa_state, params)

    The ``k``-th ``update`` (``k = count + 1``) takes a snapshot when
    ``k >= start_step`` and ``(k - start_step) % every == 0``; with ``n``
    snapshots so far::

        average <- average + (params - average) / (n + 1),   n <- n + 1

    so ``average`` is exactly the mean of the snapshots (before the first one it
    follows the live params). ``params`` pass through unchanged. Refresh
    batch-norm statistics for the averaged weights yourself, as with
    ``torch.optim.swa_utils``, whose ``AveragedModel`` this matches. Memory: one
    buffer per parameter.

    Args:
      start_step: the first update counted (default 0: every update); may be traced.
      every: the spacing of snapshots (default 1); may be traced.
      accumulator_dtype: dtype of the average (e.g. ``jnp.float32`` for bfloat16
        params); default each parameter's dtype.
    """
    _checks.check_nonnegative("swa", "start_step", start_step)
    _checks.check_positive("swa", "every", every)
    acc_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

    def init(params):
        average = jax.tree.map(lambda p: jnp.asarray(p).astype(_tree.accumulator_dtype(p, acc_dtype)), params)
        return SWAState(count=_tree.zero_count(), n_averaged=_tree.zero_count(), average=average)

    def update(params, state):
        _tree.check_same_shapes(params, state.average, "params", "swa state")
        count = _tree.safe_increment(state.count)
        since = count - start_step
        snapshot = (since >= 0) & (since % every == 0)

        def leaf(p, a):
            p = p.astype(a.dtype)
            base = jnp.where(state.n_averaged == 0, p, a)  # the live params until the first snapshot
            real = jnp.finfo(a.dtype).dtype
            weight = jnp.where(snapshot, 1 / (state.n_averaged.astype(real) + 1), 0).astype(real)
            return (base + weight * (p - base)).astype(a.dtype)

        average = jax.tree.map(leaf, params, state.average)
        n_averaged = jnp.where(snapshot, _tree.safe_increment(state.n_averaged), state.n_averaged)
        return params, SWAState(count=count, n_averaged=n_averaged, average=average)

    def average(state, like=None):
        if like is None:
            return state.average
        return _tree.cast_like(state.average, like)

    return SWA(init=init, update=update, average=average)
