"""Adam-mini (Zhang et al., 2024): Adam's first moment per parameter, one second moment per block.

Reference: Y. Zhang, C. Chen, Z. Li, T. Ding, C. Wu, D. P. Kingma, Y. Ye, Z.-Q. Luo, R. Sun,
"Adam-mini: Use Fewer Learning Rates To Gain More", arXiv:2406.16793, 2024 (Algorithm 1); the
authors' code is ``zyushun/Adam-mini`` (``pip install adam-mini``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks, numerics
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
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array
BlockFn = Callable[[tuple, Any], Any]


class AdamMiniState(NamedTuple):
    """Step count, the first moment (one number per parameter, shaped like the params) and the second
    moment: for each leaf one number per block, an array of the leaf's shape without the axes its
    blocks reduce (``()`` for a leaf that is one block, the leaf's shape for per-parameter blocks)."""

    count: jax.Array
    mu: Any
    nu: Any


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(jnp.shape(leaf))


def _path_names(path: tuple) -> list[str]:
    """The names of a key path's entries: dict keys, attribute names, sequence indices (as strings)."""
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
        else:
            names.append(str(entry))
    return names


def _matches(rule: Any, path: tuple, leaf: Any) -> bool:
    if callable(rule):
        return bool(rule(path, leaf))
    names = _path_names(path)
    return any(pattern in name for pattern in rule for name in names)


def adam_mini_row_blocks(path: tuple, leaf: Any) -> tuple[int, ...] | None:
    """A ``block_fn`` for :func:`scale_by_adam_mini`: one block per index of the first axis of every leaf of
    two or more axes (a row of a PyTorch-layout ``(out, in)`` weight: one output neuron), the whole leaf for
    vectors and scalars. Returns the reduced axes, ``(1, ..., ndim - 1)``, or ``None`` (the whole leaf)."""
    del path
    ndim = len(_shape(leaf))
    return tuple(range(1, ndim)) if ndim >= 2 else None


@dataclasses.dataclass(frozen=True)
class AdamMiniPartition:
    """The ``block_fn`` :func:`adam_mini_partition` returns; equal ones compare equal (no recompilation)."""

    per_parameter: tuple[str, ...] | Callable[[tuple, Any], bool]
    per_row: tuple[str, ...] | Callable[[tuple, Any], bool]
    block_axes: tuple[int, ...]

    def __call__(self, path: tuple, leaf: Any) -> tuple[int, ...] | None:
        ndim = len(_shape(leaf))
        if _matches(self.per_parameter, path, leaf):
            return ()
        if ndim >= 2 and _matches(self.per_row, path, leaf):
            kept = {a % ndim for a in self.block_axes if -ndim <= a < ndim}
            return tuple(a for a in range(ndim) if a not in kept)
        return None


def _rule(name: str, rule: Any) -> tuple[str, ...] | Callable[[tuple, Any], bool]:
    if isinstance(rule, str):
        return (rule,)
    if callable(rule):
        return rule
    try:
        rule = tuple(rule)
    except TypeError:
        rule = None
    if rule is None or not all(isinstance(x, str) for x in rule):
        raise TypeError(f"adam_mini_partition: {name} must be strings or a function (path, leaf) -> bool")
    return rule


def adam_mini_partition(
    per_parameter: Sequence[str] | Callable[[tuple, Any], bool] = ("embed", "embd", "wte", "lm_head", "output"),
    per_row: Sequence[str] | Callable[[tuple, Any], bool] = ("q_proj", "k_proj", "wq", "wk"),
    block_axes: int | Sequence[int] = (0,),
) -> AdamMiniPartition:
    """A ``block_fn`` for :func:`scale_by_adam_mini` by parameter name, as the paper partitions Transformers.

    A leaf matches a rule when one of its key path's names (dict keys, attribute names, indices) contains
    one of the rule's strings; a rule may also be a function ``(path, leaf) -> bool``. Then:

    - ``per_parameter`` (default: ``"embed", "embd", "wte", "lm_head", "output"``, the authors' embedding
      and output layers): ``()``, no axis reduced, one second moment per parameter (full Adam);
    - ``per_row`` (default: ``"q_proj", "k_proj", "wq", "wk"``, the authors' queries and keys), for
      leaves of two or more axes: one block per index of ``block_axes`` (default ``(0,)``: the rows of a
      PyTorch-layout ``(out, in)`` weight; ``-1`` for a Flax ``(in, out)`` kernel; ``1`` for a Flax
      attention kernel ``(embed, heads, head_dim)``: one block per head);
    - every other leaf (vectors matching ``per_row`` too): ``None``, one block (the paper's default).

    ``per_parameter`` is tried first. The authors give each query/key head one block; a fused
    ``(heads * head_dim, in)`` matrix gets one block per row here (finer), or per head when stored with a
    head axis. Equal partitions compare equal, so an optimizer rebuilt with a new but equal partition is
    not compiled again. Example: ``adam_mini(3e-4, block_fn=adam_mini_partition(block_axes=-1))``.
    """
    axes = (block_axes,) if isinstance(block_axes, int) else tuple(block_axes)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"adam_mini_partition: block_axes must be ints, got {block_axes!r}")
    return AdamMiniPartition(_rule("per_parameter", per_parameter), _rule("per_row", per_row), axes)


