"""Pytree arithmetic used by the transforms.

Every function maps leaf by leaf and keeps the tree structure. Binary functions
require both trees to have the same structure and say so clearly when they do
not. Results keep the dtype of the first tree unless a dtype is given.
"""

import builtins
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxopt_lite import numerics as _numerics
from jaxopt_lite.numerics import safe_increment

Tree = Any


def _is_none(x: Any) -> bool:
    return x is None


def _describe(tree: Tree) -> str:
    text = str(jax.tree.structure(tree))
    return text if len(text) <= 300 else text[:300] + "..."


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """``node``'s direct children as ``(key, child)`` pairs; ``None`` for a leaf."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(pairs) == 1 and pairs[0][0] == () and pairs[0][1] is node:
        return None
    return [(path[0], child) for path, child in pairs]


def describe_node(node: Any) -> str:
    """A short description of one pytree node: its type and its children's keys, or that it is a leaf."""
    if node is None:
        return "None"
    children = _children(node)
    if children is None:
        return f"a leaf ({type(node).__name__})"
    keys = [jax.tree_util.keystr((k,)) for k, _ in children]
    shown = " ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
    return f"a {type(node).__name__} of {len(keys)} ({shown})" if keys else f"an empty {type(node).__name__}"


def is_subtree_of(node: Any, tree: Tree) -> bool:
    """Whether ``node`` has the structure of ``tree`` or of one of its subtrees (leaves excepted)."""
    target = jax.tree.structure(node)
    pending = [tree]
    while pending:
        current = pending.pop()
        children = _children(current)
        if children is None:
            continue
        if jax.tree.structure(current) == target:
            return True
        pending.extend(child for _, child in children)
    return False


def first_difference(a: Tree, b: Tree) -> tuple[tuple, Any, Any] | None:
    """Where the structures of ``a`` and ``b`` first differ: ``(key path, node of a, node of b)``; else ``None``."""
    path: tuple = ()
    while True:
        ca, cb = _children(a), _children(b)
        same_kind = (ca is None) == (cb is None) and (ca is None or type(a) is type(b))
        if ca is not None and same_kind and [k for k, _ in ca] == [k for k, _ in cb]:
            for (key, xa), (_, xb) in zip(ca, cb):
                if jax.tree.structure(xa) != jax.tree.structure(xb):
                    path, a, b = path + (key,), xa, xb
                    break
            else:
                return None
            continue
        if ca is None and cb is None and (a is None) == (b is None):
            return None
        return path, a, b


