"""Applying a transformation only at some steps: pass the updates through, or zero them, on the other steps."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    pytree_factory,
    with_extra_args_support,
)


class ConditionFn(Protocol):
    """``should_transform_fn(step, **extra_args) -> bool array of shape []``; ``step`` is an int32 counter."""

    def __call__(self, step: jax.Array, **extra_args: Any) -> jax.Array:
        ...


class ConditionallyTransformState(NamedTuple):
    """The inner transformation's state and the number of ``update`` calls so far (int32, saturating)."""

    inner_state: Any
    step: jax.Array


class ConditionallyMaskState(NamedTuple):
    """The number of ``update`` calls so far (int32, saturating) and the inner transformation's state."""

    step: jax.Array
    inner_state: Any


def _check_inner(owner: str, inner: Any, should_transform_fn: Any) -> None:
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(f"{owner}: inner is not a GradientTransformation: {inner!r}")
    if not callable(should_transform_fn):
        raise TypeError(f"{owner}: should_transform_fn must be callable, got {should_transform_fn!r}")


def _conditional_update(inner, should_transform_fn, forward_extra_args, updates, step, inner_state, params,
                        extra_args, otherwise):
    condition = should_transform_fn(step, **(extra_args if forward_extra_args else {}))
    return jax.lax.cond(
        condition,
        lambda: inner.update(updates, inner_state, params, **extra_args),
        lambda: (otherwise(updates), inner_state),
    )


@pytree_factory
def conditionally_transform(
    inner: GradientTransformation, should_transform_fn: ConditionFn, forward_extra_args: bool = False
) -> GradientTransformationExtraArgs:
    """Runs ``inner`` at the steps where ``should_transform_fn(step)`` holds; on the others the updates and the
    inner state pass through unchanged.

    ``step`` counts previous calls of ``update`` (0 on the first). With ``forward_extra_args=True`` the extra
    keyword arguments of ``update`` are passed to ``should_transform_fn`` too. See :func:`conditionally_mask`
    to zero the updates instead.
    """
    _check_inner("conditionally_transform", inner, should_transform_fn)
    inner = with_extra_args_support(inner)

    def init(params):
        return ConditionallyTransformState(inner_state=inner.init(params), step=_tree.zero_count())

    def update(updates, state, params=None, **extra_args):
        updates, inner_state = _conditional_update(inner, should_transform_fn, forward_extra_args, updates,
                                                   state.step, state.inner_state, params, extra_args, lambda u: u)
        return updates, ConditionallyTransformState(inner_state, _tree.safe_increment(state.step))

    return GradientTransformationExtraArgs(init, update)


@pytree_factory
def conditionally_mask(
    inner: GradientTransformation, should_transform_fn: ConditionFn, forward_extra_args: bool = False
) -> GradientTransformationExtraArgs:
    """Runs ``inner`` at the steps where ``should_transform_fn(step)`` holds; on the others the updates are
    zeros and the inner state is unchanged.

    ``step`` counts previous calls of ``update`` (0 on the first). With ``forward_extra_args=True`` the extra
    keyword arguments of ``update`` are passed to ``should_transform_fn`` too. See
    :func:`conditionally_transform` to pass the updates through instead.
    """
    _check_inner("conditionally_mask", inner, should_transform_fn)
    inner = with_extra_args_support(inner)

    def init(params):
        return ConditionallyMaskState(step=_tree.zero_count(), inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        updates, inner_state = _conditional_update(inner, should_transform_fn, forward_extra_args, updates,
                                                   state.step, state.inner_state, params, extra_args,
                                                   lambda u: jax.tree.map(jnp.zeros_like, u))
        return updates, ConditionallyMaskState(step=_tree.safe_increment(state.step), inner_state=inner_state)

    return GradientTransformationExtraArgs(init, update)
