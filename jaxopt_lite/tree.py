"""Pytree arithmetic used by the transforms.

Every function maps leaf by leaf and keeps the tree structure. Binary functions
require both trees to have the same structure and say so clearly when they do
not. Results keep the dtype of the first tree unless a dtype is given.
"""

from __future__ import annotations

import builtins
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Tree = Any

_INT32_MAX = np.iinfo(np.int32).max


def _describe(tree: Tree) -> str:
    text = str(jax.tree.structure(tree))
    return text if len(text) <= 300 else text[:300] + "..."


def check_same_structure(a: Tree, b: Tree, name_a: str = "first tree", name_b: str = "second tree") -> None:
    """Raises ``ValueError`` naming both trees if their structures differ."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(
            f"{name_a} and {name_b} must have the same tree structure, but\n"
            f"  {name_a}: {_describe(a)}\n  {name_b}: {_describe(b)}"
        )


def check_same_shapes(a: Tree, b: Tree, name_a: str = "first tree", name_b: str = "second tree") -> None:
    """Like :func:`check_same_structure`, and the leaves must have the same shapes."""
    check_same_structure(a, b, name_a, name_b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{name_a} and {name_b} must have the same leaf shapes, but at {jax.tree_util.keystr(path)} "
                f"{name_a} has shape {jnp.shape(x)} and {name_b} has shape {jnp.shape(y)}"
            )


def check_floating(params: Tree, owner: str) -> None:
    """Raises ``TypeError`` if any leaf of ``params`` is not a floating-point array."""
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in paths_and_leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{owner}: parameter {jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}; "
                "optimizer state needs floating-point parameters (cast them, or mask them out)"
            )


def _map2(fn, a: Tree, b: Tree, names=("a", "b")) -> Tree:
    check_same_structure(a, b, *names)
    return jax.tree.map(fn, a, b)


def add(a: Tree, b: Tree) -> Tree:
    """``a + b``."""
    return _map2(lambda x, y: x + y, a, b)


def sub(a: Tree, b: Tree) -> Tree:
    """``a - b``."""
    return _map2(lambda x, y: x - y, a, b)


def mul(a: Tree, b: Tree) -> Tree:
    """``a * b`` elementwise."""
    return _map2(lambda x, y: x * y, a, b)


def div(a: Tree, b: Tree) -> Tree:
    """``a / b`` elementwise."""
    return _map2(lambda x, y: x / y, a, b)


def scale(scalar: Any, tree: Tree) -> Tree:
    """``scalar * tree``, each leaf kept in its dtype."""
    return jax.tree.map(lambda x: (scalar * x).astype(x.dtype), tree)


def add_scale(a: Tree, scalar: Any, b: Tree) -> Tree:
    """``a + scalar * b``, each leaf in the dtype of ``a``."""
    return _map2(lambda x, y: (x + scalar * y).astype(x.dtype), a, b)


def vdot(a: Tree, b: Tree) -> jax.Array:
    """The inner product of two trees seen as flat vectors."""
    check_same_structure(a, b, "a", "b")
    parts = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return builtins.sum(parts, jnp.zeros([], _accumulation_dtype(a)))


def sum(tree: Tree) -> jax.Array:  # noqa: A001 - mirrors optax.tree.sum
    """The sum of all elements of all leaves."""
    return builtins.sum((jnp.sum(x) for x in jax.tree.leaves(tree)), jnp.zeros([], _accumulation_dtype(tree)))


def _accumulation_dtype(tree: Tree):
    """Reductions run in at least float32 (a bfloat16 sum of squares overflows or loses digits)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree)]
    if not dtypes:
        return jnp.float32
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _max_abs(leaves: list, dtype: Any) -> jax.Array:
    """``max |x|`` over all leaves (0 if all are empty); traceable (no Python comparison of arrays)."""
    return functools.reduce(jnp.maximum, (jnp.max(jnp.abs(x)) for x in leaves if x.size), jnp.zeros([], dtype))


