"""D-Adaptation AdamW (Defazio & Mishchenko, 2023, "Learning-Rate-Free Learning by D-Adaptation")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformationExtraArgs, ScalarOrSchedule, alias

Scalar = float | jax.Array


class DAdaptAdamWState(NamedTuple):
    """Adam's moments (the first one of ``dlr * g``), the weighted gradient sum ``s``, the
    distance estimate ``d`` (``estim_lr``), the weighted numerator of its estimate, and the count."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


@alias
def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    estim_lr0: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
) -> GradientTransformationExtraArgs:
    """D-Adapt AdamW: AdamW whose learning rate ``d`` estimates the distance to the solution.

    With ``lr_t`` the schedule (called with the step count from 0), ``d_t`` the current
    estimate, ``t`` counting from 1 and ``sb2 = sqrt(b2)``::

        dlr   = d_t lr_t sqrt(1 - b2^t) / (1 - b1^t)
        r    <- sb2 r + (1 - sb2) dlr <g, s / (sqrt(v) + eps)>      (the old s and v)
        m    <- b1 m + (1 - b1) dlr g        v <- b2 v + (1 - b2) g^2
        s    <- sb2 s + (1 - sb2) dlr g
        d_t+1 = max(d_t, r / ((1 - sb2) ||s||_1))
        u     = -m / (sqrt(v) + eps) - weight_decay dlr x

    (``d_0 = estim_lr0``). ``d`` is kept when ``||s||_1 == 0`` (every gradient zero so
    far, or a warmup starting at ``lr = 0``), where Optax's 0/0 makes every later
    step ``nan``. Memory: three buffers per parameter. ``update`` needs ``params``.
    """
    owner = "dadapt_adamw"
    beta1, beta2 = betas
    _checks.check_decay(owner, "betas[0]", beta1)
    _checks.check_decay(owner, "betas[1]", beta2)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_positive(owner, "estim_lr0", estim_lr0)
    _checks.check_nonnegative(owner, "weight_decay", weight_decay)
    if not callable(learning_rate):
        _checks.check_learning_rate(owner, learning_rate)

    def init(params):
        _tree.check_floating(params, owner)
        dtype = jnp.promote_types(_tree.dtype(params, "lowest"), jnp.float32)
        return DAdaptAdamWState(
            exp_avg=_tree.zeros_like(params),
            exp_avg_sq=_tree.zeros_like(params),
            grad_sum=_tree.zeros_like(params),
            estim_lr=jnp.asarray(estim_lr0, dtype),
            numerator_weighted=jnp.zeros([], dtype),
            count=_tree.zero_count(),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        _tree.require_params(owner, updates, params)
        _tree.check_same_shapes(updates, state.exp_avg, "updates", f"{owner} state")
        d = state.estim_lr
        sb2 = beta2**0.5
        count = _numerics.safe_increment(state.count)
        t = count.astype(d.dtype)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        dlr = (d * lr * jnp.sqrt(1 - beta2**t) / (1 - beta1**t)).astype(d.dtype)
        weighted_sum = jax.tree.map(
            lambda s, v: _numerics.safe_div(s, _numerics.safe_sqrt(v) + eps), state.grad_sum, state.exp_avg_sq
        )
        gain = _tree.vdot(updates, weighted_sum)

        def moments(m, v, s, g):
            return (
                (beta1 * m + (1 - beta1) * dlr * g).astype(m.dtype),
                (beta2 * v + (1 - beta2) * g * g).astype(v.dtype),
                (sb2 * s + (1 - sb2) * dlr * g).astype(s.dtype),
            )

        triples = jax.tree.map(moments, state.exp_avg, state.exp_avg_sq, state.grad_sum, updates)
        exp_avg, exp_avg_sq, grad_sum = jax.tree.transpose(
            jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), triples
        )
        numerator = (sb2 * state.numerator_weighted + (1 - sb2) * dlr * gain).astype(d.dtype)
        denominator = (1 - sb2) * _tree.norm(grad_sum, ord=1)
        new_d = jnp.maximum(d, _numerics.safe_div(numerator, denominator).astype(d.dtype))

        def step(m, v, p, g):
            return (-_numerics.safe_div(m, _numerics.safe_sqrt(v) + eps) - weight_decay * dlr * p).astype(g.dtype)

        new_updates = jax.tree.map(step, exp_avg, exp_avg_sq, params, updates)
        return new_updates, DAdaptAdamWState(exp_avg, exp_avg_sq, grad_sum, new_d, numerator, count)

    return GradientTransformationExtraArgs(init, update)
