"""Classification losses: cross entropies, focal and poly losses, margin losses, label smoothing.

Conventions (as in Optax): losses are per example, nothing is averaged; the
class axis is ``axis`` (default last) and is reduced away. Cross entropies use
``0 · log 0 = 0``: a class with label 0 contributes exactly 0 even where its
logit is ``-inf``, and entries excluded by ``where`` contribute exactly 0 and
receive a zero (never NaN) gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxopt_lite.losses._common import (
    Axis,
    check_broadcastable,
    check_floating,
    check_integer,
    check_same_shape,
    expand_where,
    masked,
    normalize_axes,
)

# ----------------------------------------------------------------------------------------------------------------------
# Masked log-softmax and the cross-entropy sum shared by the softmax losses.


def _log_softmax(logits: jax.Array, axis: Axis, mask: jax.Array | None) -> jax.Array:
    """``logits - logsumexp(logits over mask)``; entries outside ``mask`` are ``-inf``.

    A row with no included entry (or only ``-inf`` logits) gets ``-inf``
    everywhere instead of NaN, and its gradient is zero.
    """
    x = masked(mask, logits, -jnp.inf)
    row_max = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)
    shifted = x - row_max
    total = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
    return shifted - jnp.log(jnp.where(total > 0, total, 1))


def _neg_weighted_sum(weights: jax.Array, log_probs: jax.Array, include: jax.Array, axis: Axis) -> jax.Array:
    """``-sum(weights * log_probs over include)``, with excluded terms exactly 0 and NaN-free in both directions."""
    safe_log_probs = jnp.where(include, log_probs, 0)
    return -jnp.sum(jnp.where(include, weights * safe_log_probs, 0), axis=axis)


def _softmax_cross_entropy(owner: str, logits, labels, axis: Axis, where) -> jax.Array:
    check_floating(owner, "logits", logits)
    check_broadcastable(owner, "logits", logits, "labels", labels)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    mask = expand_where(owner, where, axis, logits.shape)
    log_probs = _log_softmax(logits, axis, mask)
    include = labels != 0 if mask is None else mask & (labels != 0)
    return _neg_weighted_sum(labels, log_probs, include, axis)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross entropy between logits and target distributions (categorical cross entropy).

    .. math::
        \ell(x, y) = -\sum_{j} y_j \log \operatorname{softmax}(x)_j
        = \sum_j y_j \Big(\log \sum_k e^{x_k} - x_j\Big),

    the sums running over ``axis`` and, if given, over the entries where
    ``where`` is true (masked classes leave the normaliser too).

    Args:
      logits: unnormalised log-probabilities, ``[..., num_classes]``.
      labels: target distributions (e.g. one-hot), broadcastable with ``logits``.
      axis: the class axis or axes.
      where: classes to include, of the logits' shape, or of the batch shape
        (the reduced axes absent) to include or drop whole examples.

    Returns:
      The cross entropy per example, shape ``[...]``. An example with no
      included class gets 0.

    ``0 · log 0 = 0``: unlike Optax, a class with label 0 and logit ``-inf``
    contributes 0 rather than NaN (this function then equals
    :func:`safe_softmax_cross_entropy`).
    """
    return _softmax_cross_entropy("softmax_cross_entropy", logits, labels, axis, where)


