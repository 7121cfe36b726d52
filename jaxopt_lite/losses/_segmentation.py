"""Segmentation losses: soft Dice / Tversky, generalised Dice, binary Dice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite.losses._common import check_rank, check_same_shape

_REDUCTIONS = ("mean", "sum", "none")


def _dice_loss(
    owner: str,
    predictions,
    targets,
    *,
    class_weights=None,
    smooth=1.0,
    alpha=0.5,
    beta=0.5,
    apply_softmax: bool = True,
    reduction: str = "mean",
    ignore_background: bool = False,
    axis=None,
) -> jax.Array:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if predictions.ndim == targets.ndim - 1:
        predictions = predictions[..., None]
    if targets.ndim == predictions.ndim - 1:
        targets = targets[..., None]
    check_same_shape(owner, "predictions", predictions, "targets", targets)
    if apply_softmax:
        probs = jax.nn.sigmoid(predictions) if predictions.shape[-1] == 1 else jax.nn.softmax(predictions, axis=-1)
    else:
        probs = predictions
        sums = _checks.concrete(predictions)
        if sums is not None:  # checked only when the values are known: never a host sync under jit
            sums = np.sum(sums.astype(np.float64), axis=-1)
            if not np.allclose(sums, 1.0, rtol=1e-5):
                raise ValueError(
                    f"{owner}: with apply_softmax=False, predictions must be probabilities summing to 1 over the "
                    f"class axis, found sums in [{sums.min():.6f}, {sums.max():.6f}]"
                )
    axis = tuple(range(1, probs.ndim - 1)) if axis is None else axis
    intersection = jnp.sum(probs * targets, axis=axis)
    pred_sum = jnp.sum(probs, axis=axis)
    target_sum = jnp.sum(targets, axis=axis)
    numerator = intersection + smooth
    denominator = intersection + alpha * (pred_sum - intersection) + beta * (target_sum - intersection) + smooth
    # With smooth = 0 a class absent from both prediction and target scores a perfect 1, not 0/0.
    coefficient = jnp.where(denominator != 0, numerator / jnp.where(denominator != 0, denominator, 1), 1)
    loss = 1.0 - coefficient  # [..., classes]
    if class_weights is not None:
        check_rank(owner, "class_weights", class_weights, 1)
        loss = loss * class_weights
    if ignore_background and probs.shape[-1] > 1:
        loss = loss[..., 1:]
    if reduction == "mean":
        return jnp.mean(loss, axis=-1)
    if reduction == "sum":
        return jnp.sum(loss, axis=-1)
    return loss


def dice_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    class_weights: jax.typing.ArrayLike | None = None,
    smooth: jax.typing.ArrayLike = 1.0,
    alpha: jax.typing.ArrayLike = 0.5,
    beta: jax.typing.ArrayLike = 0.5,
    apply_softmax: bool = True,
    reduction: str = "mean",
    ignore_background: bool = False,
    axis: int | tuple[int, ...] | None = None,
) -> jax.Array:
    r"""Soft Dice loss per class (Tversky loss for ``alpha != beta``), reduced over classes.

    For class :math:`c`, with probabilities :math:`p` and targets :math:`t` summed over ``axis``:

    .. math::
        I_c = \sum_i p_{ic} t_{ic}, \quad P_c = \sum_i p_{ic}, \quad T_c = \sum_i t_{ic}, \qquad
        \ell_c = 1 - \frac{I_c + s}{I_c + \alpha (P_c - I_c) + \beta (T_c - I_c) + s}

    ``alpha = beta = 1/2`` is the Dice loss; ``alpha`` weighs false positives,
    ``beta`` false negatives.

    Args:
      predictions: logits ``[..., num_classes]``, or ``[..., 1]`` / ``[...]`` for binary (sigmoid).
      targets: one-hot targets of the same shape (binary: ``[..., 1]`` or ``[...]``).
      class_weights: optional weights ``[num_classes]`` multiplying :math:`\ell_c`.
      smooth: :math:`s`, keeps the ratio defined for empty classes.
      alpha: weight of false positives.
      beta: weight of false negatives.
      apply_softmax: apply softmax (sigmoid for one class) to ``predictions``;
        if False they must already be probabilities (checked when concrete).
      reduction: over classes, ``"mean"``, ``"sum"`` or ``"none"``.
      ignore_background: drop class 0 before reducing.
      axis: axes summed in :math:`I, P, T`; default all but the first and last.

    Returns:
      ``[batch]`` for ``"mean"``/``"sum"``, ``[batch, num_classes]`` for ``"none"``.

    Reference: Milletari et al., `V-Net <https://arxiv.org/abs/1606.04797>`_, 2016.
    """
    return _dice_loss(
        "dice_loss",
        predictions,
        targets,
        class_weights=class_weights,
        smooth=smooth,
        alpha=alpha,
        beta=beta,
        apply_softmax=apply_softmax,
        reduction=reduction,
        ignore_background=ignore_background,
        axis=axis,
    )


def multiclass_generalized_dice_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    smooth: jax.typing.ArrayLike = 1.0,
    apply_softmax: bool = True,
    ignore_background: bool = False,
) -> jax.Array:
    r"""Generalised Dice loss: Dice per class weighted by inverse squared class frequency, averaged.

    .. math::
        w_c \propto \frac{1}{F_c^2 + 10^{-7}}, \quad F_c = \sum_{\text{all but class axis}} t_c, \qquad
        \sum_c w_c = C, \qquad \ell = \operatorname{mean}_{b, c}\, w_c \ell_{bc}

    with :math:`\ell_{bc}` the :func:`dice_loss` per class (the weights are
    normalised over all classes, also with ``ignore_background``).

    Args:
      predictions: logits ``[..., num_classes]``.
      targets: one-hot targets of the same shape.
      smooth: Dice smoothing.
      apply_softmax: apply softmax to ``predictions``.
      ignore_background: drop class 0 before averaging.

    Returns:
      A scalar.

    Reference: Sudre et al., `Generalised Dice overlap as a deep learning loss function for highly
    unbalanced segmentations <https://arxiv.org/abs/1707.03237>`_, 2017.
    """
    owner = "multiclass_generalized_dice_loss"
    check_same_shape(owner, "predictions", predictions, "targets", targets)
    targets = jnp.asarray(targets)
    class_frequencies = jnp.sum(targets, axis=tuple(range(targets.ndim - 1)))
    class_weights = 1.0 / (class_frequencies**2 + 1e-7)
    class_weights = class_weights * (class_weights.shape[0] / jnp.sum(class_weights))
    per_class = _dice_loss(
        owner,
        predictions,
        targets,
        class_weights=class_weights,
        smooth=smooth,
        apply_softmax=apply_softmax,
        reduction="none",
        ignore_background=ignore_background,
    )
    return jnp.mean(per_class)


def binary_dice_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    smooth: jax.typing.ArrayLike = 1.0,
    apply_sigmoid: bool = True,
) -> jax.Array:
    """Binary Dice loss: :func:`dice_loss` with one (sigmoid) class.

    Args:
      predictions: logits ``[...]`` or ``[..., 1]``.
      targets: binary targets of the same shape.
      smooth: Dice smoothing.
      apply_sigmoid: apply the sigmoid to ``predictions``.

    Returns:
      The loss per example ``[batch]``.
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if predictions.ndim == targets.ndim and predictions.shape[-1] != 1:
        predictions, targets = predictions[..., None], targets[..., None]
    return _dice_loss(
        "binary_dice_loss", predictions, targets, smooth=smooth, apply_softmax=apply_sigmoid, reduction="mean"
    )
