"""Wrappers: transformations built around other transformations.

Every wrapper takes one or more gradient transformations and returns a new one
(or, for :class:`MultiSteps` and :func:`params_ema`, a small object with pure
``init``/``update`` methods). All of them are pure functions of their inputs:
the state is an immutable pytree, ``jax.eval_shape(tx.init, params)`` works,
and ``update`` can be jitted, vmapped and differentiated like any other JAX
function.

Masks and labels
----------------
:func:`masked`, :func:`partition`, :func:`freeze` and :func:`selective_transform`
take a *static* description of which parameters they act on: a pytree with the
structure of the parameters (or a prefix of it: one leaf of the mask then
covers a whole subtree of parameters), or a callable that builds that tree from
the parameters. Its leaves must be concrete Python values, never traced arrays:
they decide the structure of the state.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    set_to_zero,
    with_extra_args_support,
)

__all__ = [
    "ApplyEvery",
    "ApplyIfFiniteState",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "ParamsEMA",
    "ParamsEMAState",
    "PartitionState",
    "ShouldSkipUpdateFunction",
    "apply_every",
    "apply_if_finite",
    "flatten",
    "freeze",
    "inject_hyperparams",
    "lookahead",
    "masked",
    "multi_transform",
    "params_ema",
    "partition",
    "selective_transform",
    "set_hyperparams",
    "skip_large_updates",
    "skip_not_finite",
]


# ----------------------------------------------------------------------------
# Masking.
# ----------------------------------------------------------------------------


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


def _resolve_mask(owner: str, mask: Any, tree: Any) -> tuple[Any, list[bool]]:
    """Returns ``(mask_treedef, flags)`` with one Python bool per leaf of the mask tree."""
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
        treedef, flags = _resolve_mask("masked", mask, params)
        return MaskedState(inner_state=inner.init(_apply_mask(treedef, flags, params)))

    def update(updates, state, params=None, **extra_args):
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


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """The former name of :func:`partition` (same arguments, state and behaviour)."""
    return partition(transforms, param_labels, mask_compatible_extra_args=mask_compatible_extra_args)


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


# ----------------------------------------------------------------------------
# Gradient accumulation.
# ----------------------------------------------------------------------------


class ShouldSkipUpdateFunction(Protocol):
    """Decides whether :class:`MultiSteps` should ignore a mini-step's gradients.

    Called as ``fn(updates, gradient_step, params)``; returns a scalar boolean
    array (``True`` to skip) and a pytree stored in ``MultiStepsState.skip_state``
    (for monitoring). Its structure must not depend on the input values.
    """

    def __call__(self, updates: Updates, gradient_step: jax.Array, params: Params | None) -> tuple[jax.Array, Any]:
        ...


def skip_not_finite(updates: Updates, gradient_step: jax.Array, params: Params | None) -> tuple[jax.Array, Any]:
    """Skips a mini-step whose updates hold a NaN or an infinity.

    Returns ``(should_skip, {"should_skip": should_skip, "num_not_finite": n})``,
    where ``n`` (int32) counts the non-finite elements over all leaves.
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(u), dtype=jnp.int32) for u in jax.tree.leaves(updates)]
    num_not_finite = sum(counts, jnp.zeros([], jnp.int32))
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(
    updates: Updates, gradient_step: jax.Array, params: Params | None, max_squared_norm: float | jax.Array
) -> tuple[jax.Array, Any]:
    """Skips a mini-step whose squared global norm is not below ``max_squared_norm``.

    A NaN norm also skips. Bind the threshold with ``functools.partial``.
    Returns ``(should_skip, {"should_skip": should_skip, "norm_squared": sq})``;
    the squared norm is accumulated in at least float32.
    """
    del gradient_step, params
    norm_sq = _tree.norm(updates, squared=True)
    should_skip = jnp.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps`.

    Attributes:
      mini_step: int32, the number of mini-steps accumulated since the last
        inner update (back to 0 after each inner update).
      gradient_step: int32, the number of inner (real) updates made so far.
      inner_opt_state: the state of the wrapped optimizer.
      acc_grads: the running mean (or sum) of this round's gradients, one buffer
        per parameter in ``accumulator_dtype``.
      skip_state: what ``should_skip_update_fn`` returned last (``()`` without one).
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


def _cond(pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
    """``lax.cond`` on a traced predicate; a plain Python branch on a concrete one.

    Eager calls then run (and compile) only the branch taken.
    """
    value = _checks.concrete(pred)
    if value is not None:
        return true_fn() if bool(value) else false_fn()
    return jax.lax.cond(pred, true_fn, false_fn)


def _no_skip(updates, gradient_step, params):
    del updates, gradient_step, params
    return jnp.zeros([], jnp.bool_), ()


def _check_k(owner: str, k: Any, name: str = "every_k_schedule") -> None:
    """Raises if a concrete ``k`` is not a positive integer (traced values pass unchecked)."""
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a positive integer, got {k!r}")
    arr = _checks.concrete(k)
    if arr is None:
        return
    if arr.shape != () or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{owner}: {name} must be a scalar integer, got {k!r}")
    if np.issubdtype(arr.dtype, np.floating) and not float(arr).is_integer():
        raise TypeError(f"{owner}: {name} must be an integer, got {float(arr):g}")
    if arr < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer (number of steps), got {arr.item()}")


class MultiSteps:
    """Gradient accumulation: one real optimizer step every ``k`` mini-steps.

    Each call to :meth:`update` adds the given gradients to a running mean (or
    sum); the wrapped optimizer is only run on the ``k``-th call, on the
    accumulated gradients, and its updates are returned then. On the other
    calls the returned updates are zeros (so ``apply_updates`` leaves the params
    unchanged) and the inner state is untouched. With ``use_grad_mean=True``,
    ``k`` steps on micro-batches equal one step on their concatenation (for a
    loss that is a mean over examples).

    Memory: one accumulator the size of the params (``acc_grads``), on top of
    the inner optimizer's state.

    Args:
      opt: the wrapped optimizer.
      every_k_schedule: the number of mini-steps per real step, an ``int >= 1``
        or a function of the (int32) ``gradient_step`` count returning one (to
        grow the effective batch size during training).
      use_grad_mean: average the accumulated gradients (default ``True``); if
        ``False`` they are summed.
      should_skip_update_fn: optional :class:`ShouldSkipUpdateFunction`, e.g.
        :func:`skip_not_finite`; a skipped mini-step changes nothing but
        ``skip_state`` and returns zero updates.
      accumulator_dtype: the dtype of ``acc_grads`` (default ``float32``);
        ``None`` uses each parameter's dtype.

    Raises:
      ValueError: if ``every_k_schedule`` (or, when concrete, its value) is not
        a positive integer.

    State: :class:`MultiStepsState`. Use :meth:`gradient_transformation` to get
    a plain transformation (e.g. to chain it), and :meth:`has_updated` to know
    whether the last call made a real step.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[jax.Array], jax.Array],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: Any = jnp.float32,
    ):
        self._opt = with_extra_args_support(opt)
        if callable(every_k_schedule):
            _check_k("MultiSteps", every_k_schedule(jnp.zeros([], jnp.int32)))
            self._every_k_schedule = every_k_schedule
        else:
            _check_k("MultiSteps", every_k_schedule)
            k = int(every_k_schedule) if _checks.concrete(every_k_schedule) is not None else every_k_schedule
            self._every_k_schedule = lambda step: k
        self._use_grad_mean = bool(use_grad_mean)
        self._should_skip_update_fn = should_skip_update_fn if should_skip_update_fn is not None else _no_skip
        self._accumulator_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

    @property
    def inner_opt(self) -> GradientTransformationExtraArgs:
        """The wrapped optimizer."""
        return self._opt

    def init(self, params: Params) -> MultiStepsState:
        """Zero accumulator and counters, and the inner optimizer's initial state."""
        gradient_step = jnp.zeros([], jnp.int32)
        _, skip_state = self._should_skip_update_fn(_tree.zeros_like(params), gradient_step, params)
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=_tree.zeros_like(params, dtype=self._accumulator_dtype),
            skip_state=skip_state,
        )

    def update(
        self, updates: Updates, state: MultiStepsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MultiStepsState]:
        """Accumulates ``updates``; on every ``k``-th call runs the inner optimizer on the accumulation."""
        _tree.check_same_structure(updates, state.acc_grads, "updates", "the accumulated gradients (state.acc_grads)")
        k = self._every_k_schedule(state.gradient_step)
        _check_k("MultiSteps", k)
        skip, skip_state = self._should_skip_update_fn(updates, state.gradient_step, params)
        skip = jnp.asarray(skip)
        if skip.shape != () or skip.dtype != jnp.bool_:
            raise ValueError(
                "MultiSteps: should_skip_update_fn must return a scalar boolean array first, "
                f"got dtype {skip.dtype} and shape {skip.shape}"
            )
        n = state.mini_step

        def accumulate(g, acc):
            if self._use_grad_mean:
                # Running mean, acc_n+1 = acc_n + (g - acc_n) / (n + 1): stays well scaled for any k.
                new = acc + (g.astype(acc.dtype) - acc) / (n + 1).astype(acc.dtype)
            else:
                new = acc + g.astype(acc.dtype)
            return new.astype(acc.dtype)

        acc = jax.tree.map(accumulate, updates, state.acc_grads)
        emit = jnp.logical_and(n >= k - 1, jnp.logical_not(skip))
        grads = _tree.cast_like(acc, updates)
        inner_state = state.inner_opt_state

        def run_inner():
            new_updates, new_state = self._opt.update(grads, inner_state, params, **extra_args)
            new_state = jax.tree.map(
                lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), new_state, inner_state
            )
            return new_updates, new_state

        def hold():
            out_shape = jax.eval_shape(run_inner)[0]
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape), inner_state

        new_updates, new_inner_state = _cond(emit, run_inner, hold)
        new_acc = jax.tree.map(
            lambda a, old: jnp.where(skip, old, jnp.where(emit, jnp.zeros_like(a), a)), acc, state.acc_grads
        )
        new_state = MultiStepsState(
            mini_step=jnp.where(skip, n, jnp.where(emit, 0, _tree.safe_increment(n))).astype(jnp.int32),
            gradient_step=jnp.where(emit, _tree.safe_increment(state.gradient_step), state.gradient_step).astype(
                jnp.int32
            ),
            inner_opt_state=new_inner_state,
            acc_grads=new_acc,
            skip_state=skip_state,
        )
        return new_updates, new_state

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the call that produced ``state`` made a real (inner) step."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        """This accumulator as a plain transformation (``init``, ``update``)."""
        return GradientTransformationExtraArgs(init=self.init, update=self.update)


class ApplyEvery(NamedTuple):
    """State of :func:`apply_every`: an int32 ``count`` and the running sum ``grad_acc``."""

    count: jax.Array
    grad_acc: Updates


def apply_every(k: int = 1) -> GradientTransformation:
    """Sums the updates over ``k`` steps and emits the sum every ``k``-th step, zeros otherwise.

    Unlike :class:`MultiSteps` this is a plain link in a chain: transforms
    before it still update their state every step. Default ``k=1`` (a no-op).
    State: ``ApplyEvery(count, grad_acc)`` where ``grad_acc`` has the params'
    structure and dtypes.
    """
    _check_k("apply_every", k, "k")

    def init(params):
        return ApplyEvery(count=_tree.zero_count(), grad_acc=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_structure(updates, state.grad_acc, "updates", "state.grad_acc")
        c = state.count % k
        restart = c == 0
        grad_acc = jax.tree.map(
            lambda u, a: (jnp.where(restart, jnp.zeros_like(a), a) + u).astype(a.dtype), updates, state.grad_acc
        )
        emit = c == k - 1
        out = jax.tree.map(lambda a, u: jnp.where(emit, a, jnp.zeros_like(a)).astype(u.dtype), grad_acc, updates)
        return out, ApplyEvery(count=(_tree.safe_increment(state.count) % k).astype(jnp.int32), grad_acc=grad_acc)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Robustness to non-finite gradients.
# ----------------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`.

    Attributes:
      notfinite_count: int32, consecutive steps with a NaN/Inf (reset by a finite step).
      last_finite: bool, whether the last step's updates were all finite.
      total_notfinite: int32, all steps with a NaN/Inf since ``init`` (never reset).
      inner_state: the wrapped transformation's state.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.ones([], jnp.bool_))


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformationExtraArgs:
    """Skips the steps whose updates hold a NaN or an infinity.

    A step with a non-finite update returns zero updates and leaves ``inner``'s
    state as it was (so params and optimizer moments are not corrupted); the
    step is counted. After more than ``max_consecutive_errors`` such steps in a
    row the wrapper gives up and passes the update to ``inner`` anyway (so a
    run that is truly broken shows it).

    State: :class:`ApplyIfFiniteState` ``(notfinite_count, last_finite,
    total_notfinite, inner_state)``.
    """
    _checks.check_nonnegative("apply_if_finite", "max_consecutive_errors", max_consecutive_errors)
    inner = with_extra_args_support(inner)

    def init(params):
        return ApplyIfFiniteState(
            notfinite_count=_tree.zero_count(),
            last_finite=jnp.ones([], jnp.bool_),
            total_notfinite=_tree.zero_count(),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        finite = _all_finite(updates)
        notfinite_count = jnp.where(finite, 0, _tree.safe_increment(state.notfinite_count)).astype(jnp.int32)
        accept = jnp.logical_or(finite, notfinite_count > max_consecutive_errors)
        old_inner = state.inner_state

        def run():
            u, s = inner.update(updates, old_inner, params, **extra_args)
            s = jax.tree.map(lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), s, old_inner)
            return u, s

        def reject():
            out_shape = jax.eval_shape(run)[0]
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape), old_inner

        new_updates, new_inner = _cond(accept, run, reject)
        total = jnp.where(finite, state.total_notfinite, _tree.safe_increment(state.total_notfinite))
        return new_updates, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=total.astype(jnp.int32),
            inner_state=new_inner,
        )

    return GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------