def check_same_structure(a: Tree, b: Tree, name_a: str = "first tree", name_b: str = "second tree") -> None:
    """Raises ``ValueError`` naming both trees and the key path where they first differ."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        path, node_a, node_b = first_difference(a, b) or ((), a, b)
        raise ValueError(
            f"{name_a} and {name_b} must have the same tree structure, but they differ at "
            f"{jax.tree_util.keystr(path) or 'the root'}: {name_a} has {describe_node(node_a)}, "
            f"{name_b} has {describe_node(node_b)}"
        )


def check_same_shapes(
    a: Tree, b: Tree, name_a: str = "first tree", name_b: str = "second tree", *, per_example: bool = False
) -> None:
    """Like :func:`check_same_structure`, and the leaves must have the same shapes (no silent broadcast).

    ``per_example``: a leaf of ``a`` may also have one extra leading axis (a batch of
    per-example gradients, as ``dpsgd`` takes).
    """
    check_same_structure(a, b, name_a, name_b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        batched = per_example and jnp.ndim(x) == jnp.ndim(y) + 1 and jnp.shape(x)[1:] == jnp.shape(y)
        if jnp.shape(x) != jnp.shape(y) and not batched:
            where = f" at {jax.tree_util.keystr(path)}" if path else ""
            raise ValueError(
                f"{name_a} and {name_b} must have the same leaf shapes, but{where} "
                f"{name_a} has shape {jnp.shape(x)} and {name_b} has shape {jnp.shape(y)}"
            )


def require_params(owner: str, updates: Tree, params: Tree, why: str = "") -> None:
    """Raises ``ValueError`` if ``params`` is ``None`` or not shaped like ``updates`` (a silent broadcast)."""
    if params is None:
        raise ValueError(f"{owner}: params must be passed to update{f' ({why})' if why else ''}")
    try:
        check_same_shapes(updates, params, "updates", "params")
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None


def check_floating(params: Tree, owner: str, *, real: str | None = None) -> None:
    """Raises ``TypeError`` if any leaf of ``params`` is not a floating-point array.

    With ``real`` (why the algorithm needs real numbers), complex leaves are refused
    too, with a ``ValueError`` that says so and how to optimise them anyway.
    """
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in paths_and_leaves:
        dtype = jnp.result_type(leaf)
        if real is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise ValueError(
                f"{owner}: complex parameters are not supported ({real}), but parameter "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}; optimize its real and imaginary "
                "parts instead (split_real_and_imaginary)"
            )
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{owner}: parameter {jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}; "
                "optimizer state needs floating-point parameters (Optax would silently round their updates). "
                "Cast it to a float dtype, or keep it out of the optimizer: "
                "masked(tx, mask) with mask False for it (e.g. mask=lambda p: jax.tree.map("
                "lambda x: jnp.issubdtype(x.dtype, jnp.floating), p)), or partition(...) with set_to_zero()"
            )


def _map2(fn, a: Tree, b: Tree, names=("tree_x", "tree_y")) -> Tree:
    check_same_structure(a, b, *names)
    return jax.tree.map(fn, a, b)


def add(tree_x: Tree, tree_y: Tree, *other_trees: Tree) -> Tree:
    """``tree_x + tree_y + ...``: the sum of two or more trees, leaf by leaf."""
    for i, other in enumerate((tree_y, *other_trees)):
        check_same_structure(tree_x, other, "first tree", f"tree {i + 2}")
    return jax.tree.map(lambda x, *rest: builtins.sum(rest, x), tree_x, tree_y, *other_trees)


def sub(tree_x: Tree, tree_y: Tree) -> Tree:
    """``tree_x - tree_y``."""
    return _map2(lambda x, y: x - y, tree_x, tree_y)


def mul(tree_x: Tree, tree_y: Tree) -> Tree:
    """``tree_x * tree_y`` elementwise."""
    return _map2(lambda x, y: x * y, tree_x, tree_y)


def div(tree_x: Tree, tree_y: Tree) -> Tree:
    """``tree_x / tree_y`` elementwise."""
    return _map2(lambda x, y: x / y, tree_x, tree_y)


def scale(scalar: Any, tree: Tree) -> Tree:
    """``scalar * tree``, each leaf kept in its dtype."""
    return jax.tree.map(lambda x: _numerics.cast(scalar * x, x.dtype), tree)


def add_scale(tree_x: Tree, scalar: Any, tree_y: Tree) -> Tree:
    """``tree_x + scalar * tree_y``, each leaf in the dtype of ``tree_x`` (its ``None`` leaves stay ``None``)."""
    if jax.tree.structure(tree_x, is_leaf=_is_none) != jax.tree.structure(tree_y, is_leaf=_is_none):
        check_same_structure(tree_x, tree_y, "tree_x", "tree_y")

    def leaf(x, y):
        if x is None:
            return None
        return _numerics.cast(jnp.asarray(x + scalar * y), jnp.result_type(x))

    return jax.tree.map(leaf, tree_x, tree_y, is_leaf=_is_none)


def vdot(tree_x: Tree, tree_y: Tree) -> jax.Array:
    """The inner product of two trees seen as flat vectors."""
    check_same_structure(tree_x, tree_y, "tree_x", "tree_y")
    parts = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(tree_x), jax.tree.leaves(tree_y))]
    return builtins.sum(parts, jnp.zeros([], _accumulation_dtype(tree_x)))


def sum(tree: Tree, associative_reduction: bool = False) -> jax.Array:  # noqa: A001 - mirrors optax.tree.sum
    """The sum of all elements of all leaves.

    ``associative_reduction=True`` adds the per-leaf sums as a balanced tree
    (``jax.tree.reduce_associative``): faster to compile for many leaves, and
    possibly different in the last bits.
    """
    zero = jnp.zeros([], _accumulation_dtype(tree))
    sums = [jnp.sum(x) for x in jax.tree.leaves(tree)]
    if associative_reduction and sums:
        return zero + jax.tree.reduce_associative(lambda x, y: x + y, sums)
    return builtins.sum(sums, zero)


def _accumulation_dtype(tree: Tree):
    """Reductions run in at least float32 (a bfloat16 sum of squares overflows or loses digits)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree)]
    if not dtypes:
        return jnp.float32
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def norm(tree: Tree, ord: int | str | None = None, squared: bool = False) -> jax.Array:  # noqa: A002
    """The norm of all leaves taken as one vector (``ord`` in ``None`` (= 2), 1, 2, ``inf``).

    A real number for complex leaves (``|z|``, never ``z**2``), accumulated in at
    least float32. The 2-norm is overflow-safe (see :func:`jaxopt_lite.numerics.global_norm`)
    and its derivative at 0 is 0.
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    dtype = _numerics.accumulation_dtype(leaves)
    if ord is None or ord == 2:
        if squared:
            return builtins.sum((jnp.sum(_numerics.abs_sq(x.astype(jnp.promote_types(x.dtype, dtype))))
                                 for x in leaves), jnp.zeros([], dtype)).astype(dtype)
        return _numerics.global_norm(leaves, dtype)
    if ord == 1:
        return builtins.sum((jnp.sum(jnp.abs(x)).astype(dtype) for x in leaves), jnp.zeros([], dtype))
    if ord in ("inf", "infinity", np.inf, jnp.inf):
        return functools.reduce(jnp.maximum, (jnp.max(jnp.abs(x)).astype(dtype) for x in leaves if x.size),
                                jnp.zeros([], dtype))
    raise ValueError(f"tree.norm: ord must be None, 1, 2 or 'inf', got {ord!r}")


def global_norm(updates: Tree) -> jax.Array:
    """The L2 norm of all leaves taken as one vector, accumulated in at least float32."""
    return norm(updates)


def _sharded_like(x: Any, out: jax.Array) -> jax.Array:
    """``out`` with the sharding of ``x``: tied under a trace, placed eagerly.

    Eager ``jnp.zeros_like`` keeps a sharding only for strongly typed input: a
    weak-typed leaf (``jnp.full(shape, 0.1)``) would get single-device state.
    """
    if isinstance(x, jax.core.Tracer):
        from jax.experimental.shard_alike import shard_alike

        _, out = shard_alike(x, out)
    elif isinstance(x, jax.Array) and not isinstance(out, jax.core.Tracer) and out.sharding != x.sharding:
        out = jax.device_put(out, x.sharding)  # eager: out is concrete (not so for x captured inside a trace)
    return out


def unzip_leaves(treedef: Any, per_leaf: list, n: int) -> list:
    """``n`` trees of structure ``treedef`` from one ``n``-tuple per leaf, listed in ``treedef``'s leaf order
    (``treedef.flatten_up_to(tree_of_tuples)`` gives that list): ``[(a0, b0), (a1, b1)] -> [A, B]``."""
    return [treedef.unflatten([x[i] for x in per_leaf]) for i in range(n)]


def place_on_params_mesh(state: Tree, params: Tree) -> Tree:
    """``state`` with its eager leaves that are not on the parameters' devices (step counts, PRNG keys,
    injected hyperparameters; parameter-shaped buffers already follow their parameter) replicated on the
    mesh the parameters are sharded over, so a jitted step can take ``jax.tree.map(lambda x: x.sharding,
    state)`` as its input shardings. Unchanged under a trace, and for parameters on one device or on
    several meshes."""
    leaves = jax.tree.leaves(params)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return state
    meshes = {x.sharding.mesh for x in leaves if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)}
    if len(meshes) != 1:
        return state
    target = NamedSharding(meshes.pop(), PartitionSpec())
    if len(target.device_set) == 1:
        return state

    def place(x):
        if (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
                and x.sharding.device_set != target.device_set):
            return jax.device_put(x, target)
        return x

    return jax.tree.map(place, state)


def zeros_like(tree: Tree, dtype: Any = None) -> Tree:
    """Zeros shaped (and sharded) like each leaf, in ``dtype`` or the leaf's dtype."""
    return jax.tree.map(lambda x: _sharded_like(x, jnp.zeros_like(x, dtype=dtype)), tree)