def _reduced_axes(owner: str, block_fn: BlockFn | None, path: tuple, leaf: Any) -> tuple[int, ...]:
    """The axes ``block_fn`` reduces for this leaf: sorted, non-negative, checked."""
    shape = _shape(leaf)
    ndim = len(shape)
    if block_fn is None:
        return tuple(range(ndim))
    axes = block_fn(path, leaf)
    where = jax.tree_util.keystr(path) or "<root>"
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int) and not isinstance(axes, bool):
        axes = (axes,)
    try:
        axes = tuple(axes)
    except TypeError:
        axes = None
    if axes is None or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise TypeError(
            f"{owner}: block_fn must return None or a tuple of axes (ints), got {axes!r} for parameter {where}"
        )
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(
            f"{owner}: block_fn returned axes {axes} for parameter {where} of shape {tuple(shape)}: "
            f"each axis must be in [{-ndim}, {ndim})"
        )
    normalized = sorted(a % ndim for a in axes) if ndim else []
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{owner}: block_fn returned repeated axes {axes} for parameter {where}")
    return tuple(normalized)


@pytree_factory
def scale_by_adam_mini(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    mu_dtype: Any = None,
    *,
    block_fn: BlockFn | None = None,
) -> GradientTransformation:
    r"""Adam-mini's direction (Zhang et al., 2024, Algorithm 1): Adam with one second moment per block.

    ``block_fn(path, leaf)`` (``path`` the leaf's key path, as ``jax.tree_util.tree_flatten_with_path``
    gives it) returns the axes a block reduces over: ``None`` (the default, and ``block_fn=None``) for the
    whole leaf as one block; a tuple of axes for one block per index of the other axes (``()``: one block
    per parameter, i.e. Adam); see :func:`adam_mini_row_blocks` and :func:`adam_mini_partition`. It must
    depend only on the path and the shape (it decides the state's shapes). For each block ``b`` of ``n_b``
    entries, with ``t`` the step (1 at the first update):

    - ``m <- b1 m + (1-b1) g`` (per parameter),
    - ``v_b <- b2 v_b + (1-b2) mean_{i in b}(|g_i|^2)`` (one number per block),
    - ``u_i = (m_i / (1-b1^t)) / (sqrt(v_b / (1-b2^t)) + eps)``.

    ``eps`` is outside the root after the debiasing (as Adam and the authors' code). Block means are
    formed in at least float32; the state is kept in the parameter's dtype (``mu`` in ``mu_dtype`` if
    given). Complex parameters work (``|g|^2``; ``v`` kept in the complex dtype with a zero imaginary part,
    as :func:`~jaxopt_lite.scale_by_adam`). Memory: one number per parameter (``m``) plus one per block:
    about half of Adam's. Acts on each leaf on its own: a fused tree (:func:`jaxopt_lite.fuse`) is
    refused. Defaults (the authors' code): ``b1=0.9, b2=0.999, eps=1e-8``.
    """
    owner = "scale_by_adam_mini"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _checks.check_nonnegative(owner, "eps", eps)
    if block_fn is not None and not callable(block_fn):
        raise TypeError(f"{owner}: block_fn must be None or a function (path, leaf) -> axes, got {block_fn!r}")

    def init(params):
        _tree.check_floating(params, owner)
        reject_fused(owner, params)

        def nu_zeros(path, p):
            p = jnp.asarray(p) if not hasattr(p, "shape") else p
            axes = _reduced_axes(owner, block_fn, path, p)
            if not axes:
                return _tree.zeros_like(p)
            # One number per block, on the parameter's devices as the update's reduction puts it.
            return _tree.zeros_like(jnp.sum(p, axis=axes), jnp.result_type(p))

        return AdamMiniState(
            count=_tree.zero_count(),
            mu=_tree.accumulator_zeros(params, mu_dtype),
            nu=jax.tree_util.tree_map_with_path(nu_zeros, params),
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        _tree.check_same_structure(updates, state.nu, "updates", f"{owner} state")
        if params is not None:
            _tree.check_same_shapes(updates, params, "updates", "params")
        count = _tree.safe_increment(state.count)
        dtype = jnp.promote_types(jnp.result_type(float), jnp.result_type(b1, b2))
        t = count.astype(dtype)
        correction1 = 1.0 - jnp.asarray(b1, dtype) ** t
        correction2 = 1.0 - jnp.asarray(b2, dtype) ** t

        def leaf(path, g, m, v):
            axes = _reduced_axes(owner, block_fn, path, g)
            kept_shape = tuple(n for i, n in enumerate(g.shape) if i not in axes)
            if jnp.shape(v) != kept_shape:
                raise ValueError(
                    f"{owner}: the state's second moment of {jax.tree_util.keystr(path) or '<root>'} has shape "
                    f"{jnp.shape(v)}, but block_fn's blocks give {kept_shape} (a state made by another "
                    "block_fn, or for other parameters?)"
                )
            compute = numerics.accumulation_dtype([g])
            g2 = numerics.abs_sq(g.astype(jnp.promote_types(g.dtype, jnp.float32)))  # squared in >= float32
            n_b = math.prod(g.shape[i] for i in axes)
            block_mean = jnp.sum(g2, axis=axes) / max(n_b, 1) if axes else g2
            v_real = jnp.real(v).astype(compute) if jnp.iscomplexobj(v) else v.astype(compute)
            v_new = b2 * v_real + (1.0 - b2) * block_mean
            m_new = (b1 * m + (1.0 - b1) * g).astype(m.dtype)
            root = numerics.safe_sqrt(v_new / correction2.astype(compute))
            denominator = jnp.expand_dims(root + eps, axes)
            step = numerics.safe_div(m_new / correction1.astype(compute), denominator)
            return step.astype(g.dtype), m_new, v_new.astype(v.dtype)

        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        per_leaf = [
            leaf(path, g, m, v)
            for (path, g), m, v in zip(flat, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu))
        ]
        out, mu, nu = _tree.unzip_leaves(treedef, per_leaf, 3)
        return out, AdamMiniState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