# Lookahead.
# ----------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: the fast optimizer's state and an int32 ``steps_since_sync``."""

    fast_state: OptState
    steps_since_sync: jax.Array


class LookaheadParams(NamedTuple):
    """The two copies of the parameters lookahead keeps.

    Compute gradients at ``fast``; evaluate (and deploy) ``slow``.
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Both copies equal to ``params``."""
        return cls(fast=params, slow=params)


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float | jax.Array,
    reset_state: bool = False,
) -> GradientTransformation:
    """Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back").

    The params are a :class:`LookaheadParams` ``(fast, slow)``. Each step runs
    ``fast_optimizer`` on the gradient at ``fast``. Every ``sync_period``-th
    step, after that fast step, the slow weights move toward the fast ones,
    ``slow <- slow + slow_step_size * (fast - slow)``, and the fast weights are
    reset to the new slow weights. ``update`` returns a ``LookaheadParams`` of
    updates doing exactly this under ``apply_updates`` (do not alter them).

    Args:
      fast_optimizer: the inner optimizer.
      sync_period: fast steps per synchronisation, an ``int >= 1``.
      slow_step_size: the slow weights' interpolation factor, in ``[0, 1]``.
      reset_state: re-initialise the fast optimizer's state at every sync
        (default ``False``).

    ``init`` accepts a ``LookaheadParams`` or plain params (taken as the fast
    ones). State: ``LookaheadState(fast_state, steps_since_sync)``.
    """
    _check_k("lookahead", sync_period, "sync_period")
    _checks.check_range("lookahead", "slow_step_size", slow_step_size, low=0.0, high=1.0)
    fast_optimizer = with_extra_args_support(fast_optimizer)

    def init(params):
        fast = params.fast if isinstance(params, LookaheadParams) else params
        return LookaheadState(fast_state=fast_optimizer.init(fast), steps_since_sync=_tree.zero_count())

    def update(updates, state, params=None, **extra_args):
        if not isinstance(params, LookaheadParams):
            raise TypeError(
                "lookahead: update needs params=LookaheadParams(fast=..., slow=...), "
                f"got {type(params).__name__}; start from LookaheadParams.init_synced(params)"
            )
        _tree.check_same_structure(updates, params.fast, "updates", "params.fast")
        fast_updates, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast, **extra_args)
        sync = state.steps_since_sync >= sync_period - 1

        def leaf(f, u, s):
            # After the fast step the fast weights are f + u; at a sync the slow
            # weights move by alpha * (f + u - s) and the fast ones land on them.
            diff = f + u - s
            slow_u = jnp.where(sync, slow_step_size * diff, jnp.zeros_like(diff)).astype(s.dtype)
            fast_u = jnp.where(sync, s + slow_step_size * diff - f, u).astype(u.dtype)
            return fast_u, slow_u

        pairs = jax.tree.map(leaf, params.fast, fast_updates, params.slow)
        treedef = jax.tree.structure(params.fast)
        flat = treedef.flatten_up_to(pairs)
        new_fast = treedef.unflatten([p[0] for p in flat])
        new_slow = treedef.unflatten([p[1] for p in flat])
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(
                lambda cur, new: jnp.where(sync, new, cur).astype(jnp.result_type(cur)), fast_state, fresh
            )
        steps = jnp.where(sync, 0, _tree.safe_increment(state.steps_since_sync)).astype(jnp.int32)
        return LookaheadParams(fast=new_fast, slow=new_slow), LookaheadState(fast_state, steps)

    return GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------
