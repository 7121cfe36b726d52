"""Per-example gradient clipping, the aggregation step of DP-SGD (Abadi et al., 2016).

These are functions of a batch of per-example gradients (every leaf has the batch on axis 0), not
transformations: each returns the sum of the clipped per-example gradients and how many were clipped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_lite import tree as _tree

Tree = Any


def _check_batched(owner: str, grads: Tree) -> None:
    leaves = jax.tree.leaves(grads)
    shapes = [jnp.shape(g) for g in leaves]
    if not leaves or any(len(s) == 0 or s[0] != shapes[0][0] for s in shapes):
        raise ValueError(
            f"{owner}: every leaf of grads must have the same batch size on axis 0 (per-example gradients), "
            f"got shapes {jax.tree.map(jnp.shape, grads)}"
        )


def _clip_and_sum(grads: Tree, l2_norm_clip: Any) -> tuple[Tree, jax.Array]:
    norms = jax.vmap(_tree.norm)(grads)
    # min(1, C / ||g_i||); an example with a zero gradient (0 / 0 when C == 0) keeps factor 1
    multipliers = jnp.nan_to_num(jnp.minimum(l2_norm_clip / norms, 1.0), nan=1.0)
    clipped_sum = jax.tree.map(lambda g: jnp.tensordot(multipliers, g, axes=1), grads)
    return clipped_sum, jnp.sum(multipliers < 1.0)


def per_example_global_norm_clip(grads: Tree, l2_norm_clip: Any) -> tuple[Tree, jax.Array]:
    r"""Clips each example's gradient to a global L2 norm of at most ``l2_norm_clip``, then sums over examples.

    .. math:: \sum_i g_i \min\left(1, \frac{C}{\|g_i\|_2}\right)

    with :math:`\|g_i\|_2` over all leaves of example :math:`i`. Returns ``(clipped_sum, num_clipped)``.
    """
    _check_batched("per_example_global_norm_clip", grads)
    return _clip_and_sum(grads, l2_norm_clip)


def per_example_layer_norm_clip(
    grads: Tree, global_l2_norm_clip: Any, uniform: bool = True
) -> tuple[Tree, Tree]:
    r"""Clips each example's gradient layer by layer (leaf by leaf), then sums over examples (McMahan et al., 2017).

    Leaf :math:`k` of :math:`K` is clipped to :math:`C_k = C / \sqrt{K}` (``uniform=True``) or
    :math:`C_k = C \sqrt{D_k / D}` with :math:`D_k` its number of parameters per example and :math:`D` the total
    (``uniform=False``); either way :math:`\sum_k C_k^2 = C^2`. Returns ``(clipped_sum, num_clipped)``, both trees
    shaped like ``grads`` (one count per leaf).
    """
    _check_batched("per_example_layer_norm_clip", grads)
    leaves, treedef = jax.tree.flatten(grads)
    if uniform:
        clips = [global_l2_norm_clip * (1.0 / len(leaves)) ** 0.5 for _ in leaves]
    else:
        total = sum(g[0].size for g in leaves)
        clips = [global_l2_norm_clip * (g[0].size / total) ** 0.5 for g in leaves]
    results = [_clip_and_sum(g, c) for g, c in zip(leaves, clips)]
    return treedef.unflatten([r[0] for r in results]), treedef.unflatten([r[1] for r in results])
