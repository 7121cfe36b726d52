"""Shardings for optimizer state: follow the parameters, or split it over a data axis (ZeRO-1).

:func:`state_shardings` gives, for an optimizer and its parameters' ``NamedSharding`` s, one
``NamedSharding`` per leaf of ``tx.init(params)`` (the state is shaped with ``jax.eval_shape``:
nothing is computed or allocated). Pass it as ``out_shardings`` of the jitted ``init`` (that is
:func:`init_sharded`) and as ``in_shardings`` and ``out_shardings`` of the jitted step; XLA's SPMD
partitioner then inserts the collectives. With ZeRO-1 the gradients are summed over the data axis as
in plain data parallelism (an all-reduce; XLA may turn it into a reduce-scatter), each device updates
its slice of the state and of the parameters, and the new parameters are all-gathered.

Which parameter a state leaf belongs to. The state is walked from its root; a subtree with the
parameters' tree structure (``mu``, ``nu``, ``trace``, ``acc_grads``, ...), or, when no part of it
has that structure, a subtree of which the parameters' structure is a prefix (Adafactor's
``v_row``, SM3's list of accumulators per parameter, a ``masked`` state), is matched to the
parameters position by position: everything under the position of parameter ``p`` belongs to
``p``. Every other leaf (step counts, injected hyperparameters, random keys, a schedule's state)
belongs to no parameter. A leaf of a parameter ``p`` with spec ``S`` gets, by its shape:

- ``p``'s shape: ``p``'s sharding (with ``zero_axis``, also split over that axis, below);
- ``()``: replicated, ``NamedSharding(mesh, P())`` (a statistic per array, as NovoGrad's);
- ``p``'s shape with some axes removed (a reduction over them: Adafactor's row and column
  statistics, SM3's accumulators) or kept with size 1 (``keepdims``): ``S`` without the removed
  axes (``None`` on the size-1 ones). When the removed axes cannot be told apart (a square matrix's
  row statistic has the shape of its column statistic) and the candidates give different specs,
  replicated;
- extra leading axes in front of ``p``'s shape (a stack of parameter-shaped buffers, as L-BFGS's
  history): the sharding of a ``p``-shaped leaf on the trailing axes, the leading axes unsharded;
- any other shape: replicated.

A leaf quantized by :func:`~jaxopt_lite.quantize_state` (a ``QuantizedArray`` node: codes and
scales) takes the sharding its dequantized leaf would take by these rules (``T``, with ``zero_axis``
too) on the axes it keeps: 8-bit codes have the leaf's shape and take ``T``; 4-bit codes and the
scales keep the leading axes before the block axis (``T`` on them), and take ``T``'s entry for the
block axis only when each device's part of it holds whole bytes (4-bit codes) or whole blocks (scales)
and no later axis is sharded; otherwise that axis is not split.

A leaf that belongs to no parameter is replicated.

ZeRO-1 (``zero_axis="data"``). Each ``p``-shaped leaf (and each stack of them) is also split over
the mesh axis ``zero_axis``: along the largest axis of ``p`` that ``S`` leaves unsharded and whose
size the axis' size divides (the first such axis on ties); the other axes keep ``S``. When no axis
qualifies, or ``S`` already uses ``zero_axis`` (parameters sharded over it, FSDP), the leaf keeps
``p``'s sharding. Reduced statistics and scalars are not split further.

Example, data parallel with ZeRO-1 (a mesh over every device; the parameters replicated, the
batch split, each device keeps ``1/n`` of AdamW's moments)::

    import functools, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxopt_lite as jol

    def loss_fn(params, x, y):
        pred = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
        return jnp.mean((pred - y) ** 2)

    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"w1": 0.5 * jax.random.normal(key1, (3, 16)), "b1": jnp.zeros(16),
              "w2": 0.5 * jax.random.normal(key2, (16, 1))}
    x = jax.random.normal(key2, (256, 3)); y = jnp.sin(x.sum(axis=1, keepdims=True))

    mesh = Mesh(jax.devices(), ("data",))
    param_shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
    batch_sharding = NamedSharding(mesh, P("data"))
    params = jax.device_put(params, param_shardings)
    x, y = jax.device_put((x, y), batch_sharding)

    opt = jol.adamw(1e-2, weight_decay=1e-4)
    opt_shardings = jol.sharding.state_shardings(opt, params, param_shardings, zero_axis="data")
    opt_state = jol.sharding.init_sharded(opt, params, param_shardings, zero_axis="data")

    @functools.partial(jax.jit, in_shardings=(param_shardings, opt_shardings, batch_sharding, batch_sharding),
                       out_shardings=(param_shardings, opt_shardings))
    def zero_step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return jol.apply_updates(params, updates), opt_state

    for _ in range(5):
        params, opt_state = zero_step(params, opt_state, x, y)
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from jaxopt_lite import tree as _tree
from jaxopt_lite.wrappers.quantize_state import QuantizedArray

__all__ = ["init_sharded", "state_shardings"]

_OWNER = "state_shardings"


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def _axis_names(entry: Any) -> tuple:
    """The mesh axis names one entry of a ``PartitionSpec`` uses."""
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _entries(sharding: NamedSharding, ndim: int) -> list:
    """The spec of ``sharding`` as one entry per axis of an ``ndim``-array (missing trailing entries: ``None``)."""
    spec = list(sharding.spec)
    return spec + [None] * (ndim - len(spec))


def _named(like: NamedSharding, entries: list) -> NamedSharding:
    while entries and entries[-1] is None:
        entries = entries[:-1]
    return NamedSharding(like.mesh, PartitionSpec(*entries), memory_kind=like.memory_kind)


def _zero(sharding: NamedSharding, shape: tuple[int, ...], zero_axis: Any, zero_size: int) -> NamedSharding:
    """``sharding`` also split over ``zero_axis`` along the largest free axis its size divides (ZeRO-1)."""
    entries = _entries(sharding, len(shape))
    names = _axis_names(zero_axis)
    if any(name in _axis_names(e) for e in entries for name in names):
        return sharding  # already sharded over that axis (FSDP): the state follows
    free = [i for i, (n, e) in enumerate(zip(shape, entries)) if e is None and n > 0 and n % zero_size == 0]
    if not free:
        return sharding
    axis = max(free, key=lambda i: (shape[i], -i))
    entries[axis] = zero_axis
    return _named(sharding, entries)


def _reduced(sharding: NamedSharding, shape: tuple[int, ...], stat: tuple[int, ...]) -> list | None:
    """The spec entries of a statistic of shape ``stat`` reduced from a parameter of ``shape``; ``None`` if unclear."""
    entries = _entries(sharding, len(shape))
    candidates = []
    if len(stat) == len(shape) and all(s in (n, 1) for s, n in zip(stat, shape)):
        candidates.append([e if s == n else None for s, n, e in zip(stat, shape, entries)])  # keepdims
    elif len(stat) < len(shape) <= 12:
        for kept in itertools.combinations(range(len(shape)), len(stat)):
            if tuple(shape[i] for i in kept) == stat:
                candidates.append([entries[i] for i in kept])
    if not candidates or any(c != candidates[0] for c in candidates):
        return None
    return candidates[0]


def _quantized(q: QuantizedArray, sharding: NamedSharding) -> QuantizedArray:
    """The shardings of a quantized leaf's codes and scales, from ``sharding``, that of the leaf it holds."""
    shape, j = q.shape, q.block_axis
    if not shape:
        return QuantizedArray(sharding, _named(sharding, []), shape, q.dtype, q.bits, q.block_size, q.signed)
    entries = _entries(sharding, len(shape))
    names = _axis_names(entries[j])
    parts = int(np.prod([sharding.mesh.shape[n] for n in names]))
    per_device = int(np.prod(shape[j:])) // parts
    whole = bool(names) and all(e is None for e in entries[j + 1:]) and shape[j] % parts == 0

    def block_axis(unit: int) -> list:
        return entries[:j] + [entries[j] if whole and per_device % unit == 0 else None]

    codes = sharding if q.bits == 8 else _named(sharding, block_axis(2))
    return QuantizedArray(codes, _named(sharding, block_axis(q.block_size)), shape, q.dtype, q.bits, q.block_size,
                          q.signed)


def _check_params(params: Any, param_shardings: Any, zero_axis: Any) -> Any:
    """Checks ``param_shardings`` against ``params`` and ``zero_axis``; returns the mesh they share."""
    try:
        _tree.check_same_structure(param_shardings, params, "param_shardings", "params")
    except ValueError as error:
        raise ValueError(f"{_OWNER}: {error} (one NamedSharding per parameter)") from None
    pairs = jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    if not pairs:
        raise ValueError(f"{_OWNER}: params has no leaves, so there is no mesh to shard the state on")
    mesh = None
    for (path, sharding), param in zip(pairs, jax.tree.leaves(params)):
        where = jax.tree_util.keystr(path) or "the root"
        if not isinstance(sharding, NamedSharding):
            if isinstance(sharding, PartitionSpec):
                got, hint = f"a PartitionSpec, {sharding}", f"wrap it as NamedSharding(mesh, {sharding})"
            elif isinstance(sharding, Sharding):
                got, hint = f"a {type(sharding).__name__}", "other shardings (single-device, GSPMD) are not supported"
            else:
                got, hint = f"{type(sharding).__name__} {sharding!r}", "not a sharding"
            raise TypeError(
                f"{_OWNER}: param_shardings must hold one jax.sharding.NamedSharding per parameter (e.g. "
                f"NamedSharding(mesh, PartitionSpec('model', None))), but at {where} it holds {got}: {hint}"
            )
        if mesh is None:
            mesh = sharding.mesh
        elif sharding.mesh != mesh:
            raise ValueError(
                f"{_OWNER}: all param_shardings must be on one mesh, but {where} is on {sharding.mesh}, "
                f"the first parameter on {mesh}"
            )
        if len(sharding.spec) > len(_shape(param)):
            raise ValueError(
                f"{_OWNER}: the sharding of {where}, {sharding.spec}, names more axes than the parameter has "
                f"(shape {_shape(param)})"
            )
    if zero_axis is not None:
        names = _axis_names(zero_axis)
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"{_OWNER}: zero_axis must be a mesh axis name or a tuple of them, got {zero_axis!r}")
        missing = [n for n in names if n not in mesh.axis_names]
        if missing:
            raise ValueError(
                f"{_OWNER}: zero_axis {zero_axis!r}: mesh axis {missing[0]!r} is not in the parameters' mesh, "
                f"whose axes are {tuple(mesh.axis_names)}"
            )
    return mesh