def accumulator_dtype(leaf: Any, dtype: Any = None) -> Any:
    """The dtype a state buffer of ``leaf`` is kept in: ``dtype`` as a precision, the leaf's domain.

    ``None`` is the leaf's dtype; a real ``dtype`` (``mu_dtype=jnp.float32``) for a
    complex leaf is its complex counterpart, so the imaginary part is never dropped.
    """
    if dtype is None:
        return jnp.result_type(leaf)
    if jnp.iscomplexobj(leaf) and not jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.promote_types(dtype, jnp.complex64)
    return jnp.dtype(dtype)


def accumulator_zeros(tree: Tree, dtype: Any = None) -> Tree:
    """State buffers of zeros shaped (and sharded) like each leaf, in :func:`accumulator_dtype`."""
    return jax.tree.map(lambda x: _sharded_like(x, jnp.zeros_like(x, dtype=accumulator_dtype(x, dtype))), tree)


def ones_like(tree: Tree, dtype: Any = None) -> Tree:
    return jax.tree.map(lambda x: _sharded_like(x, jnp.ones_like(x, dtype=dtype)), tree)


def full_like(tree: Tree, fill_value: Any, dtype: Any = None) -> Tree:
    return jax.tree.map(lambda x: _sharded_like(x, jnp.full_like(x, fill_value, dtype=dtype)), tree)


