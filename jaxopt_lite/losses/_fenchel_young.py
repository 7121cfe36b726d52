r"""Fenchel-Young losses and the multiclass sparsemax loss.

A Fenchel-Young loss built on a convex "max" function :math:`\Omega^*` is

.. math:: \ell(s, y) = \Omega^*(s) - \langle y, s \rangle

(plus :math:`\Omega(y)`, a constant in the scores that is left out). Its
gradient in the scores is :math:`\nabla\Omega^*(s) - y`: with
:math:`\Omega^* = \operatorname{logsumexp}` this is softmax minus the target,
with the sparsemax conjugate below it is the simplex projection minus the target.

Reference: Blondel, Martins, Niculae, `Learning with Fenchel-Young Losses
<https://arxiv.org/abs/1901.02324>`_, JMLR 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_lite.losses._classification import _label_scores


@jax.custom_jvp
def _projection_simplex(x: jax.Array) -> jax.Array:
    r"""Euclidean projection of each row (last axis) onto the probability simplex (sparsemax).

    :math:`p = \max(x - \tau, 0)` with :math:`\tau` chosen so that :math:`\sum p = 1`:
    sort descending, the support is the largest :math:`k` with
    :math:`1 + k\,u_k > \sum_{i \le k} u_i`, and :math:`\tau = (\sum_{i \le k} u_i - 1)/k`.
    ``-inf`` entries get probability 0. O(n log n) per row.

    (Private: ``jaxopt_lite.projections`` holds the public projections.)
    """
    u = jnp.flip(jnp.sort(x, axis=-1), axis=-1)
    cumsum = jnp.cumsum(u, axis=-1)
    k = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    support_size = jnp.sum(1 + k * u > cumsum, axis=-1, keepdims=True)  # the first entry always qualifies
    tau = (jnp.take_along_axis(cumsum, support_size - 1, axis=-1) - 1) / support_size.astype(x.dtype)
    return jnp.maximum(x - tau, 0)


@_projection_simplex.defjvp
def _projection_simplex_jvp(primals, tangents):
    # On the support S the projection is x - tau(x) with tau the mean of x_S minus 1/|S|, so its
    # Jacobian is the centring matrix on S (and 0 off S).
    (x,), (x_dot,) = primals, tangents
    p = _projection_simplex(x)
    support = (p > 0).astype(x_dot.dtype)
    mean_on_support = jnp.sum(support * x_dot, axis=-1, keepdims=True) / jnp.sum(support, axis=-1, keepdims=True)
    return p, support * (x_dot - mean_on_support)


def multiclass_sparsemax_loss(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    r"""Multiclass sparsemax loss, the Fenchel-Young loss of the Gini negentropy.

    .. math::
        \ell(s, y) = \langle p, s \rangle + \tfrac12 (1 - \|p\|^2) - s_y, \qquad
        p = \operatorname{sparsemax}(s) = \operatorname{argmin}_{q \in \Delta} \|q - s\|^2

    It is 0 exactly when ``sparsemax(s)`` is the one-hot label; its gradient is
    :math:`p - e_y`.

    Args:
      scores: scores ``[..., num_classes]`` (Optax: exactly ``[batch, num_classes]``).
      labels: integer classes ``[...]``.

    Returns:
      The loss per example, shape ``[...]``.

    Reference: Martins and Astudillo, `From Softmax to Sparsemax <https://arxiv.org/abs/1602.02068>`_, ICML 2016.
    """
    scores, label_scores = _label_scores("multiclass_sparsemax_loss", scores, labels)
    p = _projection_simplex(scores)
    on_support = p > 0
    # <p, s> - s_y = <p, s - s_y> since sum(p) = 1; the shifted form has no cancellation.
    gaps = jnp.where(on_support, scores - label_scores[..., None], 0)
    return jnp.sum(jnp.where(on_support, p * gaps, 0), axis=-1) + 0.5 * (1 - jnp.sum(p * p, axis=-1))


def make_fenchel_young_loss(max_fun: Callable[..., Any]) -> Callable[..., jax.Array]:
    r"""Builds the Fenchel-Young loss :math:`\ell(s, y) = \Omega^*(s) - \langle y, s\rangle` of a max function.

    Args:
      max_fun: :math:`\Omega^*`, mapping a score vector ``[n]`` to a scalar, e.g.
        ``jax.scipy.special.logsumexp`` (giving the softmax cross entropy up to
        the targets' entropy).

    Returns:
      ``fenchel_young_loss(scores, targets, *args, **kwargs)`` over the last
      axis with any leading (broadcast) dimensions; ``args`` and ``kwargs`` go
      to ``max_fun``. A target of exactly 0 contributes 0 to the inner product
      even where its score is ``-inf``.

    Reference: Blondel, Martins, Niculae, `Learning with Fenchel-Young Losses
    <https://arxiv.org/abs/1901.02324>`_, JMLR 2020.
    """
    max_last_axis = jnp.vectorize(max_fun, signature="(n)->()")

    def fenchel_young_loss(scores, targets, *args, **kwargs):
        scores, targets = jnp.asarray(scores), jnp.asarray(targets)
        if scores.ndim < 1 or targets.ndim < 1 or scores.shape[-1] != targets.shape[-1]:
            raise ValueError(
                "fenchel_young_loss: scores and targets must have the same last (class) dimension, "
                f"got shapes {scores.shape} and {targets.shape}"
            )
        nonzero = targets != 0
        inner = jnp.sum(jnp.where(nonzero, targets * jnp.where(nonzero, scores, 0), 0), axis=-1)
        return max_last_axis(scores, *args, **kwargs) - inner

    return fenchel_young_loss
