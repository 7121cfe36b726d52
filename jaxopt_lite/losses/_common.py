"""Input checks and masked reductions shared by the losses.

Every check reads only shapes and dtypes, so it runs at trace time and never
touches a traced value. Messages name the loss the user called.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Axis = int | tuple[int, ...] | None


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def check_floating(owner: str, name: str, x: Any) -> None:
    """Raises ``TypeError`` if ``x`` is not a floating-point array."""
    dtype = jax.dtypes.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{owner}: {name} must be a floating-point array, got dtype {dtype}")


def check_integer(owner: str, name: str, x: Any) -> None:
    """Raises ``TypeError`` if ``x`` is not an integer array."""
    dtype = jax.dtypes.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{owner}: {name} must be an integer array (class indices), got dtype {dtype}")


def check_same_shape(owner: str, name_a: str, a: Any, name_b: str, b: Any) -> None:
    if shape_of(a) != shape_of(b):
        raise ValueError(
            f"{owner}: {name_a} and {name_b} must have the same shape, got {shape_of(a)} and {shape_of(b)}"
        )


def check_broadcastable(owner: str, name_a: str, a: Any, name_b: str, b: Any) -> tuple[int, ...]:
    """Returns the broadcast shape of ``a`` and ``b``, or raises a ``ValueError`` naming both."""
    try:
        return jnp.broadcast_shapes(shape_of(a), shape_of(b))
    except ValueError:
        raise ValueError(
            f"{owner}: {name_a} shape {shape_of(a)} and {name_b} shape {shape_of(b)} do not broadcast together"
        ) from None


def check_rank(owner: str, name: str, x: Any, rank: int) -> None:
    if len(shape_of(x)) != rank:
        raise ValueError(f"{owner}: {name} must have rank {rank}, got shape {shape_of(x)}")


def normalize_axes(owner: str, axis: Axis, ndim: int) -> tuple[int, ...]:
    """``axis`` as a sorted-by-position tuple of non-negative axes (``None``: all axes)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    out = []
    for a in axes:
        a = operator.index(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"{owner}: axis {a} is out of bounds for an array of rank {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{owner}: repeated axis in {axis}")
    return tuple(out)


def expand_where(owner: str, where: Any, axis: Axis, shape: tuple[int, ...]) -> jax.Array | None:
    """A ``where`` mask given per example (reduced axes absent) or per element, broadcast to ``shape``.

    Optax accepts both forms for the cross entropies: a mask whose rank differs
    from the logits' gets the reduced axes inserted.
    """
    if where is None:
        return None
    given = jnp.asarray(where)
    where = given
    if where.ndim != len(shape):
        where = jnp.expand_dims(where, normalize_axes(owner, axis, len(shape)))
    try:
        return jnp.broadcast_to(where, shape)
    except ValueError:
        raise ValueError(
            f"{owner}: where must have the logits' shape {shape} or their shape without the class axis {axis}, "
            f"got {given.shape}"
        ) from None


def masked(mask: jax.Array | None, x: jax.Array, fill: Any = 0) -> jax.Array:
    """``x`` where ``mask``, ``fill`` elsewhere (``x`` itself when there is no mask)."""
    return x if mask is None else jnp.where(mask, x, fill)
