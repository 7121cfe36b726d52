"""Gradient clipping: by value, by per-leaf norm, by global norm, and adaptive (AGC)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, stateless
from jaxopt_lite.fused import reject_fused

ClipState = EmptyState
ClipByGlobalNormState = EmptyState
AdaptiveGradClipState = EmptyState


def clip_factor(norm: jax.Array, max_norm: Any) -> jax.Array:
    """``min(1, max_norm / norm)``, equal to 1 when ``norm`` is 0 (no division by zero)."""
    too_big = norm > max_norm
    safe_norm = jnp.where(too_big, norm, 1.0)
    return jnp.where(too_big, max_norm / safe_norm, 1.0)


def clip(max_delta: float | jax.Array) -> GradientTransformation:
    """Clips every coordinate to ``[-max_delta, max_delta]``.

    ``u <- clip(u, -max_delta, max_delta)``. ``max_delta >= 0``.
    """
    _checks.check_nonnegative("clip", "max_delta", max_delta)
    return stateless(lambda updates, params: _tree.clip(updates, -max_delta, max_delta))


def clip_by_norm(max_norm: float | jax.Array) -> GradientTransformation:
    """Clips each leaf to its own L2 norm: ``u_i <- u_i * min(1, max_norm / ||u_i||)``.

    Every leaf is rescaled independently; see :func:`clip_by_global_norm` to
    treat the whole tree as one vector. ``max_norm >= 0``.
    """
    _checks.check_nonnegative("clip_by_norm", "max_norm", max_norm)

    def leaf(u):
        norm = _tree.global_norm(u)
        return (u * clip_factor(norm, max_norm)).astype(u.dtype)

    def apply(updates, params):
        del params
        reject_fused("clip_by_norm", updates)
        return jax.tree.map(leaf, updates)

    return stateless(apply)


def clip_by_global_norm(max_norm: float | jax.Array) -> GradientTransformation:
    """Clips the whole tree, taken as one vector, to an L2 norm of at most ``max_norm``.

    ``u <- u * min(1, max_norm / ||u||_2)`` with ``||u||_2`` over all leaves,
    accumulated in at least float32 (Pascanu et al., 2013). ``max_norm >= 0``.
    """
    _checks.check_nonnegative("clip_by_global_norm", "max_norm", max_norm)

    def apply(updates, params):
        del params
        factor = clip_factor(_tree.global_norm(updates), max_norm)
        return _tree.scale(factor, updates)

    return stateless(apply)


def unitwise_norm(x: jax.Array) -> jax.Array:
    """L2 norm per output unit, broadcastable to ``x``.

    Scalars and vectors: the norm of the whole leaf. Matrices and kernels:
    the norm over every axis but the last (the output axis: ``(in, out)``
    dense weights, ``HWIO`` convolution kernels).
    """
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if x.ndim <= 1:
        return jnp.sqrt(jnp.sum(jnp.square(x32)))
    return jnp.sqrt(jnp.sum(jnp.square(x32), axis=tuple(range(x.ndim - 1)), keepdims=True))


def adaptive_grad_clip(
    clipping: float | jax.Array, eps: float | jax.Array = 1e-3, axis: int | tuple[int, ...] | None = None
) -> GradientTransformation:
    """Adaptive gradient clipping (AGC, Brock et al., 2021, "High-Performance Large-Scale
    Image Recognition Without Normalization").

    Per unit: ``g <- g * min(1, clipping * max(||w||, eps) / ||g||)`` with norms
    taken unitwise (see :func:`unitwise_norm`), or over ``axis`` when given.
    Needs ``params``. Defaults: ``eps=1e-3``.
    """
    _checks.check_nonnegative("adaptive_grad_clip", "clipping", clipping)
    _checks.check_nonnegative("adaptive_grad_clip", "eps", eps)

    def norm_of(x):
        if axis is None:
            return unitwise_norm(x)
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        return jnp.sqrt(jnp.sum(jnp.square(x32), axis=axis, keepdims=True))

    def leaf(g, p):
        max_norm = clipping * jnp.maximum(norm_of(p), eps)
        return (g * clip_factor(norm_of(g), max_norm)).astype(g.dtype)

    def apply(updates, params):
        if params is None:
            raise ValueError("adaptive_grad_clip: params must be passed to update (the clip is relative to them)")
        reject_fused("adaptive_grad_clip", updates, params)
        _tree.check_same_structure(updates, params, "updates", "params")
        return jax.tree.map(leaf, updates, params)

    return stateless(apply)
