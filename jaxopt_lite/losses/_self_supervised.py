"""Self-supervised (metric learning) losses: NT-Xent and the triplet margin loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxopt_lite.losses._common import check_broadcastable, check_floating
from jaxopt_lite.losses._regression import cosine_similarity


def ntxent(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    temperature: jax.typing.ArrayLike = 0.07,
) -> jax.Array:
    r"""Normalised temperature-scaled cross entropy (NT-Xent, the SimCLR loss), averaged over positive pairs.

    With :math:`s_{ij} = \cos(e_i, e_j) / T`, positives :math:`P = \{(i, j): i \ne j, y_i = y_j\}` and
    negatives :math:`N_i = \{k: y_k \ne y_i\}`:

    .. math::
        \ell = -\frac{1}{|P|} \sum_{(i, j) \in P}
        \log \frac{e^{s_{ij}}}{e^{s_{ij}} + \sum_{k \in N_i} e^{s_{ik}}}

    (the cosine uses ``epsilon = eps(dtype)`` on the squared norms).

    Args:
      embeddings: ``[batch, dim]``.
      labels: ``[batch]``; equal labels mark positive pairs (e.g. ``[0, 0, 1, 1]``).
      temperature: the temperature :math:`T`.

    Returns:
      A scalar. With no positive pair the loss is 0 (Optax: NaN).

    Reference: Chen et al., `A Simple Framework for Contrastive Learning of Visual
    Representations <https://arxiv.org/abs/2002.05709>`_, 2020.
    """
    owner = "ntxent"
    check_floating(owner, "embeddings", embeddings)
    embeddings, labels = jnp.asarray(embeddings), jnp.asarray(labels)
    if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{owner}: embeddings must be [batch, dim] and labels [batch], got shapes "
            f"{embeddings.shape} and {labels.shape}"
        )
    eps = jnp.finfo(embeddings.dtype).eps
    similarity = cosine_similarity(embeddings[None, :, :], embeddings[:, None, :], epsilon=eps) / temperature
    same = labels[:, None] == labels[None, :]
    positive = same & ~jnp.eye(labels.shape[0], dtype=bool)
    negative = ~same
    # Shift each row by its largest off-diagonal similarity; only differences of s enter the loss.
    off_diagonal = positive | negative
    shift = lax.stop_gradient(jnp.max(jnp.where(off_diagonal, similarity, -jnp.inf), axis=1, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0)
    shifted = jnp.where(off_diagonal, similarity - shift, 0)
    negatives_sum = jnp.sum(jnp.where(negative, jnp.exp(shifted), 0), axis=1, keepdims=True)
    # log(e^{a} + S) with S = sum of negatives (>= 0): log S is taken only where S > 0.
    log_negatives = jnp.where(negatives_sum > 0, jnp.log(jnp.where(negatives_sum > 0, negatives_sum, 1)), -jnp.inf)
    log_denominator = jnp.logaddexp(shifted, log_negatives)
    log_ratio = jnp.where(positive, shifted - log_denominator, 0)
    num_pairs = jnp.sum(positive)
    return -jnp.sum(log_ratio) / jnp.maximum(num_pairs, 1).astype(log_ratio.dtype)


def triplet_margin_loss(
    anchors: jax.typing.ArrayLike,
    positives: jax.typing.ArrayLike,
    negatives: jax.typing.ArrayLike,
    axis: int = -1,
    norm_degree: jax.typing.ArrayLike = 2,
    margin: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-6,
) -> jax.Array:
    r"""Triplet margin loss per example.

    .. math::
        \ell = \max\big(d(a, p) - d(a, n) + m, 0\big), \qquad
        d(x, y) = \Big(\sum_i |x_i - y_i|^q + \epsilon\Big)^{1/q}

    with :math:`q` = ``norm_degree`` and the sum over ``axis``.

    Args:
      anchors: ``[batch, dim]``.
      positives: embeddings close to the anchors, broadcastable with them.
      negatives: embeddings far from the anchors, broadcastable with them.
      axis: the embedding axis.
      norm_degree: :math:`q`.
      margin: :math:`m`.
      eps: added inside the root, which keeps the gradient finite at :math:`d = 0`.

    Returns:
      The loss per example, shape ``[batch]``.

    Differs from Optax for odd ``norm_degree``: Optax sums :math:`(x_i - y_i)^q`
    without the absolute value (not a norm); equal for even degrees.

    Reference: Balntas et al., `Learning local feature descriptors with triplets and shallow
    convolutional neural networks <https://bmva-archive.org.uk/bmvc/2016/papers/paper119/>`_, BMVC 2016.
    """
    owner = "triplet_margin_loss"
    for name, x in (("anchors", anchors), ("positives", positives), ("negatives", negatives)):
        check_floating(owner, name, x)
    check_broadcastable(owner, "anchors", anchors, "positives", positives)
    check_broadcastable(owner, "anchors", anchors, "negatives", negatives)
    anchors = jnp.asarray(anchors)

    def distance(other):
        return (jnp.sum(jnp.abs(anchors - other) ** norm_degree, axis=axis) + eps) ** (1 / norm_degree)

    return jnp.maximum(distance(jnp.asarray(positives)) - distance(jnp.asarray(negatives)) + margin, 0)
