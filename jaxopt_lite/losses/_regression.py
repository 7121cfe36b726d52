"""Regression losses: squared error, Huber, log-cosh, cosine similarity and distance.

Elementwise losses keep the shape of the predictions; the cosine losses reduce
over ``axis``. Nothing is averaged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_lite.losses._common import Axis, check_broadcastable, check_floating, check_same_shape


def _errors(owner: str, predictions, targets, *, same_shape: bool) -> jax.Array:
    check_floating(owner, "predictions", predictions)
    predictions = jnp.asarray(predictions)
    if targets is None:
        return predictions
    if same_shape:
        check_same_shape(owner, "predictions", predictions, "targets", targets)
    else:
        check_broadcastable(owner, "predictions", predictions, "targets", targets)
    return predictions - jnp.asarray(targets)


def squared_error(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike | None = None) -> jax.Array:
    r"""Elementwise squared error :math:`(p - t)^2` (``targets=None`` means zeros); MSE is its mean.

    Args:
      predictions: any shape.
      targets: the same shape as ``predictions`` (no broadcasting), or None.

    Returns:
      The squared errors, of the predictions' shape.
    """
    return _errors("squared_error", predictions, targets, same_shape=True) ** 2


def l2_loss(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike | None = None) -> jax.Array:
    r"""Elementwise :math:`\tfrac12 (p - t)^2`, half the :func:`squared_error` (Bishop's convention).

    Args:
      predictions: any shape.
      targets: the same shape as ``predictions``, or None for zeros.

    Returns:
      The losses, of the predictions' shape.
    """
    return 0.5 * _errors("l2_loss", predictions, targets, same_shape=True) ** 2


def huber_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike | None = None,
    *,
    delta: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    r"""Elementwise Huber loss: quadratic within ``delta`` of the target, linear beyond.

    .. math::
        \ell(e) = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\
        \tfrac12 \delta^2 + \delta (|e| - \delta) & |e| > \delta \end{cases}, \qquad e = p - t

    Its gradient is the error clipped to ``[-delta, delta]``.

    Args:
      predictions: any shape.
      targets: broadcastable with ``predictions``, or None for zeros.
      delta: where the loss turns linear.

    Returns:
      The losses, of the broadcast shape.
    """
    abs_errors = jnp.abs(_errors("huber_loss", predictions, targets, same_shape=False))
    quadratic = jnp.minimum(abs_errors, delta)
    # |e| - min(|e|, delta) rather than max(|e| - delta, 0): one kink, not two subgradients summed at |e| = delta.
    return 0.5 * quadratic**2 + delta * (abs_errors - quadratic)


def log_cosh(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike | None = None) -> jax.Array:
    r"""Elementwise :math:`\log\cosh(p - t)`: about :math:`e^2/2` near 0 and :math:`|e| - \log 2` far away.

    Computed as :math:`|e| + \log(1 + e^{-2|e|}) - \log 2`, finite for any
    finite error; its gradient is :math:`\tanh(e)`.

    Args:
      predictions: any shape.
      targets: broadcastable with ``predictions``, or None for zeros.

    Returns:
      The losses, of the broadcast shape.

    Reference: Chen et al., `Log Hyperbolic Cosine Loss Improves Variational Auto-Encoder
    <https://openreview.net/pdf?id=rkglvsC9Ym>`_, 2019.
    """
    errors = _errors("log_cosh", predictions, targets, same_shape=False)
    abs_errors = jnp.abs(errors)
    return abs_errors + jnp.log1p(jnp.exp(-2 * abs_errors)) - jnp.log(2.0).astype(errors.dtype)


def _cosine_similarity(owner: str, predictions, targets, epsilon, axis: Axis, where) -> jax.Array:
    check_floating(owner, "predictions", predictions)
    check_floating(owner, "targets", targets)
    shape = check_broadcastable(owner, "predictions", predictions, "targets", targets)
    a, b = jnp.asarray(predictions), jnp.asarray(targets)
    if where is not None:
        try:
            where = jnp.broadcast_to(jnp.asarray(where), shape)
        except ValueError:
            raise ValueError(f"{owner}: where shape {jnp.shape(where)} does not broadcast to shape {shape}") from None
        a, b = jnp.where(where, a, 0), jnp.where(where, b, 0)

    def safe_norm(x):
        # A zero vector has no direction: divide it by 1 (cosine 0) rather than by 0 (NaN, also in the gradient).
        squared = jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), epsilon)
        return jnp.sqrt(jnp.where(squared > 0, squared, 1))

    return jnp.sum((a / safe_norm(a)) * (b / safe_norm(b)), axis=axis)


def cosine_similarity(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 0.0,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Cosine of the angle between predictions and targets along ``axis``.

    .. math:: \cos(p, t) = \frac{\langle p, t\rangle}{\max(\|p\|^2, \epsilon)^{1/2} \max(\|t\|^2, \epsilon)^{1/2}}

    Args:
      predictions: vectors ``[..., dim]``.
      targets: vectors broadcastable with ``predictions``.
      epsilon: lower bound on each squared norm in the denominator.
      axis: the axis or axes holding the vector.
      where: entries to include, broadcastable with the inputs.

    Returns:
      The cosine per example, shape ``[...]``. A zero vector gives 0 (Optax:
      NaN when ``epsilon = 0``).
    """
    return _cosine_similarity("cosine_similarity", predictions, targets, epsilon, axis, where)


def cosine_distance(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 0.0,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Cosine distance :math:`1 - \cos(p, t)`; see :func:`cosine_similarity` for the arguments.

    Returns:
      The distance per example, shape ``[...]``, in ``[0, 2]``.
    """
    return 1.0 - _cosine_similarity("cosine_distance", predictions, targets, epsilon, axis, where)
