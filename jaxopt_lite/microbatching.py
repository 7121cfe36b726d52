"""Microbatching: evaluate a function on a large batch as a sequential loop over sub-batches (Optax's
``optax.microbatching``), trading time for peak memory.

The batch of size ``B`` is split into ``B / microbatch_size`` microbatches *strided* across the batch
(microbatch ``i`` holds rows ``i, i + n, i + 2n, ...`` with ``n`` the number of microbatches, a column-major
reshape), so a batch sharded along its axis stays sharded inside every microbatch. The per-microbatch results are
combined by an :class:`Accumulator` (sum, mean, running mean or concatenation) inside a ``lax.fori_loop``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Function = Callable[..., Any]

IndividualOutputs = collections.namedtuple("Aux", ["values", "metrics", "aux"])


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How per-microbatch results ``x_0, ..., x_{n-1}`` are combined::

        carry = init(jax.eval_shape of x_0)
        for i in range(n):
            carry = update(carry, x_i, i)
        result = finalize(carry)

    ``aggregate(values)`` reduces a stacked batch of values along axis 0 the same way (used by
    :func:`micro_vmap` inside one microbatch).
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in accumulators."""

    MEAN = enum.auto()
    """The mean of the microbatch results."""
    SUM = enum.auto()
    """The sum of the microbatch results."""
    RUNNING_MEAN = enum.auto()
    """The mean over the microbatches actually run (``num_real_microbatches``), updated in place."""
    CONCAT = enum.auto()
    """The results concatenated along axis 0, in the original batch order."""


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Splits axis ``axis`` of every leaf, of size ``B``, into ``(B // microbatch_size, microbatch_size)``.

    Column-major: entry ``[i, j]`` of the new axes is row ``i + j * (B // microbatch_size)``, so microbatch ``i``
    takes every ``n``-th row starting at ``i``.
    """

    def leaf(x):
        return x.reshape((*x.shape[:axis], -1, microbatch_size, *x.shape[axis + 1:]), order="F")

    return jax.tree.map(leaf, tree)


def _leafwise(init, update, finalize, aggregate) -> Accumulator:
    """An accumulator applying array functions to every leaf of the results."""
    return Accumulator(
        init=lambda shapes: jax.tree.map(init, shapes),
        update=lambda carry, value, i: jax.tree.map(lambda c, v: update(c, v, i), carry, value),
        finalize=lambda carry: jax.tree.map(finalize, carry),
        aggregate=lambda values: jax.tree.map(aggregate, values),
    )


def _zeros_floating(shape_dtype):
    if not jnp.issubdtype(shape_dtype.dtype, jnp.floating):
        raise ValueError(
            f"microbatch: MEAN and RUNNING_MEAN accumulators need floating-point results, got {shape_dtype.dtype}"
        )
    return jnp.zeros(shape_dtype.shape, shape_dtype.dtype)


def _builtin(kind: AccumulationType, num_microbatches: int) -> Accumulator:
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731
    add = lambda carry, value, i: carry + value  # noqa: E731
    if kind is AccumulationType.SUM:
        return _leafwise(zeros, add, lambda c: c, functools.partial(jnp.sum, axis=0))
    if kind is AccumulationType.MEAN:
        return _leafwise(_zeros_floating, add, lambda c: c / num_microbatches, functools.partial(jnp.mean, axis=0))
    if kind is AccumulationType.RUNNING_MEAN:

        def running(carry, value, i):  # mean_{i+1} = mean_i * i / (i + 1) + x_i / (i + 1)
            kept = i / (i + 1)
            return carry * kept + value * (1 - kept)

        return _leafwise(_zeros_floating, running, lambda c: c, functools.partial(jnp.mean, axis=0))
    if kind is AccumulationType.CONCAT:
        return _leafwise(
            lambda s: jnp.zeros((num_microbatches, *s.shape), s.dtype),
            lambda carry, value, i: carry.at[i].set(value),
            lambda c: c.reshape((-1, *c.shape[2:]), order="F"),  # undoes reshape_batch_axis
            lambda values: values,
        )
    raise ValueError(f"microbatch: unknown accumulator {kind!r}")


def _resolve(accumulator: Any, num_microbatches: int) -> Accumulator:
    """One accumulator for the whole result from a tree (a prefix of the result) of accumulators or types."""
    if num_microbatches <= 0:
        raise ValueError(f"microbatch: the number of microbatches must be positive, got {num_microbatches}")

    def one(acc):
        return acc if isinstance(acc, Accumulator) else _builtin(acc, num_microbatches)

    accs = jax.tree.map(one, accumulator)
    return Accumulator(
        init=lambda shapes: jax.tree.map(lambda a, s: a.init(s), accs, shapes),
        update=lambda carry, value, i: jax.tree.map(lambda a, c, v: a.update(c, v, i), accs, carry, value),
        finalize=lambda carry: jax.tree.map(lambda a, c: a.finalize(c), accs, carry),
        aggregate=lambda values: jax.tree.map(lambda a, v: a.aggregate(v), accs, values),
    )


def microbatch(
    fun: Function,
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    """``fun`` evaluated microbatch by microbatch over its batch arguments, with the results accumulated.

    The arguments ``argnums`` (positions) and ``argnames`` (keywords) carry a batch axis (``in_axes``, one per
    argument in the order ``argnums + argnames``, or one for all) of the same size ``B``, divisible by
    ``microbatch_size``. The ``B / microbatch_size`` microbatches (see :func:`reshape_batch_axis`) are evaluated in
    a ``lax.fori_loop`` and combined by ``accumulator``: an :class:`AccumulationType`, an :class:`Accumulator`,
    or a tree of them that is a prefix of ``fun``'s output. ``num_real_microbatches`` (may be traced) stops the
    loop early. ``microbatch_size=None`` returns ``fun``.
    """
    if microbatch_size is None:
        return fun
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    axes = (in_axes,) * (len(argnums) + len(argnames)) if isinstance(in_axes, int) else tuple(in_axes)
    if len(axes) != len(argnums) + len(argnames):
        raise ValueError(f"microbatch: in_axes has {len(axes)} entries for {len(argnums) + len(argnames)} batch "
                         "arguments (argnums + argnames)")
    slots = [("arg", i) for i in argnums] + [("kwarg", name) for name in argnames]

    def microbatched(*args, **kwargs):
        args, kwargs = list(args), dict(kwargs)

        def get(slot):
            return args[slot[1]] if slot[0] == "arg" else kwargs[slot[1]]

        sizes = [jnp.shape(x)[ax] for slot, ax in zip(slots, axes) for x in jax.tree.leaves(get(slot))]
        if len(set(sizes)) > 1:
            raise ValueError(f"microbatch: the batch arguments must have equal batch sizes, got {sizes}")
        if not sizes:
            raise ValueError("microbatch: the batch arguments have no arrays")
        if sizes[0] % microbatch_size:
            raise ValueError(f"microbatch: the batch size {sizes[0]} is not divisible by microbatch_size "
                             f"{microbatch_size}")
        num_microbatches = sizes[0] // microbatch_size
        reshaped = [reshape_batch_axis(get(slot), microbatch_size, ax) for slot, ax in zip(slots, axes)]
        acc = _resolve(accumulator, num_microbatches)

        def evaluate(index):
            call_args, call_kwargs = list(args), dict(kwargs)
            for slot, ax, value in zip(slots, axes, reshaped):
                picked = jax.tree.map(lambda x, ax=ax: jnp.take(x, index, axis=ax), value)
                if slot[0] == "arg":
                    call_args[slot[1]] = picked
                else:
                    call_kwargs[slot[1]] = picked
            return fun(*call_args, **call_kwargs)

        carry = acc.init(jax.eval_shape(evaluate, 0))
        stop = num_microbatches if num_real_microbatches is None else num_real_microbatches
        carry = jax.lax.fori_loop(0, stop, lambda i, c: acc.update(c, evaluate(i), i), carry)
        return acc.finalize(carry)

    return microbatched


def micro_vmap(
    fun: Function,
    in_axes: int | Sequence[int | None] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: Callable[..., Any] = jax.vmap,
    accumulator: Any = AccumulationType.CONCAT,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    """``jax.vmap(fun, in_axes)`` run ``microbatch_size`` rows at a time, the outputs combined by ``accumulator``.

    With the default ``CONCAT`` the result equals ``jax.vmap``'s; ``SUM`` / ``MEAN`` reduce over the batch
    without ever holding all of it. Keyword arguments are batched on axis 0. ``out_axes`` must be 0.
    """
    if out_axes != 0:
        raise NotImplementedError("micro_vmap: only out_axes=0 is supported")
    in_axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def vmapped_and_reduced(*args, kwargs):
        output = vmap_fn(fun, in_axes, out_axes)(*args, **kwargs)
        rows = jax.tree.leaves(output)[0].shape[0]
        return _resolve(accumulator, rows).aggregate(output)

    mapped = microbatch(
        vmapped_and_reduced,
        argnums=tuple(i for i, ax in enumerate(in_axes) if ax is not None),
        microbatch_size=microbatch_size,
        accumulator=accumulator,
        argnames="kwargs",
        in_axes=tuple(ax for ax in in_axes if ax is not None) + (0,),
        num_real_microbatches=num_real_microbatches,
    )
    return lambda *args, **kwargs: mapped(*args, kwargs=kwargs)


def micro_grad(
    fun: Function,
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Any = AccumulationType.SUM,
    transform_fn: Callable[[Any], Any] = lambda x: x,
    metrics_fn: Callable[[Any], Any] = lambda x: None,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    """Per-example gradients of ``fun``, transformed by ``transform_fn`` (e.g. clipped) and accumulated.

    Returns ``g(*args) -> (accumulated, Aux(values, metrics, aux))``: ``accumulated`` combines
    ``transform_fn(grad_i)`` over the examples ``i`` of the batch arguments ``batch_argnums`` with ``accumulator``
    (a sum by default); ``values`` (``fun``'s value), ``metrics`` (``metrics_fn(grad_i)``) and ``aux`` (``fun``'s
    auxiliary output if ``has_aux``) are per example. With ``keep_batch_dim`` each example is given to ``fun``
    as a batch of one.
    """
    batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    with_aux = fun if has_aux else (lambda *a, **k: (fun(*a, **k), None))
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def per_example(*args, **kwargs):
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(values=value, metrics=metrics_fn(grad), aux=aux)

    in_axes = [0 if i in batch_argnums else None for i in range(max(batch_argnums) + 1)]
    mapped = micro_vmap(
        per_example,
        in_axes=in_axes,
        accumulator=(accumulator, AccumulationType.CONCAT),
        microbatch_size=microbatch_size,
        num_real_microbatches=num_real_microbatches,
    )
    if not keep_batch_dim:
        return mapped

    def with_batch_of_one(*args, **kwargs):
        args = [jax.tree.map(lambda x: jnp.expand_dims(x, 1), a) if i in batch_argnums else a
                for i, a in enumerate(args)]
        return mapped(*args, **kwargs)

    return with_batch_of_one
