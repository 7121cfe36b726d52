"""Signum (Bernstein et al., 2018): signSGD with momentum, the sign of a moving average of the gradients.

Reference: J. Bernstein, Y.-X. Wang, K. Azizzadenesheli, A. Anandkumar, "signSGD: Compressed Optimisation for
Non-Convex Problems", ICML 2018, arXiv:1802.04434 (Algorithm 2, "Signum"); see also Zhao et al., "Deconstructing
What Makes a Good Optimizer for Language Models", arXiv:2407.07972, 2024.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxopt_lite import _checks
from jaxopt_lite.base import GradientTransformationExtraArgs, ScalarOrSchedule, alias, chain
from jaxopt_lite.transforms.momentum import ema
from jaxopt_lite.transforms.scaling import scale_by_learning_rate, scale_by_sign


@alias
def signum(
    learning_rate: ScalarOrSchedule,
    beta: float | jax.Array = 0.9,
    accumulator_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    r"""Signum (Bernstein et al., 2018, Algorithm 2): ``m <- beta m + (1 - beta) g``, ``p <- p - lr sign(m)``.

    ``m`` starts at 0 and is not debiased (a positive factor does not change a sign). The chain is
    :func:`~jaxopt_lite.ema` (``debias=False``), :func:`~jaxopt_lite.scale_by_sign`,
    :func:`~jaxopt_lite.scale_by_learning_rate`, as Optax; ``beta=0`` is :func:`~jaxopt_lite.sign_sgd`.
    ``accumulator_dtype`` stores ``m`` in another dtype. Memory: one number per parameter. Default ``beta=0.9``.
    """
    _checks.check_decay("signum", "beta", beta)
    if not callable(learning_rate):
        _checks.check_learning_rate("signum", learning_rate)
    return chain(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )
