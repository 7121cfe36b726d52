"""The fused layout: many parameter leaves kept in one flat buffer per dtype.

An optimizer step is pure memory traffic, and per-leaf work costs twice over
when a model has thousands of leaves: XLA emits a few kernels per leaf (slow
steps on small leaves) and compiles each one (compile time grows with the leaf
count). Keeping the parameters *fused* removes both costs: every transform
sees one leaf per dtype, so the optimizer compiles and runs as for a single
array, whatever the number of leaves.

Usage — fuse once, keep params, gradients and optimizer state fused across
steps, and unfuse only inside the loss::

    fused = jol.fuse(params)                 # one concatenation, once
    opt = jol.adamw(1e-3)
    state = opt.init(fused)                  # moments are fused too

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(fused, state, batch):
        grads = jax.grad(lambda f: loss(f.tree(), batch))(fused)   # grads come back fused
        updates, state = opt.update(grads, state, fused)
        return jol.apply_updates(fused, updates), state

``f.tree()`` returns views (slices) of the buffers; their gradient is written
straight into one fused buffer, so no step concatenates anything.

Elementwise transforms (the Adam, SGD, RMSProp and sign families, the
parameter-free and schedule-free optimizers, clipping by value or global norm,
weight decay without a mask, schedules) give the same results on a fused tree
as on the original one, to float rounding. Transforms whose meaning is per leaf
or per matrix — ``clip_by_norm``, ``adaptive_grad_clip``, the block-RMS and
block-norm scalings, ``centralize``, ``scale_by_trust_ratio`` (LAMB, LARS,
Fromage), NovoGrad, Adafactor, SM3, layer-wise DoG, Muon, GaLore, ``masked``,
``partition`` — refuse a fused tree with a clear error; apply them to the
unfused tree instead. ``tests/test_fused.py`` classifies every optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each leaf of a tree lives in the fused buffers (static, hashable).

    ``slots[i] = (buffer, offset, shape)`` for leaf ``i`` of ``treedef``;
    ``dtypes[b]`` is the dtype of buffer ``b`` and ``sizes[b]`` its length.
    """

    treedef: Any
    slots: tuple[tuple[int, int, tuple[int, ...]], ...]
    dtypes: tuple[np.dtype, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, tree: Any) -> Layout:
        leaves, treedef = jax.tree.flatten(tree)
        dtypes: list[np.dtype] = []
        sizes: list[int] = []
        slots = []
        for leaf in leaves:
            dtype, shape = np.dtype(jnp.result_type(leaf)), tuple(np.shape(leaf))
            if dtype not in dtypes:
                dtypes.append(dtype)
                sizes.append(0)
            b = dtypes.index(dtype)
            slots.append((b, sizes[b], shape))
            sizes[b] += int(np.prod(shape, dtype=np.int64))
        return cls(treedef, tuple(slots), tuple(dtypes), tuple(sizes))


@jax.tree_util.register_pytree_with_keys_class
class Fused:
    """A pytree stored as one flat buffer per dtype.

    Its children are the buffers (so every transform maps over them); its
    static part is the :class:`Layout`. Build it with :func:`fuse`, read the
    original tree back with :meth:`tree`.
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: tuple[Any, ...], layout: Layout):
        self.buffers = tuple(buffers)
        self.layout = layout

    def tree(self) -> Any:
        """The original tree: each leaf a reshaped slice of its buffer."""
        leaves = [
            jax.lax.slice_in_dim(self.buffers[b], offset, offset + int(np.prod(shape, dtype=np.int64))).reshape(shape)
            for b, offset, shape in self.layout.slots
        ]
        return jax.tree.unflatten(self.layout.treedef, leaves)

    def tree_flatten_with_keys(self):
        keys = [jax.tree_util.GetAttrKey(f"buffers[{np.dtype(d).name}]") for d in self.layout.dtypes]
        return list(zip(keys, self.buffers)), self.layout

    @classmethod
    def tree_unflatten(cls, layout: Layout, buffers: Any) -> Fused:
        return cls(tuple(buffers), layout)

    def __repr__(self) -> str:
        parts = ", ".join(f"{np.dtype(d).name}[{s}]" for d, s in zip(self.layout.dtypes, self.layout.sizes))
        return f"Fused({len(self.layout.slots)} leaves in {parts})"


def fuse(tree: Any) -> Fused:
    """Concatenates the leaves of ``tree`` into one flat buffer per dtype (done once, not per step)."""
    layout = Layout.of(tree)
    leaves = jax.tree.leaves(tree)
    groups: list[list[Any]] = [[] for _ in layout.dtypes]
    for leaf, (b, _, _) in zip(leaves, layout.slots):
        groups[b].append(jnp.ravel(jnp.asarray(leaf)))
    buffers = tuple(
        jnp.concatenate(g) if len(g) > 1 else g[0] if g else jnp.zeros((0,), d) for g, d in zip(groups, layout.dtypes)
    )
    return Fused(buffers, layout)


def unfuse(fused: Fused) -> Any:
    """The tree that :func:`fuse` was given (``fused.tree()``)."""
    return fused.tree()


def is_fused(tree: Any) -> bool:
    """Whether ``tree`` is or contains a :class:`Fused` node."""
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Fused))
    return any(isinstance(x, Fused) for x in nodes)


def reject_fused(owner: str, *trees: Any) -> None:
    """Raises ``ValueError`` if a per-leaf transform is given a fused tree."""
    if any(is_fused(t) for t in trees):
        raise ValueError(
            f"{owner} acts on each parameter leaf separately, but was given a fused tree (jaxopt_lite.fuse), "
            "whose leaves are whole flat buffers; apply it to the unfused tree (fused.tree()) instead"
        )