@alias
def adam_mini(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
    *,
    block_fn: BlockFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Adam-mini (Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More").

    ``p <- p - learning_rate * (m_hat / (sqrt(v_hat_b) + eps) + weight_decay * p)``: AdamW whose second
    moment ``v_b`` is one number per block of parameters, the running mean of ``|g|^2`` over the block
    (:func:`scale_by_adam_mini`). Blocks by ``block_fn``: by default each leaf is one block;
    :func:`adam_mini_partition` gives the paper's Transformer partition (embedding and output layers
    per parameter, queries and keys per row or head, the rest per leaf). Weight decay is decoupled and
    multiplied by the learning rate (the authors' ``p <- p (1 - lr wd)``), on the leaves ``mask`` marks
    (the authors exempt names containing ``"norm"`` or ``"ln_f"``: pass such a mask).

    Memory: one number per parameter plus one per block (Adam: two per parameter). Acts on each leaf on
    its own: a fused tree is refused. Defaults: ``b1=0.9, b2=0.999, eps=1e-8, weight_decay=0``, as the
    authors' code (``zyushun/Adam-mini``, whose ``lr`` defaults to ``1e-3``; the authors recommend AdamW's
    values for all of them; ``pytorch_optimizer.AdamMini`` defaults to ``lr=1.0, weight_decay=0.1``); the
    learning rate has no default here, as Optax's aliases.
    """
    return chain(
        scale_by_adam_mini(b1, b2, eps, mu_dtype, block_fn=block_fn),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
