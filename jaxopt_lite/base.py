"""Core types: gradient transformations, their state, and how they compose.

A gradient transformation is a pair of pure functions::

    init(params) -> state
    update(updates, state, params=None, **extra_args) -> (updates, state)

State is an immutable pytree (NamedTuples of arrays) built by mapping over
``params``, so ``jax.eval_shape(tx.init, params)`` works and sharded params give
identically sharded state.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Union, runtime_checkable

import jax
import jax.numpy as jnp

from jaxopt_lite import tree as _tree

Params = Any
Updates = Any
OptState = Any
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[float, jax.Array, Schedule]


ScheduleState = Any


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule with its own state: ``init() -> state``, ``update(state, **extra_args) -> state``,
    and ``schedule(state, **extra_args) -> value``. :func:`~jaxopt_lite.inject_hyperparams` takes one
    anywhere it takes a schedule; ``extra_args`` are those passed to ``update``.
    """

    def init(self) -> ScheduleState:
        ...

    def update(self, state: ScheduleState, **extra_args: Any) -> ScheduleState:
        ...

    def __call__(self, state: ScheduleState, **extra_args: Any) -> jax.Array:
        ...


class TransformInitFn(Protocol):

    def __call__(self, params: Params) -> OptState:
        ...


class TransformUpdateFn(Protocol):

    def __call__(self, updates: Updates, state: OptState, params: Params | None = None) -> tuple[Updates, OptState]:
        ...


class TransformUpdateExtraArgsFn(Protocol):

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        ...


class GradientTransformation(NamedTuple):
    """A pure optimizer building block: ``init`` makes the state, ``update`` uses it."""

    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformationExtraArgs(GradientTransformation):
    """A gradient transformation whose ``update`` also takes keyword ``extra_args``.

    Extra arguments (a loss value, a key, ...) are passed by name to every
    transform in a chain that wants them and ignored by the others.
    """

    init: TransformInitFn
    update: TransformUpdateExtraArgsFn


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def init_empty_state(params: Params) -> EmptyState:
    """The ``init`` of a stateless transformation: ignores ``params`` and returns :class:`EmptyState`."""
    del params
    return EmptyState()


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """Wraps ``tx`` so that its ``update`` accepts and ignores extra keyword arguments."""
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update)


def _check_transformation(owner: str, which: str, t: Any) -> None:
    if not (callable(getattr(t, "init", None)) and callable(getattr(t, "update", None))):
        raise TypeError(f"{owner}: {which} is not a GradientTransformation: {t!r}")


def _renamed(owner: str, error: Exception) -> Exception:
    """``error`` with ``owner: `` in front of its message (plain ``ValueError``/``TypeError`` only), or itself."""
    if type(error) not in (ValueError, TypeError) or str(error).startswith(f"{owner}:"):
        return error
    return type(error)(f"{owner}: {error}")


def _state_mismatch(owner: str, init: Callable, state: Any, likes: tuple) -> str | None:
    """Why ``state`` is not of the kind ``init`` makes (a node of another type somewhere); else ``None``.

    ``init`` runs abstractly on the first of ``likes`` (params, then updates) it
    accepts. Leaves or keys that differ under nodes of the same types are not
    reported here: the transforms' own shape and structure errors say more.
    """
    for like in likes:
        if like is None:
            continue
        try:
            expected = jax.eval_shape(init, like)
            break
        except Exception:  # noqa: BLE001, PERF203, S112 - try the next; with none, the original error stands
            continue
    else:
        return None
    found = _tree.first_difference(expected, state)
    if found is None or type(found[1]) is type(found[2]) or _tree.is_subtree_of(found[1], like):
        return None  # the same node types, or a difference inside a params-shaped part: not another optimizer's
    path, want, got = found
    where = "state" + jax.tree_util.keystr(path) if path else "the root"
    return (
        f"{owner}: the state passed to update is not one {owner}'s init makes (another optimizer's state, or "
        f"state and params swapped?): at {where} {owner}'s init makes "
        f"{_tree.describe_node(want)}, the state passed has {_tree.describe_node(got)}"
    )