def cast(tree: Tree, dtype: Any) -> Tree:
    """Casts every leaf to ``dtype`` (``None`` leaves the tree unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def cast_like(tree: Tree, other_tree: Tree) -> Tree:
    """Casts each leaf of ``tree`` to the dtype of the matching leaf of ``other_tree``."""
    return _map2(lambda x, y: _numerics.cast(x, y.dtype), tree, other_tree, ("tree", "other_tree"))


def where(condition: Any, tree_x: Tree, tree_y: Tree) -> Tree:
    """``tree_x`` where ``condition`` (a scalar) holds, else ``tree_y``, leaf by leaf."""
    return _map2(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)


def clip(tree: Tree, min_value: Any = None, max_value: Any = None) -> Tree:
    return jax.tree.map(lambda x: jnp.clip(x, min_value, max_value).astype(x.dtype), tree)


def _map_moments(leaf, updates: Tree, moments: Tree) -> Tree:
    """Maps ``leaf(g, m)`` over updates and moments; a ``None`` update (or moment) gives ``None``."""
    if jax.tree.structure(updates, is_leaf=_is_none) != jax.tree.structure(moments, is_leaf=_is_none):
        check_same_structure(updates, moments, "updates", "moments")
    return jax.tree.map(
        lambda g, m: None if g is None or m is None else leaf(g, m), updates, moments, is_leaf=_is_none
    )


def _stored(new: jax.Array, m: Any, widened: bool) -> jax.Array:
    return new if widened else _numerics.cast(new, jnp.result_type(m))


def update_moment(updates: Tree, moments: Tree, decay: Any, order: int, *, widened: bool = False) -> Tree:
    """``decay * m + (1 - decay) * u**order``, in each moment's dtype (computed in float32 when it or ``u`` is
    bfloat16 or float16, and rounded once). ``widened=True`` skips that rounding: a bfloat16 or float16 moment
    comes back in float32, for a step computed from it before the caller stores it rounded."""
    keep = 1.0 - decay  # once, not once per leaf

    def leaf(g, m):
        g = _numerics.widen(g)
        return _stored(decay * _numerics.widen(m) + keep * (g if order == 1 else g**order), m, widened)

    return _map_moments(leaf, updates, moments)


def update_moment_per_elem_norm(updates: Tree, moments: Tree, decay: Any, order: int, *, widened: bool = False) -> Tree:
    """``decay * m + (1 - decay) * |u|**order``: ``|u|**2`` is ``u * conj(u)``, real for complex ``u`` (low
    precision: as :func:`update_moment`)."""

    def leaf(g, m):
        g = _numerics.widen(g)
        mag = _numerics.abs_sq(g) if order == 2 else jnp.abs(g) ** order
        return _stored(decay * _numerics.widen(m) + keep * mag, m, widened)

    keep = 1.0 - decay
    return _map_moments(leaf, updates, moments)


def update_infinity_moment(updates: Tree, moments: Tree, decay: Any, eps: Any) -> Tree:
    """``max(decay * m, |u| + eps)``, the exponentially weighted infinity norm (AdaMax)."""

    def leaf(g, m):
        decayed = decay * _numerics.widen(m)
        out = jnp.maximum(jnp.real(decayed) if jnp.iscomplexobj(m) else decayed, jnp.abs(_numerics.widen(g)) + eps)
        return _numerics.cast(out, jnp.result_type(m))

    return _map_moments(leaf, updates, moments)


def bias_correction(moment: Tree, decay: Any, count: Any) -> Tree:
    """``m / (1 - decay**count)``, the debiasing of an EMA started at zero.

    ``count`` may be an integer array or a Python number; the correction is
    formed in at least float32 (``decay**count`` rounds to 1 in bfloat16) and the
    division runs in each moment's dtype.
    """
    count = jnp.asarray(count)
    decay = jnp.asarray(decay)
    dtype = jnp.promote_types(jnp.result_type(float), decay.dtype)
    correction = 1.0 - decay.astype(dtype) ** count.astype(dtype)

    def leaf(m):
        if m is None:
            return None
        dtype = jnp.result_type(m)
        return _numerics.cast(jnp.asarray(m) / correction, dtype)

    return jax.tree.map(leaf, moment, is_leaf=_is_none)


def zero_count() -> jax.Array:
    """A fresh int32 step counter."""
    return jnp.zeros([], jnp.int32)


# ---------------------------------------------------------------------------------------------------------------------
# Optax's remaining `optax.tree` functions: reductions, dtypes, random trees, and search/replace in optimizer states.
# (Names shadow the builtins `max`, `min`, `set` below this point in this module; code above uses `builtins.*`.)
# ---------------------------------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import inspect  # noqa: E402
import operator  # noqa: E402
from collections.abc import Callable  # noqa: E402


def allclose(a: Tree, b: Tree, rtol: Any = 1e-05, atol: Any = 1e-08, equal_nan: bool = False) -> jax.Array:
    """Whether every leaf of ``a`` is close to the matching leaf of ``b`` (see :func:`jax.numpy.allclose`)."""
    check_same_structure(a, b, "a", "b")
    close = [jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan) for x, y in zip(jax.tree.leaves(a),
                                                                                             jax.tree.leaves(b))]
    return functools.reduce(operator.and_, close, jnp.asarray(True))


def batch_shape(tree: Tree, shape: tuple[int, ...] = ()) -> Tree:
    """Broadcasts every leaf to ``(*shape, *leaf.shape)`` (adds leading batch axes)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*shape, *jnp.shape(x))), tree)


