"""Schedule-Free learning (Defazio et al., 2024, "The Road Less Scheduled").

Schedule-Free replaces momentum and the decaying learning-rate schedule by an
interpolation and an online average. With ``z`` the base optimizer's iterate,
``x`` the averaged iterate and ``y`` the point where gradients are taken (the
parameters the training loop holds), step ``t = 1, 2, ...`` is

.. math::

    z_{t+1} = z_t + \\Delta_t \\quad (\\Delta_t \\text{: the base optimizer's update at } y_t),\\qquad
    x_{t+1} = (1 - c_t)\\, x_t + c_t\\, z_{t+1},\\qquad
    y_{t+1} = b_1 x_{t+1} + (1 - b_1) z_{t+1},

with ``c_t = w_t / sum_{k<=t} w_k`` and ``w_t = (max_{k<=t} lr_k) ** weight_lr_power``.
Only ``y`` and ``z`` are stored: ``x = (y - (1 - b1) z) / b1`` is recomputed
(so ``b1`` must be positive). Evaluate the model at ``x``:
:func:`schedule_free_eval_params`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.aliases import sgd
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    with_extra_args_support,
)
from jaxopt_lite.schedules import warmup_constant_schedule
from jaxopt_lite.transforms.adaptive import scale_by_rms
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


class ScheduleFreeState(NamedTuple):
    """Schedule-Free's state: ``b1``, the sum of averaging weights, the step count (from 1), the
    largest learning rate seen, the base optimizer's state and the base iterate ``z``."""

    b1: jax.Array
    weight_sum: jax.Array
    step_count: jax.Array
    max_lr: jax.Array
    base_optimizer_state: Any
    z: Any


def _scalar_dtype(params: Any) -> Any:
    """Scalar accumulators run in the parameters' lowest dtype, but at least float32."""
    return jnp.promote_types(_tree.dtype(params, "lowest"), jnp.float32)


def schedule_free_eval_params(state: ScheduleFreeState, params: Any) -> Any:
    """The averaged iterate ``x = (y - (1 - b1) z) / b1``, where to evaluate the model.

    ``params`` is ``y``, the parameters the training loop updates; ``state`` is
    :func:`schedule_free`'s state (it carries ``b1`` and ``z``).
    """
    b1, z = getattr(state, "b1", None), getattr(state, "z", None)
    if b1 is None or z is None:
        raise ValueError(
            f"schedule_free_eval_params: state must be a ScheduleFreeState (with fields b1 and z), got {type(state)}"
        )
    _tree.check_same_shapes(params, z, "params", "schedule_free state z")
    return jax.tree.map(lambda y, z_: ((y - (1.0 - b1) * z_) / b1).astype(jnp.result_type(y)), params, z)


@alias
def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    weight_lr_power: Scalar = 2.0,
    state_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """Makes ``base_optimizer`` Schedule-Free (see the module docstring for the update).

    Args:
      base_optimizer: the optimizer whose updates move ``z``; turn its momentum off
        (e.g. ``adam(lr, b1=0.0)``): the interpolation replaces it.
      learning_rate: the learning rate (number, array or schedule, with warmup and no
        decay) used for the averaging weights; a schedule is called with the step
        count starting at 1. Pass the same one to ``base_optimizer``.
      b1: interpolation weight in ``(0, 1]`` (``y = b1 x + (1 - b1) z``).
      weight_lr_power: averaging weight ``w_t = max_lr_t ** weight_lr_power``.
      state_dtype: dtype of ``z`` (default: the parameters' dtypes).

    Memory: the base optimizer's plus one buffer (``z``) per parameter. ``update``
    needs ``params``. Evaluate with :func:`schedule_free_eval_params`.
    """
    owner = "schedule_free"
    _checks.check_range(owner, "b1", b1, low=0.0, high=1.0, low_open=True)
    _checks.check_nonnegative(owner, "weight_lr_power", weight_lr_power)
    if not callable(learning_rate):
        _checks.check_learning_rate(owner, learning_rate)
    base_optimizer = with_extra_args_support(base_optimizer)

    def init(params):
        _tree.check_floating(params, owner)
        dtype = _scalar_dtype(params)
        z = jax.tree.map(lambda p: jnp.array(p, dtype=state_dtype or jnp.result_type(p), copy=True), params)
        return ScheduleFreeState(
            b1=jnp.asarray(b1, dtype),
            weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base_optimizer.init(params),
            z=z,
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{owner}: update needs params (the current y iterate)")
        _tree.check_same_shapes(updates, state.z, "updates", f"{owner} state z")
        lr = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr, state.max_lr.dtype))
        weight = max_lr**weight_lr_power
        weight_sum = state.weight_sum + weight
        c = _numerics.safe_div(weight, weight_sum)  # weight_sum == 0 only while every weight was 0
        base_updates, base_state = base_optimizer.update(updates, state.base_optimizer_state, params, **extra_args)
        z = jax.tree.map(lambda z_, u: (z_ + u).astype(z_.dtype), state.z, base_updates)

        def step(y, z_old, z_new, g):
            x = (y - (1.0 - b1) * z_old) / b1
            x = (1.0 - c) * x + c * z_new
            return (b1 * x + (1.0 - b1) * z_new - y).astype(g.dtype)

        new_updates = jax.tree.map(step, params, state.z, z, updates)
        new_state = ScheduleFreeState(
            b1=state.b1,
            weight_sum=weight_sum,
            step_count=_numerics.safe_increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )
        return new_updates, new_state

    return GradientTransformationExtraArgs(init, update)


def _with_warmup(
    owner: str, learning_rate: ScalarOrSchedule, warmup_steps: int | jax.Array | None
) -> ScalarOrSchedule:
    if warmup_steps is None:
        return learning_rate
    if not callable(learning_rate):
        _checks.check_learning_rate(owner, learning_rate)  # the error names the optimizer, not the warmup
    return warmup_constant_schedule(init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps)


@alias
def schedule_free_sgd(
    learning_rate: Scalar = 1.0,
    warmup_steps: int | jax.Array | None = None,
    b1: Scalar = 0.9,
    weight_decay: Scalar | None = None,
    weight_lr_power: Scalar = 2.0,
    state_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """Schedule-Free SGD: :func:`schedule_free` around ``sgd(lr)``.

    ``z <- z - lr_t (g + weight_decay * y)`` (L2 decay on the gradient point ``y``,
    scaled by the learning rate as in PyTorch). ``warmup_steps`` adds a linear
    warmup from 0 (``warmup_constant_schedule``).
    """
    learning_rate = _with_warmup("schedule_free_sgd", learning_rate, warmup_steps)
    base = sgd(learning_rate)
    if weight_decay is not None:
        base = chain(add_decayed_weights(weight_decay), base)
    return schedule_free(base, learning_rate, b1, weight_lr_power, state_dtype)


@alias
def schedule_free_adamw(
    learning_rate: Scalar = 0.0025,
    warmup_steps: int | jax.Array | None = None,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    weight_lr_power: Scalar = 2.0,
    state_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """Schedule-Free AdamW: :func:`schedule_free` around AdamW without momentum.

    ``v <- b2 v + (1-b2) g^2``, ``z <- z - lr_t (g / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * y)``.
    Memory: two buffers per parameter (``v`` and ``z``).
    """
    learning_rate = _with_warmup("schedule_free_adamw", learning_rate, warmup_steps)
    base = chain(
        scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    return schedule_free(base, learning_rate, b1, weight_lr_power, state_dtype)
