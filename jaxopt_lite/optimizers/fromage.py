"""Fromage (Bernstein et al., 2020): layer-wise relative steps, then a shrink that keeps norms from growing.

Reference: J. Bernstein, A. Vahdat, Y. Yue, M.-Y. Liu, "On the distance between two neural networks and the
stability of learning", NeurIPS 2020, arXiv:2002.03432 (Algorithm 1, "Frobenius matched gradient descent").
"""

from __future__ import annotations

import jax

from jaxopt_lite import _checks
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    stateless,
)
from jaxopt_lite.transforms.layerwise import scale_by_trust_ratio
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


def _shrink(factor_minus_one: jax.Array | float) -> GradientTransformation:
    """``u <- u + (c - 1) p`` for a constant ``c`` in ``(0, 1]``: then ``p + u = c (p + u_before)``.

    :func:`add_decayed_weights` with a negative rate, without its sign check (the rate is negative here).
    """

    def apply(updates, params):
        if params is None:
            raise ValueError("fromage: params must be passed to update (the step is relative to them)")
        return jax.tree.map(lambda u, p: (u + factor_minus_one * p).astype(u.dtype), updates, params)

    return stateless(apply)


@alias
def fromage(learning_rate: ScalarOrSchedule, min_norm: float | jax.Array = 1e-6) -> GradientTransformationExtraArgs:
    r"""Fromage (Bernstein et al., 2020, Algorithm 1): for each leaf (layer) ``w`` with gradient ``g``,

    ``w <- (w - lr ||w|| / ||g|| g) / sqrt(1 + lr^2)``,

    both norms floored at ``min_norm`` (the trust ratio is 1 where a norm is 0, as
    :func:`~jaxopt_lite.scale_by_trust_ratio`). As Optax, this is the chain
    ``scale_by_trust_ratio(min_norm)``, ``scale_by_learning_rate(lr c)``, ``u <- u + (c - 1) w`` with
    ``c = 1 / sqrt(1 + lr^2)``; a schedule ``lr(t)`` gives ``c(t)`` step by step. ``params`` are needed.
    No memory beyond the parameters. Default ``min_norm=1e-6``.
    """
    owner = "fromage"
    _checks.check_nonnegative(owner, "min_norm", min_norm)
    if callable(learning_rate):
        factor = lambda count: 1.0 / (1.0 + learning_rate(count) ** 2) ** 0.5  # noqa: E731
        return chain(
            scale_by_trust_ratio(min_norm),
            scale_by_learning_rate(lambda count: factor(count) * learning_rate(count)),
            add_decayed_weights(lambda count: factor(count) - 1.0),
        )
    _checks.check_learning_rate(owner, learning_rate)
    factor = 1.0 / (1.0 + learning_rate**2) ** 0.5
    return chain(
        scale_by_trust_ratio(min_norm),
        scale_by_learning_rate(learning_rate * factor),
        _shrink(factor - 1.0),
    )