def conj(tree: Tree) -> Tree:
    """The complex conjugate of every leaf."""
    return jax.tree.map(jnp.conj, tree)


def real(tree: Tree) -> Tree:
    """The real part of every leaf."""
    return jax.tree.map(jnp.real, tree)


def size(tree: Tree) -> int:
    """The total number of elements over all leaves."""
    return builtins.sum(int(jnp.size(x)) for x in jax.tree.leaves(tree))


def max(tree: Tree) -> jax.Array:  # noqa: A001 - mirrors optax.tree.max
    """The largest element over all leaves (``-inf`` if there is none)."""
    maxima = [jnp.max(x) for x in jax.tree.leaves(tree) if jnp.size(x)]
    return functools.reduce(jnp.maximum, maxima, jnp.asarray(-jnp.inf))


def min(tree: Tree) -> jax.Array:  # noqa: A001 - mirrors optax.tree.min
    """The smallest element over all leaves (``inf`` if there is none)."""
    minima = [jnp.min(x) for x in jax.tree.leaves(tree) if jnp.size(x)]
    return functools.reduce(jnp.minimum, minima, jnp.asarray(jnp.inf))


def _lower_dtype(d1: Any, d2: Any) -> Any:
    """The dtype that promotes to the other one."""
    promoted = jnp.promote_types(d1, d2)
    if promoted == d2:
        return d1
    if promoted == d1:
        return d2
    raise ValueError(f"tree.dtype: neither of {d1} and {d2} promotes to the other, so neither is lower or higher")