def safe_softmax_cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    r"""Softmax cross entropy over the last axis with ``0 · log 0 = 0``.

    .. math:: \ell(x, y) = -\sum_{j:\, y_j \ne 0} y_j \log \operatorname{softmax}(x)_j

    A class with ``labels == 0`` contributes exactly 0 and gets a zero gradient,
    also where its logit is ``-inf`` (a masked class).

    Args:
      logits: unnormalised log-probabilities, ``[..., num_classes]``.
      labels: target distributions, broadcastable with ``logits``.

    Returns:
      The cross entropy per example, shape ``[...]``.
    """
    return _softmax_cross_entropy("safe_softmax_cross_entropy", logits, labels, -1, None)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross entropy with integer class labels (sparse categorical cross entropy).

    .. math:: \ell(x, y) = \log \sum_k e^{x_k} - x_y

    Only the normaliser is subtracted, and only from the label's logit.

    Args:
      logits: unnormalised log-probabilities, ``[..., num_classes]``.
      labels: integer classes in ``[0, num_classes)``, of the batch shape ``[...]``.
      axis: the class axis, or a tuple of axes; with a tuple the classes are
        the flattened (C-order) slice ``logits[axis]`` and a label is a flat
        index into it.
      where: classes to include in the normaliser, of the logits' shape, or of
        the batch shape to drop whole examples. An example with no included
        class gets 0.

    Returns:
      The cross entropy per example, shape ``[...]``.
    """
    owner = "softmax_cross_entropy_with_integer_labels"
    check_floating(owner, "logits", logits)
    check_integer(owner, "labels", labels)
    if not isinstance(axis, (int, tuple)):
        raise TypeError(f"{owner}: axis must be an int or a tuple of ints, got {axis!r}")
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    mask = expand_where(owner, where, axis, logits.shape)
    class_axes = normalize_axes(owner, axis, logits.ndim)
    batch_axes = tuple(a for a in range(logits.ndim) if a not in class_axes)
    batch_shape = tuple(logits.shape[a] for a in batch_axes)

    def to_rows(x):  # classes flattened onto the last axis
        return jnp.transpose(x, batch_axes + class_axes).reshape(batch_shape + (-1,))

    if not _broadcasts_to(labels.shape, batch_shape):
        raise ValueError(
            f"{owner}: labels must have the shape {batch_shape} of logits {logits.shape} without the class "
            f"axis {axis}, got labels of shape {labels.shape}"
        )
    logits = to_rows(logits)
    mask = None if mask is None else to_rows(mask)
    labels = jnp.broadcast_to(labels, batch_shape)
    label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    x = masked(mask, logits, -jnp.inf)
    row_max = lax.stop_gradient(jnp.max(x, axis=-1))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)
    total = jnp.sum(jnp.exp(x - row_max[..., None]), axis=-1)
    log_normalizers = jnp.log(jnp.where(total > 0, total, 1)) + row_max
    loss = log_normalizers - label_logits
    if mask is not None:
        loss = jnp.where(jnp.any(mask, axis=-1), loss, 0)
    return loss


def _broadcasts_to(shape, target) -> bool:
    try:
        return jnp.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def poly_loss_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 2.0,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Poly-1 loss: cross entropy plus ``epsilon`` times the first polynomial term.

    .. math:: \ell(x, y) = -\sum_j y_j \log p_j + \epsilon \sum_j y_j (1 - p_j),
        \qquad p = \operatorname{softmax}(x)

    (for one-hot labels the last sum is :math:`1 - p_t`). ``epsilon = 2`` is the
    paper's choice for ImageNet, ``-1`` for detection.

    Args:
      logits: unnormalised log-probabilities, ``[..., num_classes]``.
      labels: target distributions, broadcastable with ``logits``.
      epsilon: the coefficient of :math:`(1 - p_t)`.
      axis: the class axis or axes.
      where: classes to include (see :func:`softmax_cross_entropy`).

    Returns:
      The loss per example, shape ``[...]``.

    Reference: Leng et al., `PolyLoss <https://arxiv.org/abs/2204.12511>`_, ICLR 2022.
    """
    owner = "poly_loss_cross_entropy"
    check_floating(owner, "logits", logits)
    check_floating(owner, "labels", labels)
    check_broadcastable(owner, "logits", logits, "labels", labels)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    mask = expand_where(owner, where, axis, logits.shape)
    log_probs = _log_softmax(logits, axis, mask)
    include = labels != 0 if mask is None else mask & (labels != 0)
    cross_entropy = _neg_weighted_sum(labels, log_probs, include, axis)
    one_minus_pt = jnp.sum(masked(mask, labels * (1 - jnp.exp(log_probs))), axis=axis)
    return cross_entropy + epsilon * one_minus_pt


# ----------------------------------------------------------------------------------------------------------------------
# Sigmoid (binary) losses.


