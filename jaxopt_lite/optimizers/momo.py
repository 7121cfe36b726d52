"""MoMo (Schaipp et al., 2024, "MoMo: Momentum Models for Adaptive Learning Rates"): SGD-momentum and
Adam with a Polyak-type step size capped by the learning rate. ``update`` needs the loss: ``value=``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformationExtraArgs, ScalarOrSchedule, alias

Scalar = float | jax.Array


class MomoState(NamedTuple):
    """The averaged gradient ``d``, loss ``f_bar``, ``gamma = avg <g, x>``, lower bound and count."""

    exp_avg: Any
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array


class MomoAdamState(NamedTuple):
    """:class:`MomoState` plus Adam's second moment."""

    exp_avg: Any
    exp_avg_sq: Any
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array


def _check_common(owner: str, learning_rate: Any, weight_decay: Any) -> None:
    if not callable(learning_rate):
        _checks.check_learning_rate(owner, learning_rate)
    _checks.check_nonnegative(owner, "weight_decay", weight_decay)


def _scalars(params: Any, lower_bound: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    dtype = jnp.promote_types(_tree.dtype(params, "lowest"), jnp.float32)
    return jnp.zeros([], dtype), jnp.zeros([], dtype), jnp.asarray(lower_bound, dtype)


def _loss_value(owner: str, value: Any, dtype: Any) -> jax.Array:
    if value is None:
        raise ValueError(f"{owner}: update needs the current loss: update(grads, state, params, value=loss)")
    return jnp.asarray(value, dtype)


def _polyak_step(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``max(numerator, 0) / denominator``, 0 (no step) where the denominator is at most machine epsilon."""
    tiny = denominator <= jnp.finfo(denominator.dtype).eps
    return jnp.where(tiny, 0.0, _numerics.safe_div(jnp.maximum(numerator, 0.0), jnp.where(tiny, 1.0, denominator)))


@alias
def momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: Scalar = 0.9,
    lower_bound: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformationExtraArgs:
    """MoMo (Algorithm 1): SGD with momentum and step ``tau = min(lr_k, polyak)``.

    With ``f`` the loss (``value=``), ``alpha = lr_k`` and ``b = 0`` at the first step, ``beta`` after::

        f_bar <- b f_bar + (1-b) f,  d <- b d + (1-b) g,  gamma <- b gamma + (1-b) <g, x>
        polyak = max((1 + alpha wd)(f_bar - lb - gamma) + <d, x>, 0) / ||d||^2
        x_new  = x / (1 + alpha wd) - tau d

    The decay step is Optax's (``optax.contrib.momo``): the paper also divides
    ``tau d`` by ``1 + alpha wd``; the two agree without weight decay.
    ``adapt_lower_bound=True`` estimates ``lb`` online (MoMo*, from ``lower_bound``).
    Memory: one buffer per parameter.
    """
    owner = "momo"
    _check_common(owner, learning_rate, weight_decay)
    _checks.check_decay(owner, "beta", beta)

    def init(params):
        _tree.check_floating(params, owner)
        barf, gamma, lb = _scalars(params, lower_bound)
        return MomoState(_tree.zeros_like(params), barf, gamma, lb, _tree.zero_count())

    def update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        _tree.require_params(owner, updates, params)
        _tree.check_same_shapes(updates, state.exp_avg, "updates", f"{owner} state")
        dtype = state.barf.dtype
        b = jnp.where(state.count == 0, 0.0, beta)
        barf = (b * state.barf + (1 - b) * _loss_value(owner, value, dtype)).astype(dtype)
        exp_avg = _tree.update_moment(updates, state.exp_avg, b, 1)
        gamma = (b * state.gamma + (1 - b) * _tree.vdot(updates, params)).astype(dtype)
        d_norm_sq = _tree.norm(exp_avg, squared=True).astype(dtype)
        inner = _tree.vdot(exp_avg, params).astype(dtype)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        shrink = 1 + alpha * weight_decay
        lb = state.lb
        if adapt_lower_bound:
            cap = shrink * (barf - gamma) + inner
            lb = jnp.where(cap < shrink * state.lb, jnp.maximum(cap / (2 * shrink), lower_bound), state.lb)
        tau = jnp.minimum(alpha, _polyak_step(shrink * (barf - lb - gamma) + inner, d_norm_sq))
        new_updates = jax.tree.map(
            lambda d, p, g: (-(alpha * weight_decay) / shrink * p - tau * d).astype(g.dtype), exp_avg, params, updates
        )
        if adapt_lower_bound:
            lb = jnp.maximum(barf + inner - gamma - 0.5 * tau * d_norm_sq, lower_bound)
        lb = jnp.asarray(lb, dtype) if adapt_lower_bound else state.lb
        return new_updates, MomoState(exp_avg, barf, gamma, lb, _numerics.safe_increment(state.count))

    return GradientTransformationExtraArgs(init, update)


@alias
def momo_adam(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    lower_bound: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformationExtraArgs:
    """MoMo-Adam (Algorithm 3): Adam's direction with step ``tau = min(lr_k / (1 - b1^t), polyak)``.

    With ``D = eps + sqrt(v / (1 - b2^t))``, ``c1 = 1 - b1^t`` and ``f_bar, d, gamma``
    averaged with ``b1`` from 0::

        polyak = max((1 + alpha wd)(f_bar - c1 lb - gamma) + <d, x>, 0) / <d, d / D>
        x_new  = x / (1 + alpha wd) - tau d / D

    (Optax's decay step, as :func:`momo`.)

    Memory: two buffers per parameter.
    """
    owner = "momo_adam"
    _check_common(owner, learning_rate, weight_decay)
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _checks.check_nonnegative(owner, "eps", eps)

    def init(params):
        _tree.check_floating(params, owner)
        barf, gamma, lb = _scalars(params, lower_bound)
        zeros = _tree.zeros_like(params)
        return MomoAdamState(zeros, _tree.zeros_like(params), barf, gamma, lb, _tree.zero_count())

    def update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        _tree.require_params(owner, updates, params)
        _tree.check_same_shapes(updates, state.exp_avg, "updates", f"{owner} state")
        dtype = state.barf.dtype
        count = _numerics.safe_increment(state.count)
        t = count.astype(dtype)
        barf = (b1 * state.barf + (1 - b1) * _loss_value(owner, value, dtype)).astype(dtype)
        exp_avg = _tree.update_moment(updates, state.exp_avg, b1, 1)
        exp_avg_sq = _tree.update_moment(updates, state.exp_avg_sq, b2, 2)
        bc2 = 1 - b2**t
        precond = jax.tree.map(lambda v: eps + _numerics.safe_sqrt(v / bc2), exp_avg_sq)
        weighted = jax.tree.map(_numerics.safe_div, exp_avg, precond)
        d_norm_sq = _tree.vdot(exp_avg, weighted).astype(dtype)
        gamma = (b1 * state.gamma + (1 - b1) * _tree.vdot(updates, params)).astype(dtype)
        inner = _tree.vdot(exp_avg, params).astype(dtype)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        bc1 = 1 - b1**t
        shrink = 1 + alpha * weight_decay
        lb = state.lb
        if adapt_lower_bound:
            cap = shrink * (barf - gamma) + inner
            lb = jnp.where(cap < shrink * bc1 * state.lb, jnp.maximum(cap / (2 * bc1 * shrink), lower_bound), state.lb)
        tau = jnp.minimum(alpha / bc1, _polyak_step(shrink * (barf - bc1 * lb - gamma) + inner, d_norm_sq))
        new_updates = jax.tree.map(
            lambda w, p, g: (-(alpha * weight_decay) / shrink * p - tau * w).astype(g.dtype), weighted, params, updates
        )
        if adapt_lower_bound:
            lb = jnp.asarray(jnp.maximum((barf + inner - gamma - 0.5 * tau * d_norm_sq) / bc1, lower_bound), dtype)
        else:
            lb = state.lb
        return new_updates, MomoAdamState(exp_avg, exp_avg_sq, barf, gamma, lb, count)

    return GradientTransformationExtraArgs(init, update)
