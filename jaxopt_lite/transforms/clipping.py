"""Gradient clipping: by value, by per-leaf norm, by global norm, and adaptive (AGC)."""

from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks, numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, pytree_factory, stateless
from jaxopt_lite.fused import reject_fused

ClipState = EmptyState
ClipByGlobalNormState = EmptyState
AdaptiveGradClipState = EmptyState


def clip_factor(norm: jax.Array, max_norm: Any) -> jax.Array:
    """``min(1, max_norm / norm)``, equal to 1 when ``norm`` is 0 (no division by zero)."""
    too_big = norm > max_norm
    safe_norm = jnp.where(too_big, norm, 1.0)
    return jnp.where(too_big, max_norm / safe_norm, 1.0)


def clip_scales(scale: jax.Array, root: jax.Array, max_norm: Any) -> tuple[jax.Array, jax.Array]:
    """``(r, f)`` with ``u * min(1, max_norm / norm) == (u * r) * f`` for ``norm = scale * root``.

    For gradients near the dtype's maximum the norm itself overflows and
    ``max_norm / norm`` underflows; ``scale`` (1 unless the norm was rescaled,
    see :func:`numerics.scaled_norms`) is then divided out in two halves,
    ``r = 1 / sqrt(scale)``: ``1 / scale`` alone would be subnormal, which
    XLA's vectorized CPU division flushes to zero.
    """
    too_big = scale * root > max_norm
    factor = jnp.where(too_big, max_norm / jnp.where(too_big, root, 1.0), 1.0)
    r = jnp.where(too_big & (scale != 1), jax.lax.rsqrt(scale), 1.0)  # exactly 1 on the usual path
    return r, factor * r


@pytree_factory
def clip(max_delta: float | jax.Array) -> GradientTransformation:
    """Clips every coordinate to ``[-max_delta, max_delta]``.

    ``u <- clip(u, -max_delta, max_delta)``. ``max_delta >= 0``.
    """
    _checks.check_nonnegative("clip", "max_delta", max_delta)
    return stateless(lambda updates, params: _tree.clip(updates, -max_delta, max_delta))


@pytree_factory
def clip_by_norm(max_norm: float | jax.Array) -> GradientTransformation:
    """Clips each leaf to its own L2 norm: ``u_i <- u_i * min(1, max_norm / ||u_i||)``.

    Every leaf is rescaled independently; see :func:`clip_by_global_norm` to
    treat the whole tree as one vector. ``max_norm >= 0``. Norms are
    overflow-safe and use ``|z|`` for complex entries.
    """
    _checks.check_nonnegative("clip_by_norm", "max_norm", max_norm)

    def apply(updates, params):
        del params
        reject_fused("clip_by_norm", updates)
        leaves, treedef = jax.tree.flatten(updates)
        scales = [clip_scales(s, r, max_norm) for s, r in numerics.scaled_norms(leaves)]
        return treedef.unflatten([((u * r) * f).astype(u.dtype) for u, (r, f) in zip(leaves, scales)])

    return stateless(apply)


@pytree_factory
def clip_by_global_norm(max_norm: float | jax.Array) -> GradientTransformation:
    """Clips the whole tree, taken as one vector, to an L2 norm of at most ``max_norm``.

    ``u <- u * min(1, max_norm / ||u||_2)`` with ``||u||_2`` over all leaves,
    accumulated in at least float32 (Pascanu et al., 2013). ``max_norm >= 0``.
    The norm is overflow-safe, so gradients near the dtype's maximum are scaled
    down along their direction, not to zero.
    """
    _checks.check_nonnegative("clip_by_global_norm", "max_norm", max_norm)

    def apply(updates, params):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        r, f = clip_scales(*numerics.scaled_global_norm(leaves), max_norm)  # once for the whole tree
        return treedef.unflatten([((u * r) * f).astype(u.dtype) for u in leaves])

    return stateless(apply)


def _unit_axes(x: jax.Array, axis: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """The axes :func:`unitwise_norm` reduces: ``axis`` if given, else all for ``ndim <= 1``, else all but the last."""
    if axis is not None:
        return (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(range(x.ndim)) if x.ndim <= 1 else tuple(range(x.ndim - 1))


def unitwise_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """L2 norm per output unit, broadcast to the shape of ``x`` (as Optax).

    With ``axis``, the norm over those axes. Without: scalars and vectors, the
    norm of the whole leaf; matrices and kernels, the norm over every axis but
    the last (the output axis: ``(in, out)`` dense weights, ``HWIO`` and
    ``DHWIO`` convolution kernels, and, unlike Optax, rank-3 ``(in, heads, out)``
    leaves too). Computed in at least float32, overflow-safe, ``|z|`` for complex.
    """
    x = jnp.asarray(x)
    (norm,) = numerics.norms([x], [_unit_axes(x, axis)])
    return jnp.broadcast_to(norm, x.shape)


def unitwise_clip(g_norm: jax.Array, max_norm: jax.Array, grad: jax.Array, div_eps: Any = 1e-6) -> jax.Array:
    """``grad`` where ``g_norm < max_norm``, else ``grad * max_norm / max(g_norm, div_eps)`` (Optax's AGC step).

    All three arrays have the same shape (norms broadcast, as :func:`unitwise_norm` returns them).
    """
    if not (jnp.shape(g_norm) == jnp.shape(max_norm) == jnp.shape(grad)):
        raise ValueError(
            f"unitwise_clip: g_norm, max_norm and grad must have the same shape, got "
            f"{jnp.shape(g_norm)}, {jnp.shape(max_norm)} and {jnp.shape(grad)}"
        )
    clipped = grad * (max_norm / jnp.maximum(g_norm, div_eps))
    return jnp.where(g_norm < max_norm, grad, clipped).astype(jnp.result_type(grad))


@pytree_factory
def adaptive_grad_clip(
    clipping: float | jax.Array, eps: float | jax.Array = 1e-3, axis: int | tuple[int, ...] | None = None
) -> GradientTransformation:
    """Adaptive gradient clipping (AGC, Brock et al., 2021, "High-Performance Large-Scale
    Image Recognition Without Normalization").

    Per unit: ``g <- g * min(1, clipping * max(||w||, eps) / ||g||)`` with norms
    taken unitwise (see :func:`unitwise_norm`), or over ``axis`` when given.
    Norms are overflow-safe (huge gradients are scaled down, not zeroed).
    Needs ``params``. Defaults: ``eps=1e-3``.
    """
    _checks.check_nonnegative("adaptive_grad_clip", "clipping", clipping)
    _checks.check_nonnegative("adaptive_grad_clip", "eps", eps)

    def apply(updates, params):
        _tree.require_params("adaptive_grad_clip", updates, params, "the clip is relative to them")
        reject_fused("adaptive_grad_clip", updates, params)
        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = jax.tree.leaves(params)
        axes = [_unit_axes(jnp.asarray(g), axis) for g in g_leaves]
        unit_norms = numerics.scaled_norms(g_leaves + p_leaves, axes + axes)
        g_norms, p_norms = unit_norms[: len(g_leaves)], unit_norms[len(g_leaves):]
        out = [
            ((g * r) * f).astype(g.dtype)
            for g, gn, (ps, pr) in zip(g_leaves, g_norms, p_norms)
            for r, f in [clip_scales(*gn, clipping * jnp.maximum(ps * pr, eps))]
        ]
        return treedef.unflatten(out)

    return stateless(apply)