# Flattening.
# ----------------------------------------------------------------------------


def _ravel(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([0])
    dtype = jnp.result_type(*leaves)
    return jnp.concatenate([jnp.ravel(jnp.asarray(x, dtype)) for x in leaves])


def _unravel(like: Any, flat: jax.Array) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    sizes = [int(np.size(x)) for x in leaves]
    offsets = np.cumsum(sizes)[:-1].tolist()
    parts = jnp.split(flat, offsets) if leaves else []
    return treedef.unflatten(
        [jnp.reshape(p, np.shape(x)).astype(jnp.result_type(x)) for p, x in zip(parts, leaves)]
    )


def flatten(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on one flat vector holding all leaves instead of on the tree.

    ``init`` and ``update`` ravel every leaf and concatenate them (in the
    promoted dtype of the leaves) into one 1-D buffer, run ``inner`` on it and
    split the result back into the tree, each leaf in its own dtype and shape.
    Many small leaves then cost one kernel instead of many. The state is
    ``inner``'s state for a single flat parameter (no wrapper state).
    """
    inner = with_extra_args_support(inner)

    def init(params):
        return inner.init(_ravel(params))

    def update(updates, state, params=None, **extra_args):
        if params is not None:
            _tree.check_same_structure(updates, params, "updates", "params")
            params = _ravel(params)
        flat_updates, state = inner.update(_ravel(updates), state, params, **extra_args)
        return _unravel(updates, flat_updates), state

    return GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------
# Hyperparameters in the state.
# ----------------------------------------------------------------------------


class InjectHyperparamsState(NamedTuple):
    """State of a transformation built by :func:`inject_hyperparams`.

    Attributes:
      count: int32 number of ``update`` calls so far (schedules are evaluated
        at it, so the first step uses ``schedule(0)``).
      hyperparams: dict from argument name to a JAX array: the numeric
        hyperparameters, and the scheduled ones' values at the last step (at
        ``count`` 0 right after ``init``). Replace a numeric entry between steps
        to change it (see :func:`set_hyperparams`); a scheduled entry is
        recomputed each step, so replacing it has no effect.
      inner_state: the state of the wrapped transformation.
    """

    count: jax.Array
    hyperparams: dict[str, jax.Array]
    inner_state: OptState


_NUMERIC_WORDS = ("float", "Scalar", "Schedule", "Numeric", "Number")


def _annotation_text(param: inspect.Parameter) -> str | None:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return None
    return ann if isinstance(ann, str) else str(ann)


def _looks_numeric(param: inspect.Parameter) -> bool | None:
    """Whether a factory parameter is declared as a float (None if it says nothing)."""
    if isinstance(param.default, (float, np.floating)) and not isinstance(param.default, bool):
        return True
    text = _annotation_text(param)
    if text is None:
        return None
    return any(word in text for word in _NUMERIC_WORDS)


def _classify(param: inspect.Parameter, value: Any, static_names: set[str]) -> str:
    """'static', 'numeric' or 'schedule' for one argument of the factory."""
    if param.name in static_names or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        return "static"
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        return "static"
    if isinstance(value, (int, np.integer)):
        # Ints are structural (counts, periods, sizes) unless the factory declares a float.
        return "numeric" if _looks_numeric(param) else "static"
    if isinstance(value, (float, complex, np.floating, np.complexfloating)):
        return "numeric"
    if isinstance(value, (jax.Array, np.ndarray)):
        return "static" if np.dtype(value.dtype) == np.bool_ else "numeric"
    if callable(value):
        if inspect.isclass(value) or (hasattr(value, "init") and hasattr(value, "update")):
            return "static"  # a dtype, a class, or a transformation passed as an argument
        # A function argument is a schedule, unless the factory declares the
        # parameter with a type that is neither a float nor a schedule (a mask
        # function, a callback, ...).
        return "static" if _looks_numeric(param) is False else "schedule"
    return "static"  # tuples, dicts, dtypes, arbitrary objects: they shape the transformation


def _float_dtype_of(params: Any) -> Any:
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    if not dtypes:
        return jnp.result_type(float)
    return functools.reduce(jnp.promote_types, dtypes)


def _as_hyperparam(value: Any, dtype: Any, force: bool) -> jax.Array:
    """A numeric hyperparameter as an array; floats (and ints given for floats) in ``dtype``.

    A float JAX array with a strong dtype keeps it unless ``force``.
    """
    arr = jnp.asarray(value)
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        return arr
    strong = isinstance(value, jax.Array) and not getattr(value, "weak_type", False)
    if strong and jnp.issubdtype(arr.dtype, jnp.floating) and not force:
        return arr
    if strong and jnp.issubdtype(arr.dtype, jnp.integer):
        return arr  # an explicit integer array stays an integer
    return arr.astype(dtype)


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Moves a transformation's numeric hyperparameters into its state.

    ``inject_hyperparams(adam)(learning_rate=1e-3)`` builds a transformation
    that behaves like ``adam(1e-3)`` but keeps ``learning_rate`` (and ``b1``,
    ``b2``, ``eps``, ...) as arrays in ``state.hyperparams``: they can be read
    and changed between steps without recompiling a jitted step, vmapped over
    (to train several configurations at once), or given as schedules (functions
    of the step count, evaluated at ``count`` = 0, 1, 2, ...).

    Each argument of ``inner_factory`` is sorted once, when the returned
    function is called:

    * static (passed to the factory as given, never in the state): arguments
      named in ``static_args``; ``None``, bools, strings; Python ints (periods,
      sizes, counts; an int for a parameter whose default is a float or whose
      annotation mentions float/Scalar/Schedule is numeric instead); boolean
      arrays; tuples, dicts, dtypes, classes, transformations and other
      structural values; and functions for a parameter annotated with a type
      that mentions neither float nor schedule (e.g. a mask function);
    * numeric (stored in the state): floats, and float/int arrays;
    * schedule (evaluated each step, value stored in the state): other callables.

    Unlike Optax, ``static_args`` is thus rarely needed; it still forces an
    argument to be static.

    Args:
      inner_factory: a function returning a ``GradientTransformation``.
      static_args: name(s) of arguments to treat as static.
      hyperparam_dtype: the dtype of float hyperparameters; default: the
        highest float dtype among the params (given to ``init``). A float jax
        array given explicitly with a (strong) dtype keeps it unless this is set.

    Returns:
      A function with the factory's signature returning a
      ``GradientTransformationExtraArgs`` with state
      :class:`InjectHyperparamsState` ``(count, hyperparams, inner_state)``.
      ``update`` calls ``inner_factory`` with the current hyperparameters and
      runs the resulting transformation (under ``jit`` this happens once, at
      trace time).

    Raises:
      ValueError: if ``static_args`` names an argument the factory lacks.
    """
    static_names = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static_names - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"inject_hyperparams: static_args {sorted(unknown)} are not parameters of "
            f"{getattr(inner_factory, '__name__', inner_factory)!r}; its parameters are {list(signature.parameters)}"
        )
    cast_dtype = None if hyperparam_dtype is None else jnp.dtype(hyperparam_dtype)

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        kinds = {name: _classify(signature.parameters[name], v, static_names) for name, v in arguments.items()}
        numeric = {n: arguments[n] for n, k in kinds.items() if k == "numeric"}
        schedules = {n: arguments[n] for n, k in kinds.items() if k == "schedule"}

        def build(hyperparams):
            call = dict(arguments)
            call.update(hyperparams)
            ba = inspect.BoundArguments(signature, call)
            return with_extra_args_support(inner_factory(*ba.args, **ba.kwargs))

        def init(params):
            dtype = cast_dtype if cast_dtype is not None else _float_dtype_of(params)
            count = _tree.zero_count()
            hyperparams = {n: _as_hyperparam(v, dtype, force=cast_dtype is not None) for n, v in numeric.items()}
            for n, f in schedules.items():
                hyperparams[n] = jnp.asarray(f(count)).astype(dtype)
            inner_state = build(hyperparams).init(params)
            return InjectHyperparamsState(count=count, hyperparams=hyperparams, inner_state=inner_state)

        def update(updates, state, params=None, **extra_args):
            hyperparams = dict(state.hyperparams)
            for n in numeric:
                if n not in hyperparams:
                    raise KeyError(
                        f"inject_hyperparams: state.hyperparams lacks {n!r}; it has {sorted(hyperparams)}"
                    )
                v = jnp.asarray(hyperparams[n])
                if cast_dtype is not None and jnp.issubdtype(v.dtype, jnp.floating):
                    v = v.astype(cast_dtype)
                hyperparams[n] = v
            for n, f in schedules.items():
                old = state.hyperparams.get(n)
                dtype = cast_dtype if cast_dtype is not None else (jnp.result_type(old) if old is not None else None)
                value = jnp.asarray(f(state.count))
                hyperparams[n] = value if dtype is None else value.astype(dtype)
            new_updates, inner_state = build(hyperparams).update(updates, state.inner_state, params, **extra_args)
            return new_updates, InjectHyperparamsState(
                count=_tree.safe_increment(state.count), hyperparams=hyperparams, inner_state=inner_state
            )

        return GradientTransformationExtraArgs(init, update)

    return wrapped


