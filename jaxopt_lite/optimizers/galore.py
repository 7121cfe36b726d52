"""GaLore (Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection").

Each matrix gradient ``G`` (``m x n``) is projected on the top-``r`` singular subspace of a
recent gradient, a base optimizer (Adam by default) runs on the small projected gradient,
and its update is projected back: optimizer state of ``r x n`` (or ``m x r``) per matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
)
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.transforms.adaptive import scale_by_adam
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a weight form the projected matrix: ``reduction_axis`` become its rows and
    ``output_axis`` its columns (each an axis or a sequence, flattened together). Every axis must
    be named in one of them."""

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


class GaLoreState(NamedTuple):
    """Step ``count``, the base optimizer's state (over the projected gradients) and one
    projector per leaf (``(0, 0)`` for leaves that are not projected)."""

    count: jax.Array
    base_optimizer_state: Any
    projector: Any


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, GaLoreDimensionNumbers)


class _View(NamedTuple):
    transpose: tuple[int, ...]
    rows: int
    cols: int


def _view(shape: tuple[int, ...], dim_nums: GaLoreDimensionNumbers) -> _View:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"scale_by_galore: GaLore projects tensors of rank >= 2, got shape {shape}")

    def axes(a):
        return tuple(x % ndim for x in ((a,) if isinstance(a, int) else a))

    red, out = axes(dim_nums.reduction_axis), axes(dim_nums.output_axis)
    if set(red) & set(out) or len(set(red) | set(out)) != ndim:
        raise ValueError(
            f"scale_by_galore: dimension numbers {dim_nums} for shape {shape} must split every axis into "
            "disjoint reduction and output axes"
        )
    return _View(red + out, math.prod(shape[a] for a in red), math.prod(shape[a] for a in out))


def _to_matrix(x: jax.Array, view: _View) -> jax.Array:
    return x.transpose(view.transpose).reshape(view.rows, view.cols)


def _from_matrix(m: jax.Array, view: _View, shape: tuple[int, ...]) -> jax.Array:
    permuted = tuple(shape[a] for a in view.transpose)
    return m.reshape(permuted).transpose(tuple(int(a) for a in np.argsort(view.transpose)))


