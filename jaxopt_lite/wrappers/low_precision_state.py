r"""Optimizer state in bfloat16 or float16, computed in float32 and rounded once (stochastically if asked).

:func:`low_precision_state` wraps any gradient transformation and keeps its parameter-shaped floating-point state
(Adam's ``mu`` and ``nu``, Lion's and SGD's momentum, ``MultiSteps``' accumulator, ...) in 2 bytes per entry. Each
:meth:`update` widens every state leaf stored in that dtype to float32, runs the inner transformation in float32
(its step comes from the unrounded new state) and rounds the new state once:

.. math:: s_{t+1} = \operatorname{round}\big(f(\operatorname{f32}(s_t), g_t)\big),

to nearest, or with ``key`` stochastically (:func:`~jaxopt_lite.round_stochastic`: up with probability equal to
the fractional distance, :math:`\mathbb{E}[s_{t+1}] = f(\operatorname{f32}(s_t), g_t)`).

Why stochastically: bfloat16 keeps 8 significant bits, so an EMA ``v <- 0.999 v + 0.001 g^2`` rounded to nearest
cannot change ``v`` by less than half its spacing (:math:`2^{-9} v`): once the gradients settle, ``v`` sticks at
its old value (or creeps only upwards), and Adam's steps drift with it. Rounded stochastically, it follows the EMA
in expectation. ``mu_dtype=jnp.bfloat16`` on the Adam family gives the same float32 arithmetic with rounding to
nearest and no wrapper.

Memory per stored entry: 2 bytes against float32's 4 (Adam: 4 bytes per parameter instead of 8); with ``key``,
one PRNG key in all. Time: one widening and one rounding per stored entry and step; the stochastic rounding adds
16 random bits per entry from a counter-based hash (measured in ``benchmarks/``, update section).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite.base import GradientTransformation, GradientTransformationExtraArgs, alias
from jaxopt_lite.transforms.low_precision import _as_key, _leaf_seeds, _round_stochastic_f32
from jaxopt_lite.wrappers.quantize_state import check_inner, check_min_size, check_state, leaves_like, parameter_shaped

__all__ = ["LowPrecisionState", "low_precision_state"]

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class LowPrecisionState(NamedTuple):
    """The inner state, its stored leaves in bfloat16 or float16, and with stochastic rounding the PRNG key of the
    next step (``None`` with rounding to nearest)."""

    inner_state: Any
    rng_key: Any = None


@alias
def low_precision_state(
    inner: GradientTransformation,
    dtype: Any = jnp.bfloat16,
    *,
    key: Any = None,
    min_size: int = 0,
) -> GradientTransformationExtraArgs:
    r"""``inner`` with its parameter-shaped floating-point state stored in ``dtype`` (2 bytes per entry).

    ``low_precision_state(adamw(1e-3), key=0)`` is AdamW with bfloat16 moments (4 bytes per parameter instead of
    8), updated in float32 and rounded stochastically. Scheme and why: :mod:`jaxopt_lite.wrappers.low_precision_state`.

    Args:
      inner: any gradient transformation (an alias, a ``chain``, ``MultiSteps(...)``, ...).
      dtype: ``jnp.bfloat16`` (default) or ``jnp.float16``. float16 has 3 more significant bits but underflows
        below :math:`6 \cdot 10^{-8}`, where second moments of small gradients live: prefer bfloat16 for them.
      key: ``None`` (default): round to nearest. A PRNG key or an int seed: round stochastically (unbiased); the
        key lives in the state and is split at every step.
      min_size: leaves with fewer entries stay as ``inner`` keeps them.

    Stored leaves: at ``init``, real floating-point leaves of ``inner``'s state shaped like some parameter, with at
    least one axis and ``min_size`` entries, are cast to ``dtype`` (to nearest); counts, keys, scalars (injected
    hyperparameters, step-size estimates) and statistics of other shapes stay as they are. At every ``update``,
    every state leaf in ``dtype`` (those, and any ``inner`` keeps in ``dtype`` itself, such as the moments of
    bfloat16 parameters) is computed in float32 and rounded once.

    Raises ``ValueError`` for ``dtype`` not bfloat16 or float16 and a negative ``min_size``, ``TypeError`` if
    ``inner`` is not a transformation or ``key`` neither a PRNG key nor an int, all naming ``low_precision_state``.
    Works under ``jit``, ``vmap``, ``lax.scan`` and ``jax.eval_shape(init)``; stored leaves keep the parameters'
    shardings.
    """
    owner = "low_precision_state"
    inner = check_inner(owner, inner)
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in _DTYPES:
        raise ValueError(f"{owner}: dtype must be jnp.bfloat16 or jnp.float16, got {dtype!r}")
    min_size = check_min_size(owner, min_size)
    key = None if key is None else _as_key(owner, key, allow_seed=True)

    def init(params):
        stored = parameter_shaped(params, min_size)
        inner_state = jax.tree.map(lambda x: x.astype(dtype) if stored(x) else x, inner.init(params))
        return LowPrecisionState(inner_state=inner_state, rng_key=key)

    def update(updates, state, params=None, **extra_args):
        check_state(owner, state, LowPrecisionState)
        old, treedef = jax.tree.flatten(state.inner_state)
        low = [getattr(x, "dtype", None) == dtype for x in old]
        wide = [x.astype(jnp.float32) if is_low else x for x, is_low in zip(old, low)]
        updates, new_inner = inner.update(updates, treedef.unflatten(wide), params, **extra_args)
        new = leaves_like(owner, treedef, new_inner)
        next_key, seeds = state.rng_key, None
        if key is not None and any(low):
            next_key, step_key = jax.random.split(state.rng_key)
            seeds = _leaf_seeds(step_key, len(low))
        out = []
        for i, (x, is_low) in enumerate(zip(new, low)):
            if is_low:
                x = jnp.asarray(x).astype(jnp.float32)
                x = x if seeds is None else _round_stochastic_f32(x, dtype, seeds[i])
                x = x.astype(dtype)
            out.append(x)
        return updates, LowPrecisionState(inner_state=treedef.unflatten(out), rng_key=next_key)

    return GradientTransformationExtraArgs(init, update)
