"""Masks and labels: apply transformations to some parameters only.

Masks and labels are *static* descriptions of which parameters a wrapper acts
on: a pytree with the structure of the parameters (or a prefix of it: one leaf
then covers a whole subtree), or a callable that builds that tree from the
parameters. Their leaves must be concrete Python values, never traced arrays:
they decide the structure of the state.
"""

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple, Union

import jax
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    pytree_factory,
    set_to_zero,
    with_extra_args_support,
)
from jaxopt_lite.fused import reject_fused

# ----------------------------------------------------------------------------
# Masking.
# ----------------------------------------------------------------------------

MaskOrFn = Union[Any, Callable[[Params], Any], None]  # a mask tree, or a function of the params returning one (Optax's name)


class MaskedState(NamedTuple):
    """State of :func:`masked`: the state of the inner transformation.

    The inner state was built from the parameters with every masked-out
    subtree replaced by a :class:`MaskedNode`, so it holds no buffers for them.
    """

    inner_state: Any


class MaskedNode(NamedTuple):
    """Placeholder for a masked-out leaf or subtree.

    It is a pytree node with no children, so ``jax.tree.map`` and friends skip
    it: the inner transformation of :func:`masked` never sees the masked-out
    parameters and keeps no state for them.
    """


def _describe(tree: Any) -> str:
    return _tree._describe(tree)  # noqa: SLF001 - shared helper of this package


def _is_mask_callable(mask: Any) -> bool:
    """A mask is a function of the params if it (or every one of its leaves) is callable."""
    if callable(mask) and not isinstance(mask, (bool, np.bool_)):
        leaves = jax.tree.leaves(mask)
        # A bare function is a leaf of itself; a pytree of functions is not supported.
        return len(leaves) == 1 and leaves[0] is mask
    return False


def _subtrees_up_to(prefix: Any, tree: Any, owner: str, prefix_name: str, tree_name: str) -> list:
    """The subtrees of ``tree`` under each leaf of ``prefix`` (``prefix`` must be a prefix of ``tree``)."""
    treedef = jax.tree.structure(prefix)
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{owner}: {prefix_name} must have the tree structure of {tree_name} (or a prefix of it), but\n"
            f"  {prefix_name}: {_describe(prefix)}\n  {tree_name}: {_describe(tree)}"
        ) from e


