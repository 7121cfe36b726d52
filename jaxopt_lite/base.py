"""Core types: gradient transformations, their state, and how they compose.

A gradient transformation is a pair of pure functions::

    init(params) -> state
    update(updates, state, params=None, **extra_args) -> (updates, state)

State is an immutable pytree (NamedTuples of arrays) built by mapping over
``params``, so ``jax.eval_shape(tx.init, params)`` works and sharded params give
identically sharded state.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Union, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import numerics as _numerics
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
    one flatten of the inputs' structure, at trace time only under ``jit``;
    ``init`` records the structure it made, so ``update`` on parameters of that
    structure and those shapes does not trace ``init`` again (a third of Adam's
    trace time at 1000 leaves).
    """
    tx = with_extra_args_support(tx)
    expected_structures: dict = {}

    def structure_key(like):
        leaves, treedef = jax.tree.flatten(like)
        return treedef, tuple(getattr(x, "shape", ()) for x in leaves)

    def remember(key, structure):
        if len(expected_structures) > 64:
            expected_structures.clear()
        expected_structures[key] = structure

    def expected_structure(like):
        key = structure_key(like)
        if key not in expected_structures:
            try:
                abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), like)
                remember(key, jax.tree.structure(jax.eval_shape(tx.init, abstract)))
            except Exception:  # noqa: BLE001 - no expectation then; update's own checks still run
                remember(key, None)
        return expected_structures[key]

    def init(params):
        try:
            state = _tree.place_on_params_mesh(tx.init(params), params)
        except (TypeError, ValueError) as error:
            renamed = _renamed(owner, error)
            if renamed is error:
                raise
            raise renamed from error
        remember(structure_key(params), jax.tree.structure(state))  # update's check then needs no second init
        return state

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


# --------------------------------------------------------------------------- #
# Optimizers and schedules as pytrees
# --------------------------------------------------------------------------- #
#
# A factory decorated with ``pytree_factory`` (every alias through ``alias``,
# ``chain``, the transforms, wrappers and schedules) returns an object that
# remembers the call that made it. Registered with ``jax.tree_util``, that
# object is a pytree: its leaves are the float and complex numbers and the
# arrays among the arguments (recursively through containers and through
# arguments that are themselves such objects); everything else (ints, bools,
# strings, None, dtypes, masks, functions that are not such objects) is static
# aux data, compared by type and value. Unflattening calls the factory again
# with the new leaves, right away when they are values (numbers, arrays,
# tracers: it runs inside the trace that made them), and on first use
# otherwise, so JAX may unflatten with placeholders (``vmap``'s axis specs,
# ``jax.tree.map`` to anything) without the factory seeing them.


def _is_dynamic(x: Any) -> bool:
    """Whether an argument value is a leaf: a float or complex number (Python or NumPy), or a non-boolean array.

    Python ints are static (counts, periods, sizes and seeds shape the program and
    feed Python control flow); pass an integer array to trace one. Concrete
    boolean arrays are static too (flags and masks); traced ones are leaves.
    """
    if isinstance(x, (bool, int, np.bool_, np.integer)):
        return False
    if isinstance(x, (float, complex, np.floating, np.complexfloating, jax.core.Tracer)):
        return True
    if isinstance(x, (np.ndarray, jax.Array)):
        return not jax.dtypes.issubdtype(x.dtype, np.bool_)
    return False


class _Static:
    """A static value inside an argument: a pytree node with no children whose aux data is itself.

    Two compare equal when their values have the same type and compare equal
    (boolean arrays by dtype, shape and contents); a value whose ``==`` fails
    or is not a plain truth value counts as different.
    """

    __slots__ = ("_hash", "_key", "value")

    def __init__(self, value: Any):
        self.value = value
        key = value
        if isinstance(value, (np.ndarray, jax.Array)):
            array = np.asarray(value)
            key = (array.dtype.str, array.shape, array.tobytes())
        self._key = key
        try:
            self._hash = hash((type(value), key))
        except TypeError:  # a list, a dict, ...: equal values must hash alike, and the type does
            self._hash = hash(type(value))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not _Static or self._hash != other._hash or type(self.value) is not type(other.value):
            return False
        if self._key is other._key:
            return True
        try:
            return bool(self._key == other._key)
        except Exception:  # noqa: BLE001 - an ambiguous comparison: treat as different (a retrace, never a wrong reuse)
            return False

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"static({self.value!r})"


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s), lambda s, _: s)

