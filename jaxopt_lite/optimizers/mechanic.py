"""Mechanic (Cutkosky, Defazio & Mehta, 2023, "Mechanic: A Learning Rate Tuner")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformation, GradientTransformationExtraArgs, alias, with_extra_args_support

Scalar = float | jax.Array


class MechanicState(NamedTuple):
    """The base optimizer's state, the step count, the per-beta tuner accumulators ``r, m, v`` and scales
    ``s`` (each of shape ``(num_betas,)``), and the reference point ``x0``."""

    base_optimizer_state: Any
    count: jax.Array
    r: jax.Array
    m: jax.Array
    v: jax.Array
    s: jax.Array
    x0: Any


@alias
def mechanize(
    base_optimizer: GradientTransformation,
    weight_decay: Scalar = 1e-2,
    eps: Scalar = 1e-8,
    s_init: Scalar = 1e-6,
    num_betas: int = 6,
) -> GradientTransformationExtraArgs:
    """Learns the scale of ``base_optimizer``'s updates (Mechanic, Algorithm 1, memory-light form).

    ``x0`` is the params at the first ``update``. With ``S = sum_i s_i``,
    ``Delta = (x0 - x) / (S + eps)`` (minus the accumulated base updates, recomputed
    rather than stored), ``u_b`` the base update and ``betas_i = 1 - 0.1^i``
    for ``i = 1..num_betas``::

        g'  = g + weight_decay S ||g|| / (||x|| + eps) x
        h   = <g', Delta>
        m_i = max(betas_i m_i, |h| + eps)         v_i = betas_i^2 v_i + h^2
        r_i = betas_i r_i + clip(h, -m_i_old, m_i_old) s_i
        s_i = (s_init / num_betas m_i + max(r_i, 0)) / (sqrt(v_i) + eps)
        x  <- x0 - (sum_i s_i) (Delta - u_b)

    The base optimizer sees the raw gradient; its updates should already include the
    learning rate (use ``1.0`` or a schedule peaking at 1). Memory: the base
    optimizer's plus one buffer per parameter (``x0``). ``update`` needs ``params``.
    """
    owner = "mechanize"
    _checks.check_nonnegative(owner, "weight_decay", weight_decay)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "s_init", s_init)
    if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(f"{owner}: num_betas must be a positive int, got {num_betas!r}")
    base_optimizer = with_extra_args_support(base_optimizer)

    def init(params):
        _tree.check_floating(params, owner, real="Mechanic clips an inner product of updates")
        dtype = jnp.promote_types(_tree.dtype(params, "lowest"), jnp.float32)
        zeros = jnp.zeros([num_betas], dtype)
        return MechanicState(
            base_optimizer_state=base_optimizer.init(params),
            count=_tree.zero_count(),
            r=zeros,
            m=zeros,
            v=zeros,
            s=jnp.full([num_betas], s_init, dtype),
            x0=jax.tree.map(lambda p: p.copy(), params),
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{owner}: update needs params")
        _tree.check_same_shapes(updates, state.x0, "updates", f"{owner} state")
        base_updates, base_state = base_optimizer.update(updates, state.base_optimizer_state, params, **extra_args)
        # Start from the params actually trained (they may be replaced, e.g. by a checkpoint, after init).
        x0 = _tree.where(state.count == 0, params, state.x0)
        dtype = state.s.dtype
        s_sum = jnp.sum(state.s)
        decay = weight_decay * s_sum * _numerics.safe_div(
            _tree.norm(updates).astype(dtype), _tree.norm(params).astype(dtype) + eps
        )
        decayed = jax.tree.map(lambda g, p: g + decay * p, updates, params)
        delta_prev = jax.tree.map(lambda p, p0: _numerics.safe_div(p0 - p, s_sum + eps), params, x0)
        delta = jax.tree.map(lambda d, u: d - u, delta_prev, base_updates)
        h = _tree.vdot(decayed, delta_prev).astype(dtype)
        betas = 1.0 - 0.1 ** jnp.arange(1, num_betas + 1, dtype=dtype)
        clipped_h = jnp.clip(h, -state.m, state.m)
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
        v = betas**2 * state.v + h**2
        r = betas * state.r + clipped_h * state.s
        wealth = s_init / num_betas * m + jnp.maximum(r, 0.0)
        s = _numerics.safe_div(wealth, _numerics.safe_sqrt(v) + eps)
        scale = jnp.sum(s)
        new_updates = jax.tree.map(lambda p0, d, p, g: (p0 - scale * d - p).astype(g.dtype), x0, delta, params, updates)
        return new_updates, MechanicState(base_state, _numerics.safe_increment(state.count), r, m, v, s, x0)

    return GradientTransformationExtraArgs(init, update)
