"""Per-block (per-leaf) scaling: clip by block RMS, scale by the parameters' block norm or RMS, normalize by the
update norm, and gradient centralization.

A *block* is one leaf of the update tree: a weight vector, matrix or kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformation, pytree_factory, stateless
from jaxopt_lite.fused import reject_fused


@pytree_factory
def clip_by_block_rms(threshold: float | jax.Array) -> GradientTransformation:
    r"""Clips each block to a root mean square of at most ``threshold``.

    .. math:: u \leftarrow u / \max\left(1, \sqrt{\operatorname{mean}(|u|^2)} / \text{threshold}\right)

    per leaf. ``threshold > 0``.
    """
    _checks.check_positive("clip_by_block_rms", "threshold", threshold)

    def leaf(u):
        rms = jnp.sqrt(jnp.mean(_numerics.abs_sq(u)))
        return (u / jnp.maximum(1.0, rms / threshold)).astype(u.dtype)

    def apply(updates, params):
        reject_fused("clip_by_block_rms", updates, params)
        return jax.tree.map(leaf, updates)

    return stateless(apply)


@pytree_factory
def scale_by_param_block_norm(min_scale: float | jax.Array = 1e-3) -> GradientTransformation:
    r"""Scales each block by the L2 norm of its parameter block: :math:`u \leftarrow u \cdot \max(\|w\|_2,
    \text{min\_scale})`.

    The norm is over the whole leaf (Frobenius for matrices), with a finite gradient at the floor
    (:func:`jaxopt_lite.numerics.safe_norm`). Needs ``params``. Default ``min_scale=1e-3``.
    """
    _checks.check_nonnegative("scale_by_param_block_norm", "min_scale", min_scale)

    def apply(updates, params):
        reject_fused("scale_by_param_block_norm", updates, params)
        _tree.require_params("scale_by_param_block_norm", updates, params, "the scale is computed from them")
        return jax.tree.map(lambda u, p: (u * _numerics.safe_norm(p, min_scale)).astype(u.dtype), updates, params)

    return stateless(apply)


@pytree_factory
def scale_by_param_block_rms(min_scale: float | jax.Array = 1e-3) -> GradientTransformation:
    r"""Scales each block by the root mean square of its parameter block: :math:`u \leftarrow u \cdot
    \max\left(\sqrt{\operatorname{mean}(|w|^2)}, \text{min\_scale}\right)`.

    Needs ``params``. Default ``min_scale=1e-3``.
    """
    _checks.check_nonnegative("scale_by_param_block_rms", "min_scale", min_scale)

    def apply(updates, params):
        reject_fused("scale_by_param_block_rms", updates, params)
        _tree.require_params("scale_by_param_block_rms", updates, params, "the scale is computed from them")
        return jax.tree.map(
            lambda u, p: (u * _numerics.safe_root_mean_squares(p, min_scale)).astype(u.dtype), updates, params
        )

    return stateless(apply)


@pytree_factory
def normalize_by_update_norm(
    scale_factor: float | jax.Array = 1.0, eps: float | jax.Array = 1e-6
) -> GradientTransformation:
    r"""Divides the updates by their global L2 norm:
    :math:`u \leftarrow \text{scale\_factor} \cdot u / (\|u\|_2 + \epsilon)`.

    The norm is over the whole tree. Defaults ``scale_factor=1.0`` (a descent step needs a negative factor or a
    learning rate after it), ``eps=1e-6``.
    """
    _checks.check_nonnegative("normalize_by_update_norm", "eps", eps)

    def apply(updates, params):
        del params
        denominator = (_tree.norm(updates) + eps) / scale_factor
        return jax.tree.map(lambda u: (u / denominator).astype(u.dtype), updates)

    return stateless(apply)


@pytree_factory
def centralize() -> GradientTransformation:
    r"""Gradient centralization (Yong et al., 2020, "Gradient Centralization: A New Optimization Technique for
    Deep Neural Networks").

    For each leaf of rank >= 2, subtracts its mean over every axis but the first:
    :math:`u_{i\ldots} \leftarrow u_{i\ldots} - \operatorname{mean}_{\ldots}(u_{i\ldots})`. Vectors and scalars
    are unchanged.
    """

    def leaf(u):
        if u.ndim < 2:
            return u
        return u - jnp.mean(u, axis=tuple(range(1, u.ndim)), keepdims=True).astype(u.dtype)

    def apply(updates, params):
        reject_fused("centralize", updates, params)  # a flat buffer has no rows to centre
        return jax.tree.map(leaf, updates)

    return stateless(apply)