def _mask_value(owner: str, value: Any) -> bool:
    """A mask leaf as a Python bool; traced or non-scalar leaves are rejected."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    arr = _checks.concrete(value)
    if arr is None:
        raise TypeError(
            f"{owner}: mask leaves must be concrete booleans (the mask is static), got {value!r}; "
            "build the mask from Python values, not from traced arrays"
        )
    if arr.shape != () or not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(
            f"{owner}: each mask leaf must be a single boolean (one per parameter or subtree), "
            f"got a value of dtype {arr.dtype} and shape {arr.shape}"
        )
    return bool(arr)


def _is_stand_in(params: Any) -> bool:
    """Whether ``params`` is a placeholder object rather than a tree of arrays or numbers: an opaque leaf,
    or a registered pytree node with no children (as Optax's ``tree_map_params`` passes)."""
    treedef = jax.tree.structure(params)
    if treedef.num_leaves == 0 and treedef.num_nodes == 1:
        return not isinstance(params, (dict, list, tuple, type(None)))
    leaves = jax.tree.leaves(params)
    return (
        len(leaves) == 1
        and leaves[0] is params
        and not isinstance(params, (jax.Array, np.ndarray, np.generic, int, float, complex, jax.ShapeDtypeStruct))
        and not hasattr(params, "shape")
    )


def _reject_fused_unless_uniform(owner: str, mask: Any, tree: Any) -> None:
    """A fused tree's leaves are whole buffers: only a single mask value (or label) keeps its meaning."""
    if _is_mask_callable(mask) or len(jax.tree.leaves(mask)) != 1:
        reject_fused(owner, tree)


def _resolve_mask(owner: str, mask: Any, tree: Any) -> tuple[Any, list[bool]]:
    """Returns ``(mask_treedef, flags)`` with one Python bool per leaf of the mask tree."""
    _reject_fused_unless_uniform(owner, mask, tree)
    mask_tree = mask(tree) if _is_mask_callable(mask) else mask
    _subtrees_up_to(mask_tree, tree, owner, "mask", "params")
    leaves, treedef = jax.tree.flatten(mask_tree)
    return treedef, [_mask_value(owner, m) for m in leaves]


def _apply_mask(treedef: Any, flags: list[bool], tree: Any) -> Any:
    """``tree`` with each subtree whose flag is False replaced by a :class:`MaskedNode`."""
    subtrees = treedef.flatten_up_to(tree)
    return treedef.unflatten([s if f else MaskedNode() for s, f in zip(subtrees, flags)])


def _merge_masked(treedef: Any, flags: list[bool], new: Any, old: Any) -> Any:
    """Takes subtrees from ``new`` where the flag is True and from ``old`` elsewhere."""
    new_sub = treedef.flatten_up_to(new)
    old_sub = treedef.flatten_up_to(old)
    return treedef.unflatten([n if f else o for n, o, f in zip(new_sub, old_sub, flags)])


@pytree_factory
def masked(
    inner: GradientTransformation,
    mask: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies ``inner`` to the parameters selected by ``mask`` and passes the rest through.

    Typical use: no weight decay on biases and norm scales::

        mask_fn = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
        tx = masked(add_decayed_weights(1e-4), mask_fn)

    Args:
      inner: the transformation to apply to the selected parameters.
      mask: a pytree of booleans with the structure of the params (or a prefix
        of it), ``True`` where ``inner`` applies; or a callable returning such a
        tree given the params (at ``init``) or the updates (at ``update``). The
        mask is static: its leaves must be concrete booleans.
      mask_compatible_extra_args: if ``True``, every extra keyword argument of
        ``update`` whose tree structure equals that of the updates is masked in
        the same way before it reaches ``inner``. Default ``False``.

    Returns:
      A transformation whose state is ``MaskedState(inner_state)``. ``inner``
      sees the params/updates with masked-out subtrees replaced by
      :class:`MaskedNode` (a node with no leaves), so it stores nothing for
      them. Masked-out updates are returned unchanged.

    Raises:
      ValueError: if the mask's tree is not the params' tree (or a prefix of it);
        the message shows both trees.
      TypeError: if a mask leaf is not a concrete scalar boolean.
    """
    inner = with_extra_args_support(inner)

    def init(params):
        if _is_stand_in(params):
            # A stand-in for the whole params tree (Optax's tree_map_params passes one to find the
            # params-shaped parts of the state): the mask cannot be applied to it, so hand it on whole.
            # The structures are checked in update, where the real updates and params are known.
            return MaskedState(inner_state=inner.init(params))
        treedef, flags = _resolve_mask("masked", mask, params)
        return MaskedState(inner_state=inner.init(_apply_mask(treedef, flags, params)))

    def update(updates, state, params=None, **extra_args):
        _checks.check_state_type("masked", state, MaskedState)
        treedef, flags = _resolve_mask("masked", mask, updates)
        masked_updates = _apply_mask(treedef, flags, updates)
        masked_params = None
        if params is not None:
            _subtrees_up_to(treedef.unflatten(flags), params, "masked", "mask", "params")
            masked_params = _apply_mask(treedef, flags, params)
        if mask_compatible_extra_args:
            updates_def = jax.tree.structure(updates)
            extra_args = {
                k: _apply_mask(treedef, flags, v) if jax.tree.structure(v) == updates_def else v
                for k, v in extra_args.items()
            }
        new_masked, inner_state = inner.update(masked_updates, state.inner_state, masked_params, **extra_args)
        return _merge_masked(treedef, flags, new_masked, updates), MaskedState(inner_state=inner_state)

    return GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------
# Partitioning: one transformation per group of parameters.
# ----------------------------------------------------------------------------


class PartitionState(NamedTuple):
    """State of :func:`partition`: ``inner_states[label]`` is the :class:`MaskedState` of that group."""

    inner_states: Mapping[Hashable, OptState]


MultiTransformState = PartitionState


def _resolve_labels(owner: str, param_labels: Any, tree: Any, known: Mapping[Hashable, Any]) -> tuple[Any, list]:
    _reject_fused_unless_uniform(owner, param_labels, tree)
    labels_tree = param_labels(tree) if _is_mask_callable(param_labels) else param_labels
    _subtrees_up_to(labels_tree, tree, owner, "param_labels", "params")
    leaves, treedef = jax.tree.flatten(labels_tree)
    for label in leaves:
        try:
            ok = label in known
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{owner}: label {label!r} has no transformation; known labels: {sorted(map(repr, known))}"
            )
    return treedef, leaves


@pytree_factory
def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies a different transformation to each labelled group of parameters.

    Example: Adam on weights, plain SGD on biases::

        labels = {"w": "adam", "b": "sgd"}
        tx = partition({"adam": adam(1e-3), "sgd": sgd(1e-2)}, labels)

    Args:
      transforms: a mapping from label to transformation.
      param_labels: a pytree of labels with the structure of the params (or a
        prefix of it), or a callable returning such a tree given the params (at
        ``init``) or the updates (at ``update``). Every label must be a key of
        ``transforms``; the labelling is static.
      mask_compatible_extra_args: passed to the :func:`masked` wrapper of each
        group (masks extra arguments shaped like the updates). Default ``False``.

    Returns:
      A transformation with state ``PartitionState(inner_states)``, a dict from
      label to the :class:`MaskedState` of that group's transformation (which
      holds state only for that group's parameters). A label without any
      parameters still gets an (empty) state.

    Raises:
      ValueError: if a label is not a key of ``transforms`` (the message names the
        label and the known ones), or if the labels' tree does not match the params.
    """
    transforms = {k: with_extra_args_support(v) for k, v in transforms.items()}
    if not transforms:
        raise ValueError("partition: transforms must name at least one transformation")

    def group_mask(treedef, labels, group):
        return treedef.unflatten([label == group for label in labels])

    def init(params):
        treedef, labels = _resolve_labels("partition", param_labels, params, transforms)
        return PartitionState(
            inner_states={
                group: masked(
                    tx, group_mask(treedef, labels, group), mask_compatible_extra_args=mask_compatible_extra_args
                ).init(params)
                for group, tx in transforms.items()
            }
        )

    def update(updates, state, params=None, **extra_args):
        treedef, labels = _resolve_labels("partition", param_labels, updates, transforms)
        missing = [g for g in transforms if g not in state.inner_states]
        if missing:
            raise ValueError(f"partition: the state has no entry for labels {missing}; was it built by this init?")
        new_states = {}
        for group, tx in transforms.items():
            tx = masked(tx, group_mask(treedef, labels, group), mask_compatible_extra_args=mask_compatible_extra_args)
            updates, new_states[group] = tx.update(updates, state.inner_states[group], params, **extra_args)
        return updates, PartitionState(inner_states=new_states)

    return GradientTransformationExtraArgs(init, update)


@pytree_factory
def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """The former name of :func:`partition` (same arguments, state and behaviour)."""
    return partition(transforms, param_labels, mask_compatible_extra_args=mask_compatible_extra_args)


@pytree_factory
def freeze(mask: bool | Any) -> GradientTransformationExtraArgs:
    """Zeroes the updates of the parameters where ``mask`` is ``True`` (holds them fixed).

    ``mask`` is a static boolean, or a pytree of booleans with the structure of
    the params (or a prefix of it), or a callable building one from the params.
    Other updates pass through unchanged. State: ``MaskedState(EmptyState())``.

    Note this only zeroes the updates: a transformation chained *before* it
    still keeps state for frozen parameters. Use :func:`selective_transform` to
    keep an optimizer from seeing them at all.
    """
    return masked(set_to_zero(), mask)


@pytree_factory
def selective_transform(
    optimizer: GradientTransformation, *, freeze_mask: bool | Any
) -> GradientTransformationExtraArgs:
    """Runs ``optimizer`` on the trainable parameters only; frozen ones get zero updates.

    ``freeze_mask`` is a static boolean or a pytree of booleans (structure of the
    params, or a prefix of it), or a function of the params returning one;
    ``True`` marks the parameters to freeze. This is
    ``partition({"train": optimizer, "freeze": set_to_zero()}, labels)``, so the
    state is ``PartitionState({"train": MaskedState, "freeze": MaskedState})``
    and ``optimizer`` stores nothing for frozen parameters.
    """

    def labels(params):
        mask = freeze_mask(params) if _is_mask_callable(freeze_mask) else freeze_mask
        return jax.tree.map(lambda m: "freeze" if _mask_value("selective_transform", m) else "train", mask)

    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)