def _higher_dtype(d1: Any, d2: Any) -> Any:
    return d2 if _lower_dtype(d1, d2) == d1 else d1


def dtype(tree: Tree, mixed_dtype_handler: str | None = None) -> Any:
    """The dtype of the leaves of ``tree``.

    With mixed dtypes, ``mixed_dtype_handler`` decides: ``None`` raises ``ValueError``, ``'promote'``
    returns their :func:`jax.numpy.promote_types`, ``'highest'`` / ``'lowest'`` the largest / smallest under the
    order "``a <= b`` iff ``a`` promotes to ``b``" (an error when two leaves are not comparable). An empty tree
    has JAX's default float dtype.
    """
    if mixed_dtype_handler not in (None, "promote", "highest", "lowest"):
        raise ValueError(
            f"tree.dtype: mixed_dtype_handler must be None, 'promote', 'highest' or 'lowest', "
            f"got {mixed_dtype_handler!r}"
        )
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not paths_and_leaves:
        return jnp.asarray([]).dtype
    dtypes = [jnp.asarray(x).dtype for _, x in paths_and_leaves]
    if mixed_dtype_handler is None:
        mismatched = [
            f"Expected dtype={dtypes[0]} for {jax.tree_util.keystr(path)} but got {d}."
            for (path, _), d in zip(paths_and_leaves, dtypes)
            if d != dtypes[0]
        ]
        if mismatched:
            raise ValueError("tree.dtype: the leaves have several dtypes (pass mixed_dtype_handler):\n"
                             + "\n".join(mismatched))
        return dtypes[0]
    combine = {"promote": jnp.promote_types, "highest": _higher_dtype, "lowest": _lower_dtype}[mixed_dtype_handler]
    return functools.reduce(combine, dtypes)


def split_key_like(rng_key: jax.Array, target_tree: Tree) -> Tree:
    """One independent key per leaf of ``target_tree``, in a tree of the same structure."""
    treedef = jax.tree.structure(target_tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(rng_key, treedef.num_leaves)))


def random_like(
    rng_key: jax.Array,
    target_tree: Tree,
    sampler: Callable[..., jax.Array] = jax.random.normal,
    dtype: Any = None,
) -> Tree:
    """A tree shaped like ``target_tree`` with entries drawn by ``sampler(key, shape, dtype)``.

    Each leaf gets its own key (:func:`split_key_like`); ``dtype`` defaults to each leaf's dtype. A sampler that
    takes ``out_sharding`` is given each leaf's sharding.
    """
    keys = split_key_like(rng_key, target_tree)
    try:
        takes_sharding = "out_sharding" in inspect.signature(sampler).parameters
    except (TypeError, ValueError):
        takes_sharding = False

    def draw(leaf, key):
        leaf_dtype = dtype or leaf.dtype
        if takes_sharding:
            return sampler(key, leaf.shape, leaf_dtype, out_sharding=jax.typeof(leaf).sharding)
        return sampler(key, leaf.shape, leaf_dtype)

    return jax.tree.map(draw, target_tree, keys)


