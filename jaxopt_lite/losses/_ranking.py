"""Ranking losses: the cost of the ranking induced by item scores against relevance labels.

They act on the last axis (a list of items); leading axes are batch axes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxopt_lite.losses._classification import _log_softmax, _neg_weighted_sum
from jaxopt_lite.losses._common import check_broadcastable, check_floating


def _reduce(loss: jax.Array, where: jax.Array | None, reduce_fn: Callable[..., jax.Array] | None) -> jax.Array:
    """Applies ``reduce_fn(loss, where=where)``; masked lists are 0 when unreduced, an all-masked mean is 0."""
    if reduce_fn is None:
        return loss if where is None else jnp.where(where, loss, 0)
    out = reduce_fn(loss, where=where)
    if reduce_fn is jnp.mean and where is not None:
        # No valid list: report 0 rather than 0/0, unless a loss is NaN (that must stay visible).
        out = jnp.where(jnp.any(where) | jnp.any(jnp.isnan(loss)), out, 0)
    return out


def ranking_softmax_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    weights: jax.typing.ArrayLike | None = None,
    reduce_fn: Callable[..., jax.typing.ArrayLike] | None = jnp.mean,
) -> jax.Array:
    r"""Ranking softmax loss (ListNet-style cross entropy over each list).

    .. math:: \ell(s, y) = -\sum_i w_i y_i \log \frac{e^{s_i}}{\sum_{j} e^{s_j}}

    the sums running over the valid items (``where``).

    Args:
      logits: item scores ``[..., list_size]``.
      labels: relevance labels ``[..., list_size]``.
      where: valid items ``[..., list_size]``; invalid items leave both sums.
      weights: per-item weights ``[..., list_size]``.
      reduce_fn: ``jnp.mean`` (default), ``jnp.sum`` or any function taking
        ``where=``; None returns the loss per list. Lists with no valid item
        are left out of the reduction (and are 0 when unreduced); a mean over
        no list is 0.

    Returns:
      The reduced loss, or the loss per list ``[...]`` when ``reduce_fn`` is None.
    """
    owner = "ranking_softmax_loss"
    check_floating(owner, "logits", logits)
    shape = check_broadcastable(owner, "logits", logits, "labels", labels)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels).astype(logits.dtype)
    mask = None
    if where is not None:
        check_broadcastable(owner, "logits", logits, "where", where)
        mask = jnp.broadcast_to(jnp.asarray(where), jnp.broadcast_shapes(shape, jnp.shape(where)))
    if weights is not None:
        check_broadcastable(owner, "labels", labels, "weights", weights)
        labels = labels * weights
    log_probs = _log_softmax(logits, -1, mask)
    include = labels != 0 if mask is None else mask & (labels != 0)
    loss = _neg_weighted_sum(labels, log_probs, include, -1)
    return _reduce(loss, None if mask is None else jnp.any(mask, axis=-1), reduce_fn)