def set_hyperparams(state: InjectHyperparamsState, **values: Any) -> InjectHyperparamsState:
    """Returns ``state`` with the named hyperparameters replaced (a new state; no mutation).

    Each new value is cast to the dtype of the entry it replaces, so a jitted
    step taking the new state is not recompiled (a scalar replacing a scalar
    keeps the same shape too). Setting a scheduled hyperparameter has no
    effect: schedules are re-evaluated every step.

    Raises:
      KeyError: if a name is not in ``state.hyperparams`` (the known names are listed).
    """
    hyperparams = dict(state.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise KeyError(f"set_hyperparams: no hyperparameter {name!r}; known: {sorted(hyperparams)}")
        hyperparams[name] = jnp.asarray(value, dtype=jnp.result_type(hyperparams[name]))
    return state._replace(hyperparams=hyperparams)


# ----------------------------------------------------------------------------
# Exponential moving average of the parameters (weight averaging).
# ----------------------------------------------------------------------------


class ParamsEMAState(NamedTuple):
    """State of :func:`params_ema`.

    Attributes:
      count: int32 number of :meth:`ParamsEMA.update` calls so far.
      ema: the running average of the parameters (the params' structure; each
        leaf in the accumulator dtype, by default the parameter's own dtype).
    """

    count: jax.Array
    ema: Params


class ParamsEMA(NamedTuple):
    """An exponential moving average of the parameters: pure ``init``/``update``/``average``.

    Built by :func:`params_ema`; see there. All three are pure functions of
    their arguments and can be jitted.
    """

    init: Callable[[Params], ParamsEMAState]
    update: Callable[[Params, ParamsEMAState], tuple[Params, ParamsEMAState]]
    average: Callable[[ParamsEMAState, Params], Params]


def params_ema(
    decay: float | Callable[[jax.Array], jax.Array] = 0.999,
    *,
    overwrite_every: int | None = None,
    accumulator_dtype: Any = None,
) -> ParamsEMA:
    """Polyak/EMA weight averaging of the parameters, kept beside the optimizer.

    Usage, once per training step after the optimizer step::

        ema = params_ema(0.999)
        ema_state = ema.init(params)
        ...
        params = apply_updates(params, updates)
        params, ema_state = ema.update(params, ema_state)
        eval_params = ema.average(ema_state, params)

    ``init(params)`` starts the average at ``params`` (so no bias correction is
    needed) with ``count = 0``. ``update(params, state)`` returns
    ``(params_out, new_state)`` with::

        ema <- decay * ema + (1 - decay) * params,   count <- count + 1

    and ``params_out`` equal to ``params``, except that if ``overwrite_every``
    is an int ``N`` then every ``N``-th update (``count % N == 0``) replaces the
    live parameters by the new average (Keras' ``use_ema`` with
    ``ema_overwrite_frequency``). ``average(state, like)`` returns the average
    cast to the dtypes of ``like`` (pass the params; omit to get the raw
    accumulator).

    Args:
      decay: the weight of the old average, in ``[0, 1]``, default ``0.999``;
        or a schedule (function of the int32 ``count`` before the update),
        e.g. ``lambda t: jnp.minimum(0.999, (1 + t) / (10 + t))`` for a warm-up.
      overwrite_every: ``None`` (default: never touch the live params) or a
        positive int.
      accumulator_dtype: dtype of the average (e.g. ``jnp.float32`` for
        bfloat16 params); default each parameter's dtype.
    """
    _checks.check_range("params_ema", "decay", decay, low=0.0, high=1.0)
    if overwrite_every is not None:
        _check_k("params_ema", overwrite_every, "overwrite_every")
    acc_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

    def init(params):
        return ParamsEMAState(count=_tree.zero_count(), ema=_tree.cast(params, acc_dtype))

    def update(params, state):
        _tree.check_same_structure(params, state.ema, "params", "state.ema")
        d = decay(state.count) if callable(decay) else decay
        ema = jax.tree.map(
            lambda p, e: (d * e + (1.0 - d) * p.astype(e.dtype)).astype(e.dtype), params, state.ema
        )
        count = _tree.safe_increment(state.count)
        if overwrite_every is not None:
            overwrite = count % overwrite_every == 0
            params = jax.tree.map(
                lambda p, e: jnp.where(overwrite, e.astype(jnp.result_type(p)), p), params, ema
            )
        return params, ParamsEMAState(count=count, ema=ema)

    def average(state, like=None):
        if like is None:
            return state.ema
        return _tree.cast_like(state.ema, like)

    return ParamsEMA(init=init, update=update, average=average)