def norm(tree: Tree, ord: int | str = 2, squared: bool = False) -> jax.Array:  # noqa: A002
    """The norm of all leaves taken as one vector (``ord`` in 1, 2, ``inf``)."""
    dtype = _accumulation_dtype(tree)
    leaves = [jnp.asarray(x, dtype) for x in jax.tree.leaves(tree)]
    if ord == 2:
        sq = builtins.sum((jnp.sum(jnp.square(x)) for x in leaves), jnp.zeros([], dtype))
        if squared:
            return sq

        def rescaled():  # ||x|| = s * ||x / s|| with s = max |x|: the squares cannot overflow
            s = _max_abs(leaves, dtype)
            safe = jnp.where(s > 0, s, 1)
            return safe * jnp.sqrt(builtins.sum((jnp.sum(jnp.square(x / safe)) for x in leaves), jnp.zeros([], dtype)))

        return jax.lax.cond(jnp.isfinite(sq), lambda: jnp.sqrt(sq), rescaled)
    if ord == 1:
        return builtins.sum((jnp.sum(jnp.abs(x)) for x in leaves), jnp.zeros([], dtype))
    if ord in ("inf", np.inf, jnp.inf):
        return _max_abs(leaves, dtype)
    raise ValueError(f"tree.norm: ord must be 1, 2 or 'inf', got {ord!r}")


def global_norm(tree: Tree) -> jax.Array:
    """The L2 norm of all leaves taken as one vector, accumulated in at least float32."""
    return norm(tree)


def _sharded_like(x: Any, out: jax.Array) -> jax.Array:
    """Under a trace, ties the sharding of ``out`` to that of ``x`` (eager ``*_like`` already does)."""
    if isinstance(x, jax.core.Tracer):
        from jax.experimental.shard_alike import shard_alike

        _, out = shard_alike(x, out)
    return out


def zeros_like(tree: Tree, dtype: Any = None) -> Tree:
    """Zeros shaped (and sharded) like each leaf, in ``dtype`` or the leaf's dtype."""
    return jax.tree.map(lambda x: _sharded_like(x, jnp.zeros_like(x, dtype=dtype)), tree)


def ones_like(tree: Tree, dtype: Any = None) -> Tree:
    return jax.tree.map(lambda x: _sharded_like(x, jnp.ones_like(x, dtype=dtype)), tree)


def full_like(tree: Tree, fill_value: Any, dtype: Any = None) -> Tree:
    return jax.tree.map(lambda x: _sharded_like(x, jnp.full_like(x, fill_value, dtype=dtype)), tree)


def cast(tree: Tree, dtype: Any) -> Tree:
    """Casts every leaf to ``dtype`` (``None`` leaves the tree unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def cast_like(tree: Tree, like: Tree) -> Tree:
    """Casts each leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return _map2(lambda x, y: x.astype(y.dtype), tree, like)


def where(condition: Any, a: Tree, b: Tree) -> Tree:
    """``a`` where ``condition`` (a scalar) holds, else ``b``, leaf by leaf."""
    return _map2(lambda x, y: jnp.where(condition, x, y), a, b)


def clip(tree: Tree, min_value: Any = None, max_value: Any = None) -> Tree:
    return jax.tree.map(lambda x: jnp.clip(x, min_value, max_value).astype(x.dtype), tree)


def update_moment(updates: Tree, moments: Tree, decay: Any, order: int) -> Tree:
    """``decay * m + (1 - decay) * u**order``, in each moment's dtype."""
    return _map2(
        lambda g, m: (decay * m + (1.0 - decay) * (g**order)).astype(m.dtype), updates, moments, ("updates", "moments")
    )


def update_moment_per_elem_norm(updates: Tree, moments: Tree, decay: Any, order: int) -> Tree:
    """``decay * m + (1 - decay) * |u|**order`` (squares ``|u|`` for complex inputs)."""

    def leaf(g, m):
        mag = jnp.abs(g)
        return (decay * m + (1.0 - decay) * (mag**order)).astype(m.dtype)

    return _map2(leaf, updates, moments, ("updates", "moments"))


def update_infinity_moment(updates: Tree, moments: Tree, decay: Any, eps: Any) -> Tree:
    """``max(decay * m, |u| + eps)``, the exponentially weighted infinity norm (AdaMax)."""
    return _map2(
        lambda g, m: jnp.maximum(decay * m, jnp.abs(g) + eps).astype(m.dtype), updates, moments, ("updates", "moments")
    )


def bias_correction(moments: Tree, decay: Any, count: jax.Array) -> Tree:
    """``m / (1 - decay**count)``, the debiasing of an EMA started at zero."""
    correction = 1.0 - decay ** count.astype(jnp.result_type(float))
    return jax.tree.map(lambda m: (m / correction).astype(m.dtype), moments)


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1`` for an int32 step counter, saturating at the largest int32."""
    count = jnp.asarray(count)
    return jnp.where(count < _INT32_MAX, count + 1, _INT32_MAX).astype(count.dtype)


def zero_count() -> jax.Array:
    """A fresh int32 step counter."""
    return jnp.zeros([], jnp.int32)
