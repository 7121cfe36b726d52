"""Prodigy (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformationExtraArgs, ScalarOrSchedule, alias

Scalar = float | jax.Array


class ProdigyState(NamedTuple):
    """Adam's moments of ``d * g``, the weighted gradient sum ``s``, the initial point, the distance
    estimate ``d`` (``estim_lr``), the weighted numerator of ``d``'s estimate, and the step count."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


def _scalar_dtype(params: Any) -> Any:
    """Scalar accumulators run in the parameters' lowest dtype, but at least float32."""
    return jnp.promote_types(_tree.dtype(params, "lowest"), jnp.float32)


@alias
def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    beta3: Scalar | None = None,
    eps: Scalar = 1e-8,
    estim_lr0: Scalar = 1e-6,
    estim_lr_coef: Scalar = 1.0,
    weight_decay: Scalar = 0.0,
    safeguard_warmup: bool = False,
) -> GradientTransformationExtraArgs:
    """Prodigy: AdamW whose learning rate ``d`` estimates the distance to the solution.

    With ``x_0`` the initial parameters, ``lr_t`` the schedule (called with the step
    count from 0), ``d_t`` the current estimate and ``t`` counting from 1::

        dlr   = d_t lr_t sqrt(1 - b2^t) / (1 - b1^t)
        m    <- b1 m + (1 - b1) d_t g           v <- b2 v + (1 - b2) d_t^2 g^2
        s    <- b3 s + (dlr / d0) d_t g         (d_t^2 / d0) g with safeguard_warmup
        r    <- b3 r + (d_t / d0) dlr <g, x_0 - x>
        d_t+1 = max(d_t, estim_lr_coef * r / ||s||_1)
        u     = -dlr (m / (sqrt(v) + d_t+1 eps) + weight_decay x)

    (``d0 = estim_lr0``, ``b3 = sqrt(b2)`` by default). The estimate keeps ``d`` when
    ``||s||_1 == 0`` (every gradient zero so far, or a warmup starting at
    ``lr = 0``), where Optax's 0/0 makes every later step ``nan``.

    Memory: four buffers per parameter (``m``, ``v``, ``s``, ``x_0``). The schedule
    multiplies ``d``: use ``learning_rate=1.0`` or a schedule peaking at 1.
    ``update`` needs ``params``.
    """
    owner = "prodigy"
    beta1, beta2 = betas
    _checks.check_decay(owner, "betas[0]", beta1)
    _checks.check_decay(owner, "betas[1]", beta2)
    if beta3 is None:
        beta3 = beta2**0.5
    _checks.check_decay(owner, "beta3", beta3)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_positive(owner, "estim_lr0", estim_lr0)
    _checks.check_nonnegative(owner, "estim_lr_coef", estim_lr_coef)
    _checks.check_nonnegative(owner, "weight_decay", weight_decay)
    if not callable(learning_rate):
        _checks.check_learning_rate(owner, learning_rate)

    def init(params):
        _tree.check_floating(params, owner)
        dtype = _scalar_dtype(params)
        return ProdigyState(
            exp_avg=_tree.zeros_like(params),
            exp_avg_sq=_tree.zeros_like(params),
            grad_sum=_tree.zeros_like(params),
            params0=jax.tree.map(lambda p: p.copy(), params),
            estim_lr=jnp.asarray(estim_lr0, dtype),
            numerator_weighted=jnp.zeros([], dtype),
            count=_tree.zero_count(),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        _tree.require_params(owner, updates, params)
        _tree.check_same_shapes(updates, state.exp_avg, "updates", f"{owner} state")
        d = state.estim_lr
        count = _numerics.safe_increment(state.count)
        t = count.astype(d.dtype)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        dlr = (d * lr * jnp.sqrt(1 - beta2**t) / (1 - beta1**t)).astype(d.dtype)
        distance_gain = _tree.vdot(updates, _tree.sub(state.params0, params))
        sum_scale = (d if safeguard_warmup else dlr) / estim_lr0

        def moments(m, v, s, g):
            dg = d * g
            return (
                (beta1 * m + (1 - beta1) * dg).astype(m.dtype),
                (beta2 * v + (1 - beta2) * dg * dg).astype(v.dtype),
                (beta3 * s + sum_scale * dg).astype(s.dtype),
            )

        triples = jax.tree.map(moments, state.exp_avg, state.exp_avg_sq, state.grad_sum, updates)
        outer = jax.tree.structure(updates)
        exp_avg, exp_avg_sq, grad_sum = jax.tree.transpose(outer, jax.tree.structure((0, 0, 0)), triples)
        numerator = (beta3 * state.numerator_weighted + (d / estim_lr0) * dlr * distance_gain).astype(d.dtype)
        denominator = _tree.norm(grad_sum, ord=1)
        new_d = jnp.maximum(d, (estim_lr_coef * _numerics.safe_div(numerator, denominator)).astype(d.dtype))

        def step(m, v, p, g):
            adam = _numerics.safe_div(m, _numerics.safe_sqrt(v) + new_d * eps)
            return (-dlr * (adam + weight_decay * p)).astype(g.dtype)

        new_updates = jax.tree.map(step, exp_avg, exp_avg_sq, params, updates)
        return new_updates, ProdigyState(exp_avg, exp_avg_sq, grad_sum, state.params0, new_d, numerator, count)

    return GradientTransformationExtraArgs(init, update)