_RECORDED_TYPES: set = set()


def _is_recorded(x: Any) -> bool:
    return type(x) in _RECORDED_TYPES


def _stops(x: Any) -> bool:
    """Where preparing an argument stops descending: recorded objects, and transformations that are not."""
    return type(x) in _RECORDED_TYPES or isinstance(x, (GradientTransformation, _Static))


def _prepare(value: Any) -> Any:
    """``value`` with each static leaf wrapped in :class:`_Static`; ``None`` if it holds no leaf and no recorded object."""
    if type(value) in _RECORDED_TYPES or _is_dynamic(value):
        return value
    if value is None or isinstance(value, (bool, int, str, bytes, type, np.dtype)) or callable(value):
        return None
    found = False

    def wrap(x):
        nonlocal found
        if type(x) in _RECORDED_TYPES or _is_dynamic(x):
            found = True
            return x
        return _Static(x)

    try:
        prepared = jax.tree.map(wrap, value, is_leaf=_stops)
    except Exception:  # noqa: BLE001 - not a pytree JAX can rebuild (unsortable dict keys, ...): static as a whole
        return None
    return prepared if found else None


def _unwrap(child: Any) -> Any:
    """The argument value a prepared ``child`` (possibly rebuilt by JAX with new leaves) stands for."""
    if isinstance(child, _Static):
        return child.value
    if _is_recorded(child) or _is_dynamic(child):
        return child
    return jax.tree.map(
        lambda x: x.value if isinstance(x, _Static) else x,
        child,
        is_leaf=lambda x: isinstance(x, _Static) or type(x) in _RECORDED_TYPES,
    )


class _Aux:
    """The aux data of a recorded object: which factory, and its static arguments.

    Equal when the factories' keys, the names of the arguments holding leaves,
    and the static arguments are equal; ``build`` and ``signature`` ride along.
    """

    __slots__ = ("_hash", "build", "ident", "keys", "name", "names", "signature")

    def __init__(self, key, build, signature, name, names, static):
        self.build, self.signature, self.name, self.names = build, signature, name, names
        self.keys = tuple(jax.tree_util.GetAttrKey(n) for n in names)
        self.ident = (key, names, static)
        self._hash = hash(self.ident)

    @property
    def static(self) -> tuple:
        return self.ident[2]

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is _Aux and self._hash == other._hash and self.ident == other.ident)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        static = ", ".join(f"{n}={s.value!r}" for n, s in self.static)
        return f"{self.name}(<{', '.join(self.names)}>{', ' if static and self.names else ''}{static})"


class _Recipe:
    """How a recorded object was made, and what it holds: the call, or its tree parts; and what the call built."""

    __slots__ = ("_arguments", "_built", "_call", "_parts", "build", "key", "name", "signature")

    def __init__(self, key, build, signature, name, call=None, built=None, parts=None):
        self.key, self.build, self.signature, self.name = key, build, signature, name
        self._call, self._built, self._parts, self._arguments = call, built, parts, None

    @classmethod
    def from_tree(cls, aux: _Aux, children: Any) -> "_Recipe":
        return cls(aux.ident[0], aux.build, aux.signature, aux.name, parts=(tuple(children), aux))

    def build_if_values(self) -> None:
        """Builds now if every leaf is a value (a number, an array, a tracer), else leaves it to the first use.

        JAX unflattens where the leaves live (inside the trace that made the tracers), so
        that is where the factory must run: a value it computes is then of that trace,
        not of whichever nested trace (``eval_shape``, ``cond``) first touches the
        result. Placeholders (``vmap``'s axis specs, ``object()``) and a build that
        fails (values out of range) wait for the first use, which raises if it fails.
        """
        for x in jax.tree.leaves(self._parts[0], is_leaf=lambda x: type(x) in _RECORDED_TYPES):
            if type(x) in _RECORDED_TYPES:
                if x.__dict__["_pytree"]._built is None:
                    return
            elif not isinstance(x, (int, float, complex, np.generic, np.ndarray, jax.Array)):
                return
        try:
            self.get()
        except Exception:  # noqa: BLE001 - raised again, in the caller's context, when the object is first used
            self._built = None

    def arguments(self) -> dict:
        """The factory's arguments by name, defaults included, in the signature's order."""
        if self._arguments is None:
            if self._call is not None:
                args, kwargs = self._call
                bound = self.signature.bind(*args, **kwargs)
                bound.apply_defaults()
                self._arguments = dict(bound.arguments)
            else:
                children, aux = self._parts
                values = {n: s.value for n, s in aux.static}
                values.update(zip(aux.names, map(_unwrap, children)))
                self._arguments = {n: values[n] for n in self.signature.parameters if n in values}
        return self._arguments

    def parts(self) -> tuple:
        """``(children, aux)``: the arguments holding leaves (prepared), and the static rest."""
        if self._parts is None:
            names, children, static = [], [], []
            for name, value in self.arguments().items():
                prepared = _prepare(value)
                if prepared is None:
                    static.append((name, _Static(value)))
                else:
                    names.append(name)
                    children.append(prepared)
            aux = _Aux(self.key, self.build, self.signature, self.name, tuple(names), tuple(static))
            self._parts = (tuple(children), aux)
        return self._parts

    def get(self) -> Any:
        """What the factory builds from these arguments (built once, on first use)."""
        if self._built is None:
            bound = inspect.BoundArguments(self.signature, self.arguments())
            self._built = self.build(*bound.args, **bound.kwargs)
        return self._built

    def describe(self) -> str:
        try:
            arguments = self.arguments()
        except Exception:  # noqa: BLE001 - a repr must not fail
            return f"{self.name}(...)"
        return f"{self.name}({', '.join(f'{n}={v!r}' for n, v in arguments.items())})"