def sigmoid_binary_cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    r"""Elementwise sigmoid cross entropy (binary, or multi-label with independent classes).

    .. math:: \ell(x, y) = -y \log \sigma(x) - (1 - y) \log \sigma(-x)

    computed with ``log_sigmoid``, finite for any finite logit.

    Args:
      logits: logit of the positive class, any shape.
      labels: targets in ``[0, 1]`` (hard or soft), broadcastable with ``logits``.

    Returns:
      The loss per element, of the broadcast shape.
    """
    owner = "sigmoid_binary_cross_entropy"
    check_floating(owner, "logits", logits)
    check_broadcastable(owner, "logits", logits, "labels", labels)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels).astype(logits.dtype)
    return -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)


def _log_mix(weight_a: jax.Array, log_a: jax.Array, weight_b: jax.Array, log_b: jax.Array) -> jax.Array:
    """``log(weight_a * exp(log_a) + weight_b * exp(log_b))`` for weights in ``[0, 1]`` with a positive sum.

    Shifted by the larger log among the terms with a positive weight, so a term
    with weight 0 can neither overflow nor send the result to ``log 0``.
    """
    shift = lax.stop_gradient(
        jnp.maximum(jnp.where(weight_a > 0, log_a, -jnp.inf), jnp.where(weight_b > 0, log_b, -jnp.inf))
    )
    shift = jnp.where(jnp.isfinite(shift), shift, 0)
    term_a = jnp.where(weight_a > 0, weight_a * jnp.exp(jnp.where(weight_a > 0, log_a, shift) - shift), 0)
    term_b = jnp.where(weight_b > 0, weight_b * jnp.exp(jnp.where(weight_b > 0, log_b, shift) - shift), 0)
    return jnp.log(term_a + term_b) + shift