def unwrap_random_key_data(input_tree: Tree) -> Tree:
    """Replaces typed PRNG keys (``jax.random.key``) by their raw ``key_data``, so trees can be compared."""

    def unwrap(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)


# --- search and replace by name in optimizer states -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """A path entry for the field ``name`` of a NamedTuple of class ``tuple_name``.

    The paths given to ``filtering`` by :func:`get_all_with_path`, :func:`get` and :func:`set` use it for
    NamedTuple fields, so a filter can tell apart same-named fields of different states
    (``ScaleByAdamState.count`` from ``ScaleByScheduleState.count``).
    """

    tuple_name: str
    name: str

    def __str__(self):
        return f"{self.tuple_name}.{self.name}"


def _is_named_tuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _has_any_key(node: Any, keys: tuple) -> bool:
    """Whether ``node`` is a NamedTuple named or having a field in ``keys``, or a dict with a key in ``keys``."""
    if _is_named_tuple(node):
        return type(node).__name__ in keys or builtins.any(k in node._fields for k in keys)
    return isinstance(node, dict) and builtins.any(k in node for k in keys)


def _named_children(path: tuple, node: Any) -> list[tuple[tuple, Any]]:
    """The children of a NamedTuple (with :class:`NamedTupleKey` entries) or of a dict, with their paths."""
    if _is_named_tuple(node):
        return [((*path, NamedTupleKey(type(node).__name__, f)), getattr(node, f)) for f in node._fields]
    return [((*path, jax.tree_util.DictKey(k)), v) for k, v in node.items()]


def _generic_children(node: Any) -> tuple[list[tuple[tuple, Any]], Any]:
    """One level of any pytree node: ``([(entry, child), ...], treedef)``; no children for a leaf."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if treedef == jax.tree.structure(0):  # ``node`` itself is a leaf
        return [], treedef
    return flat, treedef


def _outermost_with_key(path: tuple, node: Any, keys: tuple) -> list[tuple[tuple, Any]]:
    """The nodes having one of ``keys`` (see :func:`_has_any_key`), not looking inside them, in tree order."""
    if _has_any_key(node, keys):
        return [(path, node)]
    if _is_named_tuple(node):
        children = _named_children(path, node)
    else:
        children = [((*path, *entry), child) for entry, child in _generic_children(node)[0]]
    return [found for child_path, child in children for found in _outermost_with_key(child_path, child, keys)]


def _get_all(path: tuple, tree: Tree, key: Any) -> list[tuple[tuple, Any]]:
    subtrees = _outermost_with_key(path, tree, (key,))
    found = []
    for node_path, node in subtrees:
        if _is_named_tuple(node) and type(node).__name__ == key:
            found.append((node_path, node))
        elif _is_named_tuple(node):
            found.append(((*node_path, NamedTupleKey(type(node).__name__, key)), getattr(node, key)))
        else:
            found.append(((*node_path, jax.tree_util.DictKey(key)), node[key]))
    for node_path, node in subtrees:  # matches nested inside the matches
        for child_path, child in _named_children(node_path, node):
            found += _get_all(child_path, child, key)
    return found


def get_all_with_path(
    tree: Tree, key: Any, filtering: Callable[[tuple, Any], bool] | None = None
) -> list[tuple[tuple, Any]]:
    """Every ``(path, value)`` in ``tree`` found under ``key``.

    ``key`` matches a dict key, a NamedTuple field, or the class name of a NamedTuple (then the value is the
    NamedTuple itself). Matches nested inside matches are found too; outer matches come first. Paths are tuples
    of JAX key entries, with a :class:`NamedTupleKey` for each NamedTuple field (``jax.tree_util.keystr`` prints
    them). ``filtering(path, value)`` keeps only the pairs it returns ``True`` for.
    """
    found = _get_all((), tree, key)
    if filtering is not None:
        found = [(path, value) for path, value in found if filtering(path, value)]
    return found


