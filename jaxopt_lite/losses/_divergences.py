"""Kullback-Leibler divergences between a target and a predicted distribution (predictions in log space).

Terms with a zero target (``0 · log 0 = 0``) and entries excluded by ``where``
contribute exactly 0 and receive a zero, never NaN, gradient.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from jaxopt_lite.losses._common import Axis, check_broadcastable, check_floating


def _mask(owner: str, where, shape) -> jax.Array | None:
    if where is None:
        return None
    try:
        return jnp.broadcast_to(jnp.asarray(where), shape)
    except ValueError:
        raise ValueError(f"{owner}: where shape {jnp.shape(where)} does not broadcast to shape {shape}") from None


def _checked(owner: str, log_predictions, targets, targets_name: str, where):
    check_floating(owner, "log_predictions", log_predictions)
    check_floating(owner, targets_name, targets)
    shape = check_broadcastable(owner, "log_predictions", log_predictions, targets_name, targets)
    return jnp.asarray(log_predictions), jnp.asarray(targets), _mask(owner, where, shape)


def _kl_terms(log_predictions, targets, mask) -> jax.Array:
    """Elementwise ``t (log t - log q)``, 0 where ``t == 0`` or outside ``mask``."""
    include = targets != 0 if mask is None else mask & (targets != 0)
    safe_targets = jnp.where(include, targets, 1)
    safe_log_predictions = jnp.where(include, log_predictions, 0)
    return jnp.where(include, safe_targets * (jnp.log(safe_targets) - safe_log_predictions), 0)


def kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Kullback-Leibler divergence of the predictions from the targets.

    .. math:: \mathrm{KL}(t \,\|\, q) = \sum_j t_j (\log t_j - \log q_j)

    summed over ``axis`` (and the entries where ``where`` is true).

    Args:
      log_predictions: log-probabilities :math:`\log q`, ``[..., dim]``.
      targets: probabilities :math:`t`, broadcastable with ``log_predictions``.
      axis: the axis or axes to sum over.
      where: entries to include, broadcastable with the inputs.

    Returns:
      The divergence per example, shape ``[...]``.

    Reference: Kullback and Leibler, On Information and Sufficiency, 1951.
    """
    log_predictions, targets, mask = _checked("kl_divergence", log_predictions, targets, "targets", where)
    return jnp.sum(_kl_terms(log_predictions, targets, mask), axis=axis)


def kl_divergence_with_log_targets(
    log_predictions: jax.typing.ArrayLike,
    log_targets: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Kullback-Leibler divergence with the targets in log space.

    .. math:: \mathrm{KL}(t \,\|\, q) = \sum_j e^{\log t_j} (\log t_j - \log q_j)

    A target with ``log_targets == -inf`` contributes 0.

    Args:
      log_predictions: log-probabilities :math:`\log q`, ``[..., dim]``.
      log_targets: log-probabilities :math:`\log t`, broadcastable with ``log_predictions``.
      axis: the axis or axes to sum over.
      where: entries to include, broadcastable with the inputs.

    Returns:
      The divergence per example, shape ``[...]``.
    """
    owner = "kl_divergence_with_log_targets"
    log_predictions, log_targets, mask = _checked(owner, log_predictions, log_targets, "log_targets", where)
    include = log_targets != -jnp.inf if mask is None else mask & (log_targets != -jnp.inf)
    safe_log_targets = jnp.where(include, log_targets, 0)
    safe_log_predictions = jnp.where(include, log_predictions, 0)
    terms = jnp.exp(safe_log_targets) * (safe_log_targets - safe_log_predictions)
    return jnp.sum(jnp.where(include, terms, 0), axis=axis)


def generalized_kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Generalised KL divergence between unnormalised non-negative measures.

    .. math:: D(t \,\|\, q) = \sum_j t_j (\log t_j - \log q_j) + q_j - t_j

    the Bregman divergence of :math:`x \log x - x`; it equals the KL divergence
    when both sum to 1.

    Args:
      log_predictions: :math:`\log q`, ``[..., dim]``.
      targets: :math:`t \ge 0`, broadcastable with ``log_predictions``.
      axis: the axis or axes to sum over.
      where: entries to include, broadcastable with the inputs.

    Returns:
      The divergence per example, shape ``[...]``.

    Reference: Boyd and Vandenberghe, Convex Optimization, 2004, p. 90.
    """
    log_predictions, targets, mask = _checked("generalized_kl_divergence", log_predictions, targets, "targets", where)
    mass = jnp.exp(log_predictions if mask is None else jnp.where(mask, log_predictions, 0)) - targets
    mass = mass if mask is None else jnp.where(mask, mass, 0)
    return jnp.sum(_kl_terms(log_predictions, targets, mask) + mass, axis=axis)


def convex_kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Deprecated (as in Optax): use :func:`generalized_kl_divergence`, which this calls."""
    warnings.warn(
        "The function convex_kl_divergence is deprecated. Please use generalized_kl_divergence instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)