def _flatten(node: Any) -> tuple:
    return node.__dict__["_pytree"].parts()


def _flatten_with_keys(node: Any) -> tuple:
    children, aux = node.__dict__["_pytree"].parts()
    return tuple(zip(aux.keys, children)), aux


def register_recorded(cls: type, from_recipe: Callable[[_Recipe], Any]) -> None:
    """Registers ``cls``, whose instances keep a :class:`_Recipe` in ``__dict__["_pytree"]``, as a pytree.

    ``from_recipe(recipe)`` makes an instance from a recipe of tree parts; it
    must not validate or compute with the leaves (they may be placeholders).
    """
    _RECORDED_TYPES.add(cls)

    def unflatten(aux, children):
        recipe = _Recipe.from_tree(aux, children)
        node = from_recipe(recipe)
        recipe.build_if_values()
        return node

    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, unflatten, flatten_func=_flatten)


class _Recorded:
    """Made by a :func:`pytree_factory`: the factory's arguments read as attributes (``jol.adam(0.1).learning_rate``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        recipe = self.__dict__.get("_pytree")
        arguments = recipe.arguments() if recipe is not None else {}
        if name in arguments:
            return arguments[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return self.__dict__["_pytree"].describe()


class _Deferred:
    """``init`` or ``update`` of a lazily rebuilt transformation, built on first call."""

    __slots__ = ("name", "recipe")

    def __init__(self, recipe: _Recipe, name: str):
        self.recipe, self.name = recipe, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.recipe.get(), self.name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.name} of {self.recipe.name}>"


class _TransformationMixin(_Recorded):
    """``init``/``update`` (and iteration, indexing) go to what the factory built, built on first use if lazy."""

    @property
    def init(self) -> Any:
        return self.__dict__["_pytree"].get().init

    @property
    def update(self) -> Any:
        return self.__dict__["_pytree"].get().update

    def __iter__(self):
        built = self.__dict__["_pytree"].get()
        return iter((built.init, built.update))

    def __getitem__(self, index: Any) -> Any:
        return tuple(self)[index]

    def _replace(self, **changes: Any) -> GradientTransformation:
        """A plain transformation with fields replaced (no longer a record of the factory's call)."""
        return self._plain(*self)._replace(**changes)


class _Transformation(_TransformationMixin, GradientTransformation):
    _plain = GradientTransformation


class _TransformationExtraArgs(_TransformationMixin, GradientTransformationExtraArgs):
    _plain = GradientTransformationExtraArgs


class _Schedule(_Recorded):
    """A schedule made by a :func:`pytree_factory`: calls go to the function it built."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["_pytree"].get()(*args, **kwargs)


def _lazy_transformation(cls: type) -> Callable[[_Recipe], Any]:
    def make(recipe):
        node = tuple.__new__(cls, (_Deferred(recipe, "init"), _Deferred(recipe, "update")))
        node.__dict__["_pytree"] = recipe
        return node

    return make


def _lazy_schedule(recipe: _Recipe) -> _Schedule:
    node = object.__new__(_Schedule)
    node.__dict__["_pytree"] = recipe
    return node


register_recorded(_Transformation, _lazy_transformation(_Transformation))
register_recorded(_TransformationExtraArgs, _lazy_transformation(_TransformationExtraArgs))
register_recorded(_Schedule, _lazy_schedule)


def _record(result: Any, recipe: _Recipe) -> Any:
    """``result`` as a recorded object (a transformation or a schedule); anything else as it is."""
    if isinstance(result, GradientTransformationExtraArgs):
        node = tuple.__new__(_TransformationExtraArgs, (result.init, result.update))
    elif isinstance(result, GradientTransformation):
        node = tuple.__new__(_Transformation, (result.init, result.update))
    elif callable(result) and not hasattr(result, "init"):
        node = object.__new__(_Schedule)
    else:
        return result
    recipe._built = result
    node.__dict__["_pytree"] = recipe
    return node


def _recording(
    build: Callable, *, key: Any, signature: inspect.Signature, wrapped: Callable, name: str | None = None
) -> Callable:
    """``wrapped``'s public face: calls ``build`` and records the call (``key`` identifies the factory)."""
    name = name or getattr(wrapped, "__name__", "factory")

    @functools.wraps(wrapped)
    def factory(*args, **kwargs):
        return _record(build(*args, **kwargs), _Recipe(key, build, signature, name, call=(args, kwargs)))

    return factory


def pytree_factory(fn: Callable) -> Callable:
    """Decorates a factory of transformations or schedules so that what it returns is a pytree.

    The leaves are the float and complex numbers and the arrays among the
    factory's arguments (defaults included), found recursively through
    tuples, lists, dicts and arguments that are themselves such pytrees; the
    key of each is the argument's name (``jax.tree_util.keystr`` gives e.g.
    ``.transforms[1].learning_rate.peak_value``). Python ints and bools,
    strings, ``None``, dtypes, masks, and functions that are not such pytrees
    (a ``lambda`` schedule) are static: part of the tree structure, compared by
    value (functions by identity). Python ints stay static because they are
    counts, periods, sizes and seeds that shape the program and feed Python
    control flow (``range(k)``, ``if warmup == 0``); pass an integer array to
    trace one. Unflattening calls the factory again with the new leaves (where
    the leaves live, or at first use for placeholders), without validating
    traced values; so passing an optimizer to a jitted function traces it once
    for all values of its float hyperparameters, and ``jax.vmap`` can map over
    a stacked batch of optimizers (:func:`jaxopt_lite.sweeps.stack`).

    The result keeps its type's behaviour: an instance of
    :class:`GradientTransformation` (or ``...ExtraArgs``) with ``init`` and
    ``update``, or a callable schedule; the factory's arguments read as
    attributes.
    """
    return _recording(fn, key=fn, signature=inspect.signature(fn), wrapped=fn)


def alias(constructor: Callable[..., GradientTransformation]) -> Callable[..., GradientTransformationExtraArgs]:
    """Decorates an optimizer's constructor so that its errors, at construction and in ``update``, name it.

    The optimizer it returns is also a pytree of its numeric hyperparameters (see :func:`pytree_factory`).
    """
    owner = constructor.__name__

    def build(*args, **kwargs):
        try:
            tx = constructor(*args, **kwargs)
        except (ValueError, TypeError) as error:
            renamed = _renamed(owner, error)
            if renamed is error:
                raise
            raise renamed from error
        return with_owner(owner, tx)

    return _recording(build, key=build, signature=inspect.signature(constructor), wrapped=constructor)


@pytree_factory
def identity() -> GradientTransformation:
    """Returns the updates unchanged: ``u -> u``."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init, update)


@pytree_factory
def set_to_zero() -> GradientTransformation:
    """Replaces every update by zeros: ``u -> 0`` (used to freeze parameters)."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init, update)


@pytree_factory
def stateless(f: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """A transformation ``u -> f(u, params)`` with no state."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        return f(updates, params), state

    return GradientTransformation(init, update)


@pytree_factory
def stateless_with_tree_map(f: Callable[[jax.Array, jax.Array | None], jax.Array]) -> GradientTransformation:
    """A transformation applying ``f(u_leaf, param_leaf)`` to every leaf, with no state."""

    def apply(updates, params):
        if params is None:
            return jax.tree.map(lambda u: f(u, None), updates)
        _tree.check_same_structure(updates, params, "updates", "params")
        return jax.tree.map(f, updates, params)

    return stateless(apply)


@pytree_factory
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


@pytree_factory
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
        return _numerics.cast(p + u, p.dtype)

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