def with_owner(owner: str, tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """``tx`` whose ``init`` and ``update`` errors name ``owner``, the optimizer the user called.

    ``update`` first compares the state's tree structure (node types included)
    with the one ``init`` makes for inputs of this structure and these shapes,
    found once under ``jax.eval_shape`` and cached: a state of another optimizer
    whose fields happen to fit (adabelief's for adam) is refused, not silently
    used. The message names both state types and the key path where they first
    differ; the same diagnosis runs when ``update`` raises. Any other
    ``ValueError``/``TypeError`` gets ``owner: `` in front. Per call this costs
    one flatten of the inputs' structure, at trace time only under ``jit``.
    """
    tx = with_extra_args_support(tx)
    expected_structures: dict = {}

    def expected_structure(like):
        leaves, treedef = jax.tree.flatten(like)
        key = (treedef, tuple(getattr(x, "shape", ()) for x in leaves))
        if key not in expected_structures:
            if len(expected_structures) > 64:
                expected_structures.clear()
            try:
                abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), like)
                expected_structures[key] = jax.tree.structure(jax.eval_shape(tx.init, abstract))
            except Exception:  # noqa: BLE001 - no expectation then; update's own checks still run
                expected_structures[key] = None
        return expected_structures[key]

    def init(params):
        try:
            return _tree.place_on_params_mesh(tx.init(params), params)
        except (TypeError, ValueError) as error:
            renamed = _renamed(owner, error)
            if renamed is error:
                raise
            raise renamed from error

    def update(updates, state, params=None, **extra_args):
        expected = expected_structure(updates if params is None else params)
        if expected is not None and jax.tree.structure(state) != expected:
            problem = _state_mismatch(owner, tx.init, state, (params, updates))
            if problem is not None:
                raise ValueError(problem)
        try:
            return tx.update(updates, state, params, **extra_args)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as error:
            problem = _state_mismatch(owner, tx.init, state, (params, updates))
            if problem is not None:
                raise ValueError(problem) from error
            renamed = _renamed(owner, error)
            if renamed is error:
                raise
            raise renamed from error

    return GradientTransformationExtraArgs(init, update)


def alias(constructor: Callable[..., GradientTransformation]) -> Callable[..., GradientTransformationExtraArgs]:
    """Decorates an optimizer's constructor so that its errors, at construction and in ``update``, name it."""
    owner = constructor.__name__

    @functools.wraps(constructor)
    def build(*args, **kwargs):
        try:
            tx = constructor(*args, **kwargs)
        except (ValueError, TypeError) as error:
            renamed = _renamed(owner, error)
            if renamed is error:
                raise
            raise renamed from error
        return with_owner(owner, tx)

    return build


def identity() -> GradientTransformation:
    """Returns the updates unchanged: ``u -> u``."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init, update)


def set_to_zero() -> GradientTransformation:
    """Replaces every update by zeros: ``u -> 0`` (used to freeze parameters)."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init, update)