def get(tree: Tree, key: Any, default: Any = None, filtering: Callable[[tuple, Any], bool] | None = None) -> Any:
    """The one value of ``tree`` under ``key`` (see :func:`get_all_with_path`), or ``default`` if there is none.

    Example: ``tree.get(adam_state, "count")``. Raises ``KeyError`` if several values match: narrow them with
    ``filtering(path, value)``, e.g. by the NamedTuple name in the path's last :class:`NamedTupleKey`.
    """
    found = get_all_with_path(tree, key, filtering=filtering)
    if len(found) > 1:
        where = ", ".join(jax.tree_util.keystr(path) for path, _ in found)
        raise KeyError(f"tree.get: found {len(found)} values for {key!r} (at {where}); pass filtering to pick one")
    return found[0][1] if found else default


def set(tree: Tree, filtering: Callable[[tuple, Any], bool] | None = None, /, **kwargs: Any) -> Tree:  # noqa: A001
    """A copy of ``tree`` where every value under a key of ``kwargs`` is replaced by ``kwargs[key]``.

    Keys match as in :func:`get_all_with_path` (dict keys, NamedTuple fields, NamedTuple class names), and only
    where ``filtering(path, value)`` holds, if given. Example: ``tree.set(state, learning_rate=jnp.asarray(0.1))``.
    Raises ``KeyError`` naming a key that matches nothing.
    """
    for key in kwargs:
        if not get_all_with_path(tree, key, filtering):
            condition = " given the filtering" if filtering is not None else ""
            raise KeyError(f"tree.set: found no value for {key!r}{condition} in the tree {_describe(tree)}")
    accept = filtering if filtering is not None else (lambda path, value: True)

    def replace(path, node):
        if _is_named_tuple(node) and type(node).__name__ in kwargs and accept(path, node):
            return kwargs[type(node).__name__]
        if _is_named_tuple(node) or isinstance(node, dict):
            new = {}
            for child_path, child in _named_children(path, node):
                name = _key_name(child_path[-1])
                new[name] = kwargs[name] if name in kwargs and accept(child_path, child) else replace(child_path, child)
            return node._replace(**new) if _is_named_tuple(node) else type(node)(new)
        children, treedef = _generic_children(node)
        if not children:
            return node
        return treedef.unflatten([replace((*path, *entry), child) for entry, child in children])

    return replace((), tree)


def _key_name(entry: Any) -> Any:
    if isinstance(entry, NamedTupleKey):
        return entry.name
    return entry.key  # DictKey


class _ParamsPlaceholder:
    """A pytree with no leaves standing for the parameters in :func:`map_params`."""


jax.tree_util.register_pytree_node(_ParamsPlaceholder, lambda p: ((), None), lambda aux, children: _ParamsPlaceholder())


def map_params(
    initable: Any,
    f: Callable[..., Any],
    state: Tree,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Tree:
    """Maps ``f`` over every copy of the parameter tree inside an optimizer ``state``.

    ``initable`` is the optimizer (or its ``init``): it is initialised on a placeholder to find which parts of
    the state are parameter-shaped (moments, traces, ...). On those, ``f(leaf, *rest_leaves)`` is mapped leaf
    by leaf (``rest`` are trees shaped like the parameters, e.g. their sharding specs); every other part is
    passed to ``transform_non_params`` if given, else kept. ``is_leaf`` goes to :func:`jax.tree.map`.
    """
    init = initable.init if hasattr(initable, "init") else initable
    template = init(_ParamsPlaceholder())

    def map_part(template_part, value):
        if isinstance(template_part, _ParamsPlaceholder):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        return transform_non_params(value) if transform_non_params is not None else value

    return jax.tree.map(map_part, template, state, is_leaf=lambda x: isinstance(x, _ParamsPlaceholder))