def sigmoid_focal_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    alpha: jax.typing.ArrayLike | None = None,
    gamma: jax.typing.ArrayLike = 2.0,
) -> jax.Array:
    r"""Sigmoid focal loss: cross entropy down-weighted on well-classified elements.

    .. math::
        \ell(x, y) = \alpha_t\, (1 - p_t)^\gamma\, \mathrm{BCE}(x, y), \qquad
        1 - p_t = y\, \sigma(-x) + (1 - y)\, \sigma(x), \qquad
        \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    (:math:`\alpha_t = 1` when ``alpha`` is None). The weight is computed as
    :math:`\exp(\gamma \log(1 - p_t))` with the log taken stably, so it stays
    finite, with a finite gradient, at any finite logit and any ``gamma >= 0``.

    Args:
      logits: logit of the positive class, any shape.
      labels: targets in ``[0, 1]``, broadcastable with ``logits``.
      alpha: weight of the positive class in ``(0, 1)``, or None for no weighting.
      gamma: focusing exponent; 0 gives the (``alpha``-weighted) cross entropy.

    Returns:
      The loss per element, of the broadcast shape.

    Reference: Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_, 2017.
    """
    owner = "sigmoid_focal_loss"
    check_floating(owner, "logits", logits)
    check_broadcastable(owner, "logits", logits, "labels", labels)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels).astype(logits.dtype)
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    cross_entropy = -labels * log_p - (1.0 - labels) * log_not_p
    log_one_minus_pt = _log_mix(labels, log_not_p, 1.0 - labels, log_p)
    loss = cross_entropy * jnp.exp(gamma * log_one_minus_pt)
    if alpha is None:
        return loss
    return (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss


def hinge_loss(predictor_outputs: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    r"""Binary hinge loss, elementwise: :math:`\max(0, 1 - s\, t)` for targets :math:`t \in \{-1, 1\}`.

    Args:
      predictor_outputs: scores ``s``.
      targets: targets in ``{-1, 1}``, broadcastable with the scores.

    Returns:
      The loss per element.
    """
    check_broadcastable("hinge_loss", "predictor_outputs", predictor_outputs, "targets", targets)
    return jnp.maximum(0, 1 - jnp.asarray(predictor_outputs) * jnp.asarray(targets))


def perceptron_loss(predictor_outputs: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    r"""Binary perceptron loss, elementwise: :math:`\max(0, -s\, t)` for targets :math:`t \in \{-1, 1\}`.

    Args:
      predictor_outputs: scores ``s``.
      targets: targets in ``{-1, 1}``, of the same shape.

    Returns:
      The loss per element.
    """
    check_same_shape("perceptron_loss", "predictor_outputs", predictor_outputs, "targets", targets)
    return jnp.maximum(0, -jnp.asarray(predictor_outputs) * jnp.asarray(targets))


def sparsemax_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    r"""Binary sparsemax loss, elementwise; zero exactly when ``sparse_sigmoid(logits) == labels``.

    .. math::
        \ell(x, y) = \operatorname{sparse\_plus}(z), \quad z = x \text{ if } y = 0 \text{ else } -x, \qquad
        \operatorname{sparse\_plus}(z) = \begin{cases} 0 & z \le -1 \\ (z + 1)^2 / 4 & |z| < 1 \\
        z & z \ge 1 \end{cases}

    Args:
      logits: scores, any shape.
      labels: targets in ``{0, 1}``, broadcastable with ``logits``.

    Returns:
      The loss per element.

    Reference: Blondel, Martins, Niculae, `Learning with Fenchel-Young Losses
    <https://arxiv.org/abs/1901.02324>`_, JMLR 2020, Sec. 4.4.
    """
    check_broadcastable("sparsemax_loss", "logits", logits, "labels", labels)
    logits = jnp.asarray(logits)
    return jax.nn.sparse_plus(jnp.where(jnp.asarray(labels) != 0, -logits, logits))


def _label_scores(owner: str, scores, labels) -> tuple[jax.Array, jax.Array]:
    """Checks integer ``labels`` of shape ``scores.shape[:-1]``; returns ``scores`` and each label's score."""
    check_integer(owner, "labels", labels)
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    if scores.ndim < 1 or labels.shape != scores.shape[:-1]:
        raise ValueError(
            f"{owner}: labels must have the shape of scores without the class axis, "
            f"got scores {scores.shape} and labels {labels.shape}"
        )
    return scores, jnp.take_along_axis(scores, labels[..., None], axis=-1)[..., 0]


def multiclass_hinge_loss(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    r"""Multiclass hinge loss (Crammer-Singer): :math:`\max_j (s_j + [j \ne y]) - s_y`.

    Args:
      scores: scores ``[..., num_classes]``.
      labels: integer classes ``[...]``.

    Returns:
      The loss per example, shape ``[...]``.
    """
    scores, label_scores = _label_scores("multiclass_hinge_loss", scores, labels)
    not_label = jnp.arange(scores.shape[-1]) != jnp.asarray(labels)[..., None]
    return jnp.max(scores + not_label.astype(scores.dtype), axis=-1) - label_scores


def multiclass_perceptron_loss(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    r"""Multiclass perceptron loss: :math:`\max_j s_j - s_y`.

    Args:
      scores: scores ``[..., num_classes]``.
      labels: integer classes ``[...]``.

    Returns:
      The loss per example, shape ``[...]``.

    Reference: Collins, Discriminative training methods for hidden Markov models, EMNLP 2002.
    """
    scores, label_scores = _label_scores("multiclass_perceptron_loss", scores, labels)
    return jnp.max(scores, axis=-1) - label_scores


# ----------------------------------------------------------------------------------------------------------------------
# Label smoothing.


def smooth_labels(
    labels: jax.typing.ArrayLike,
    alpha: jax.typing.ArrayLike,
    *,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Label smoothing: :math:`(1 - \alpha)\, y + \alpha / K`.

    ``K`` is the number of classes along ``axis``, or the number of included
    classes when ``where`` is given (at least 1).

    Args:
      labels: one-hot (or soft) labels.
      alpha: the smoothing factor in ``[0, 1]``.
      axis: the class axis or axes.
      where: classes to count, broadcastable with ``labels``.

    Returns:
      The smoothed labels, of the labels' shape.

    Reference: Müller et al., `When does label smoothing help? <https://arxiv.org/abs/1906.02629>`_, 2019.
    """
    owner = "smooth_labels"
    check_floating(owner, "labels", labels)
    labels = jnp.asarray(labels)
    if where is None:
        num_classes = 1
        for a in normalize_axes(owner, axis, labels.ndim):
            num_classes *= labels.shape[a]
    else:
        check_broadcastable(owner, "labels", labels, "where", where)
        num_classes = jnp.maximum(jnp.sum(jnp.asarray(where), axis=axis, keepdims=True), 1).astype(labels.dtype)
    return (1.0 - alpha) * labels + alpha / num_classes