def stateless(f: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """A transformation ``u -> f(u, params)`` with no state."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        return f(updates, params), state

    return GradientTransformation(init, update)


def stateless_with_tree_map(f: Callable[[jax.Array, jax.Array | None], jax.Array]) -> GradientTransformation:
    """A transformation applying ``f(u_leaf, param_leaf)`` to every leaf, with no state."""

    def apply(updates, params):
        if params is None:
            return jax.tree.map(lambda u: f(u, None), updates)
        _tree.check_same_structure(updates, params, "updates", "params")
        return jax.tree.map(f, updates, params)

    return stateless(apply)


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies ``transforms`` in order; the state is the tuple of their states.

    Example: ``chain(clip_by_global_norm(1.0), scale_by_adam(), scale(-1e-3))``.
    """
    for i, t in enumerate(transforms):
        _check_transformation("chain", f"argument {i}", t)
    transforms = tuple(with_extra_args_support(t) for t in transforms)

    def init(params):
        return _tree.place_on_params_mesh(tuple(t.init(params) for t in transforms), params)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain: expected a state tuple of {len(transforms)} entries (one per transform), "
                f"got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else 'n/a'} "
                "(the state of another optimizer, or state and params swapped?)"
            )
        if params is not None:
            _tree.check_same_shapes(updates, params, "updates", "params", per_example=True)  # dpsgd's input
        new_state = []
        for i, (t, s) in enumerate(zip(transforms, state)):
            try:
                updates, s = t.update(updates, s, params, **extra_args)
            except AttributeError as error:  # a state of another kind: say so, not "'X' has no attribute 'y'"
                raise ValueError(f"chain: the state of transform {i} is a {type(s).__name__}, not one its init "
                                 f"makes ({error})") from error
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformationExtraArgs(init, update)


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformationExtraArgs:
    """Like :func:`chain`, but the state is a dict keyed by the given names."""
    names = [name for name, _ in transforms]
    for name, t in transforms:
        _check_transformation("named_chain", f"transform {name!r}", t)
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: names must be unique, got {names}")
    inner = {name: with_extra_args_support(t) for name, t in transforms}

    def init(params):
        return {name: t.init(params) for name, t in inner.items()}

    def update(updates, state, params=None, **extra_args):
        if params is not None:
            _tree.check_same_structure(updates, params, "updates", "params")
        new_state = {}
        for name, t in inner.items():
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformationExtraArgs(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates``, each result leaf in its parameter's dtype.

    ``None`` updates leave their parameter as it is, ``None`` parameters stay
    ``None`` (as Optax); :class:`~jaxopt_lite.MaskedNode` subtrees hold no leaves
    and pass through. Integer or boolean parameters cannot take a floating-point
    step and raise ``TypeError`` (mask them out of the optimizer, e.g. with
    ``masked``, and leave their updates ``None``).
    """
    is_none = lambda x: x is None  # noqa: E731
    if jax.tree.structure(updates, is_leaf=is_none) != jax.tree.structure(params, is_leaf=is_none):
        _tree.check_same_structure(updates, params, "updates", "params")

    def add(path, p, u):
        if p is None or u is None:
            return p
        p = jnp.asarray(p)
        where = jax.tree_util.keystr(path) or "<root>"
        if not jnp.issubdtype(p.dtype, jnp.inexact):
            raise TypeError(
                f"apply_updates: cannot update parameter {where} of dtype {p.dtype}; "
                "optimizers need floating-point parameters: cast it, or keep it out of the optimizer "
                "(e.g. masked(tx, mask) with False for it) and pass None as its update"
            )
        if jnp.shape(u) != p.shape:
            raise ValueError(f"apply_updates: the update of {where} has shape {jnp.shape(u)}, the parameter {p.shape}")
        return (p + u).astype(p.dtype)

    return jax.tree_util.tree_map_with_path(add, params, updates, is_leaf=is_none)


def incremental_update(new_tensors: Params, old_tensors: Params, step_size: float | jax.Array) -> Params:
    """Polyak averaging: ``step_size * new + (1 - step_size) * old``, leaf by leaf (``None`` stays ``None``)."""
    is_none = lambda x: x is None  # noqa: E731
    if jax.tree.structure(new_tensors, is_leaf=is_none) != jax.tree.structure(old_tensors, is_leaf=is_none):
        _tree.check_same_structure(new_tensors, old_tensors, "new_tensors", "old_tensors")

    def leaf(n, o):
        if n is None or o is None:
            return None
        return jnp.asarray(step_size * n + (1.0 - step_size) * o).astype(jnp.result_type(o))

    return jax.tree.map(leaf, new_tensors, old_tensors, is_leaf=is_none)


def periodic_update(
    new_tensors: Params, old_tensors: Params, steps: jax.Array, update_period: int | jax.Array
) -> Params:
    """Returns ``new_tensors`` every ``update_period`` steps and ``old_tensors`` otherwise."""
    return jax.lax.cond(steps % update_period == 0, lambda: new_tensors, lambda: old_tensors)