def state_shardings(
    tx: Any, params: Any, param_shardings: Any, *, zero_axis: str | tuple[str, ...] | None = None
) -> Any:
    """One ``NamedSharding`` per leaf of ``tx.init(params)``: the state follows the parameters (module docstring).

    ``tx`` is a :class:`GradientTransformation` (or anything with ``init``); ``params`` its parameters,
    arrays or ``jax.ShapeDtypeStruct`` s (only shapes are used: the state is shaped by ``jax.eval_shape``);
    ``param_shardings`` a tree like ``params`` with a ``NamedSharding`` per leaf, all on one mesh.
    Returns a tree shaped like ``tx.init(params)``:

    - a leaf shaped like its parameter gets the parameter's sharding;
    - a statistic reduced from its parameter over some axes (Adafactor's factors, SM3's
      accumulators) gets the parameter's spec without those axes, when they can be told apart;
    - a stack of parameter-shaped buffers gets the parameter's spec on its trailing axes;
    - a leaf quantized by ``quantize_state`` (codes and scales) follows the parameter on the axes it keeps;
    - everything else (counts, scalars, hyperparameters, keys) is replicated, ``NamedSharding(mesh, P())``.

    ``zero_axis`` (ZeRO-1): parameter-shaped leaves are also split over that mesh axis (or tuple of
    axes) along their largest unsharded axis that its size divides; see the module docstring.

    Example::

        mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
        shardings = {"w": NamedSharding(mesh, P(None, "model")), "b": NamedSharding(mesh, P())}
        opt = jol.adam(1e-3)
        opt_shardings = state_shardings(opt, params, shardings, zero_axis="data")
        opt_state = jax.jit(opt.init, out_shardings=opt_shardings)(params)
        step = jax.jit(train_step, in_shardings=(shardings, opt_shardings, batch),
                       out_shardings=(shardings, opt_shardings))

    Raises ``ValueError`` if ``param_shardings`` is not shaped like ``params``, is on several meshes, or
    ``zero_axis`` is not an axis of the mesh, and ``TypeError`` for a sharding that is not a ``NamedSharding``.
    """
    if not hasattr(tx, "init"):
        raise TypeError(f"{_OWNER}: tx must be a GradientTransformation (with init), got {type(tx).__name__}")
    mesh = _check_params(params, param_shardings, zero_axis)
    replicated = NamedSharding(mesh, PartitionSpec())
    zero_size = int(np.prod([mesh.shape[n] for n in _axis_names(zero_axis)])) if zero_axis is not None else 1

    params_def = jax.tree.structure(params)
    shapes = [_shape(p) for p in jax.tree.leaves(params)]
    param_shardings_flat = jax.tree.leaves(param_shardings)
    # The sharding of each parameter's parameter-shaped state leaves.
    param_states = [sharding if zero_axis is None else _zero(sharding, shape, zero_axis, zero_size)
                    for shape, sharding in zip(shapes, param_shardings_flat)]

    def of_param(i: int, leaf: Any) -> NamedSharding:
        if isinstance(leaf, QuantizedArray):  # quantize_state's codes and scales follow the leaf they hold
            return _quantized(leaf, of_param(i, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)))
        shape, stat = shapes[i], _shape(leaf)
        if stat == shape:
            return param_states[i]
        if stat == ():
            return replicated
        extra = len(stat) - len(shape)
        if extra > 0 and stat[extra:] == shape:
            return _named(param_states[i], [None] * extra + _entries(param_states[i], len(shape)))
        entries = _reduced(param_shardings_flat[i], shape, stat)
        return replicated if entries is None else _named(param_shardings_flat[i], entries)

    def per_parameter(node: Any) -> Any:
        parts = params_def.flatten_up_to(node)
        return params_def.unflatten([jax.tree.map(lambda x, i=i: of_param(i, x), part,
                                                  is_leaf=lambda x: isinstance(x, QuantizedArray))
                                     for i, part in enumerate(parts)])

    def has_params_prefix(node: Any) -> bool:
        try:
            params_def.flatten_up_to(node)
        except (ValueError, TypeError):
            return False
        return True

    def assign(node: Any) -> Any:
        if jax.tree.structure(node) == params_def:
            return per_parameter(node)
        children, level = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if level == jax.tree.structure(0):  # a leaf of no parameter
            return replicated
        if not any(_tree.is_subtree_of(params, child) for child in children) and has_params_prefix(node):
            return per_parameter(node)
        return level.unflatten([assign(child) for child in children])

    return assign(jax.eval_shape(tx.init, params))


def init_sharded(tx: Any, params: Any, param_shardings: Any, *, zero_axis: str | tuple[str, ...] | None = None) -> Any:
    """``tx.init(params)`` built directly with the shardings of :func:`state_shardings` (nothing gathered).

    ``params`` (arrays) are first placed with ``param_shardings`` (no copy if they already are), then
    ``jax.jit(tx.init, out_shardings=state_shardings(tx, params, param_shardings, zero_axis=zero_axis))``
    runs on them, so each device allocates only its shards of the state.

    Example::

        opt_state = init_sharded(jol.adamw(1e-3), params, param_shardings, zero_axis="data")
    """
    shardings = state_shardings(tx, params, param_shardings, zero_axis=zero_axis)
    params = jax.device_put(params, param_shardings)
    return jax.jit(tx.init, out_shardings=shardings)(params)