@pytree_factory
def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int | jax.Array = 200,
    scale: float | jax.Array = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_dimension_numbers: Any = None,
) -> GradientTransformation:
    """GaLore's direction: the base optimizer's update in a low-rank subspace, projected back.

    For a matrix gradient ``G`` (``m x n``), ``r = min(rank, m, n)``. Every ``update_proj_gap``
    steps (at steps 0, k, 2k, ...) the projector is refreshed from the SVD ``G = U S V^T``
    (computed in at least float32): ``P = U[:, :r]`` if ``m >= n`` (then ``R = P^T G``, ``r x n``),
    else ``P = V[:, :r]`` (``R = G P``, ``m x r``). The base optimizer (default
    ``scale_by_adam()``) maps ``R`` to ``N``, and the output is ``scale * P N`` (or
    ``scale * N P^T``). Leaves that are not projected go through the base optimizer unchanged.

    ``weight_dimension_numbers``: ``None`` (2-D leaves projected, others not), one
    :class:`GaLoreDimensionNumbers` for every leaf of rank >= 2, a tree of them / ``None``
    (a prefix of the params), or a function of the params returning one. The base optimizer
    sees no params (``None``). Defaults (Optax's): ``rank=128, update_proj_gap=200, scale=1``.
    """
    owner = "scale_by_galore"
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{owner}: rank must be an int (it sets the state's shapes), got {type(rank).__name__}")
    if rank <= 0:
        raise ValueError(f"{owner}: rank must be positive, got {rank}")
    _checks.check_positive(owner, "update_proj_gap", update_proj_gap)
    base = base_optimizer if base_optimizer is not None else scale_by_adam()

    def dim_nums_of(tree):
        if weight_dimension_numbers is None:
            return jax.tree.map(lambda p: GaLoreDimensionNumbers() if jnp.ndim(p) == 2 else None, tree)
        if callable(weight_dimension_numbers):
            return weight_dimension_numbers(tree)
        if isinstance(weight_dimension_numbers, GaLoreDimensionNumbers):
            return jax.tree.map(lambda p: weight_dimension_numbers if jnp.ndim(p) >= 2 else None, tree)
        return weight_dimension_numbers

    def per_leaf(tree):
        """``(dim_nums or None)`` for each leaf of ``tree``, in order."""
        spec = dim_nums_of(tree)
        specs, treedef = jax.tree.flatten(spec, is_leaf=_is_spec)
        try:
            subtrees = treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{owner}: weight_dimension_numbers must have the tree structure of the params (or a prefix), but\n"
                f"  weight_dimension_numbers: {_tree._describe(spec)}\n  params: {_tree._describe(tree)}"  # noqa: SLF001
            ) from e
        return [s for s, sub in zip(specs, subtrees) for _ in jax.tree.leaves(sub)]

    def shapes(p, dn):
        """The projector and the projected gradient of one leaf (zeros: only shapes and dtypes matter)."""
        if dn is None:
            return jnp.zeros((0, 0), p.dtype), _tree.zeros_like(p)
        view = _view(p.shape, dn)
        r = min(rank, view.rows, view.cols)
        if view.rows >= view.cols:
            return jnp.zeros((view.rows, r), p.dtype), jnp.zeros((r, view.cols), p.dtype)
        return jnp.zeros((view.cols, r), p.dtype), jnp.zeros((view.rows, r), p.dtype)

    def init(params):
        reject_fused(owner, params)  # projects each matrix: a fused buffer is flat
        _tree.check_floating(params, owner)
        leaves, treedef = jax.tree.flatten(params)
        pairs = [shapes(p, dn) for p, dn in zip(leaves, per_leaf(params))]
        projectors = jax.tree.unflatten(treedef, [a for a, _ in pairs])
        projected = jax.tree.unflatten(treedef, [b for _, b in pairs])
        return GaLoreState(count=_tree.zero_count(), base_optimizer_state=base.init(projected), projector=projectors)

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        del params
        refresh = state.count % update_proj_gap == 0
        leaves, treedef = jax.tree.flatten(updates)
        dim_nums = per_leaf(updates)
        old_projectors = treedef.flatten_up_to(state.projector)
        views, projectors, projected = [], [], []
        for g, old, dn in zip(leaves, old_projectors, dim_nums):
            if dn is None:
                views.append(None)
                projectors.append(old)
                projected.append(g)
                continue
            view = _view(g.shape, dn)
            matrix = _to_matrix(g, view)
            r = min(rank, view.rows, view.cols)
            left = view.rows >= view.cols

            def fresh(matrix=matrix, r=r, left=left, dtype=g.dtype):
                u, _, vt = jnp.linalg.svd(matrix.astype(jnp.promote_types(dtype, jnp.float32)), full_matrices=False)
                return (u[:, :r] if left else vt[:r, :].T).astype(dtype)

            projector = jax.lax.cond(refresh, fresh, lambda old=old: old)
            views.append(view)
            projectors.append(projector)
            projected.append(projector.T @ matrix if left else matrix @ projector)
        low_rank, base_state = base.update(jax.tree.unflatten(treedef, projected), state.base_optimizer_state, None)
        out = []
        for g, n, projector, view in zip(leaves, treedef.flatten_up_to(low_rank), projectors, views):
            if view is None:
                out.append(n)
                continue
            full = projector @ n if view.rows >= view.cols else n @ projector.T
            out.append((scale * _from_matrix(full, view, g.shape)).astype(g.dtype))
        new_state = GaLoreState(
            count=_tree.safe_increment(state.count),
            base_optimizer_state=base_state,
            projector=jax.tree.unflatten(treedef, projectors),
        )
        return jax.tree.unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


@alias
def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int | jax.Array = 200,
    scale: float | jax.Array = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    weight_dimension_numbers: Any = None,
) -> GradientTransformationExtraArgs:
    """GaLore: ``p <- p - lr * (u + weight_decay * p)`` with :func:`scale_by_galore`'s ``u``
    (Adam in the projected space by default). The decay is scaled by the learning rate."""
    return chain(
        scale_by_galore(rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
