"""Optimistic gradient methods: optimistic gradient descent and optimistic Adam (for min-max games).

References: C. Daskalakis, A. Ilyas, V. Syrgkanis, H. Zeng, "Training GANs with Optimism", ICLR 2018,
arXiv:1711.00141 (optimistic mirror descent and Optimistic Adam); A. Mokhtari, A. Ozdaglar, S. Pattathil,
"A Unified Analysis of Extra-gradient and Optimistic Gradient Methods for Saddle Point Problems: Proximal Point
Approach", AISTATS 2020, arXiv:1901.08511 (the generalised form with ``alpha`` and ``beta``).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
)
from jaxopt_lite.transforms.adaptive import scale_by_adam
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


class ScaleByOptimisticGradientState(NamedTuple):
    """Whether no update has been made yet, and the previous incoming update (gradient)."""

    is_initial_step: jax.Array
    previous_gradient: Any


def _check_coefficients(owner: str, **coefficients: Any) -> None:
    for name, value in coefficients.items():
        if callable(value):
            raise TypeError(f"{owner}: {name} must be a number or an array (schedules are not supported, "
                            f"as in Optax), got {value!r}")
        _checks.check_nonnegative(owner, name, value)


@pytree_factory
def scale_by_optimistic_gradient(
    alpha: float | jax.Array = 1.0,
    beta: float | jax.Array = 1.0,
) -> GradientTransformation:
    r"""Generalised optimistic gradient (Mokhtari et al., 2019): ``u_t = (alpha + beta) g_t - beta g_{t-1}``.

    With ``alpha = beta = 1`` this is optimistic gradient descent (Daskalakis et al., 2018):
    ``u_t = 2 g_t - g_{t-1}``. At the first step ``g_0`` is taken to be ``g_1`` (so ``u_1 = alpha g_1``), as
    Optax (since its issue #1082). The output is to be scaled by ``-learning_rate``.
    Memory: one number per parameter (the previous gradient, stored in the params' dtype).
    Defaults: ``alpha=1, beta=1``.
    """
    owner = "scale_by_optimistic_gradient"
    _check_coefficients(owner, alpha=alpha, beta=beta)

    def init(params):
        _tree.check_floating(params, owner)
        return ScaleByOptimisticGradientState(is_initial_step=jnp.array(True),
                                              previous_gradient=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.previous_gradient, "updates", f"{owner} state")

        def leaf(g, prev):
            prev = jnp.where(state.is_initial_step, g, prev)
            return ((alpha + beta) * g - beta * prev).astype(g.dtype)

        out = jax.tree.map(leaf, updates, state.previous_gradient)
        previous = jax.tree.map(lambda g, prev: g.astype(prev.dtype), updates, state.previous_gradient)
        return out, ScaleByOptimisticGradientState(is_initial_step=jnp.zeros_like(state.is_initial_step),
                                                   previous_gradient=previous)

    return GradientTransformation(init, update)


@alias
def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: float | jax.Array = 1.0,
    beta: float | jax.Array = 1.0,
) -> GradientTransformationExtraArgs:
    r"""Optimistic gradient descent: ``w_{t+1} = w_t - learning_rate ((alpha + beta) g_t - beta g_{t-1})``.

    See :func:`scale_by_optimistic_gradient`. Defaults as Optax: ``alpha=1, beta=1`` (Optax types them as
    schedules too but cannot use one; here a schedule is refused with a ``TypeError``).
    """
    _check_coefficients("optimistic_gradient_descent", alpha=alpha, beta=beta)
    return chain(scale_by_optimistic_gradient(alpha=alpha, beta=beta), scale_by_learning_rate(learning_rate))


@alias
def optimistic_adam(
    learning_rate: float | jax.Array,
    optimism: float | jax.Array | None = None,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-08,
    eps_root: float | jax.Array = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
) -> GradientTransformationExtraArgs:
    r"""Optimistic Adam (Daskalakis et al., 2018, Algorithm 1), Optax's first interface (deprecated).

    With ``r_t`` the Adam step of :func:`~jaxopt_lite.scale_by_adam` (``nesterov=True`` by default, as
    Optax: the NAdam look-ahead of the first moment), ``p <- p - learning_rate r_t - optimism (r_t - r_{t-1})``,
    with ``r_0 = r_1``: the chain ``scale_by_adam``, ``scale_by_optimistic_gradient(alpha=learning_rate,
    beta=optimism)``, ``scale_by_learning_rate(1)``. ``optimism`` defaults to ``learning_rate`` (the paper's
    ``2 lr r_t - lr r_{t-1}``). ``learning_rate`` must be a number (a schedule raises ``ValueError``, as Optax).
    Warns ``DeprecationWarning`` as Optax: use :func:`optimistic_adam_v2`.
    Memory: three numbers per parameter.
    """
    warnings.warn("`optimistic_adam` is deprecated, please use `optimistic_adam_v2` instead.",
                  category=DeprecationWarning, stacklevel=2)
    if callable(learning_rate):
        raise ValueError("optimistic_adam: learning_rate schedules are not supported by this version of "
                         "`optimistic_adam`; `optimistic_adam_v2` supports them")
    if optimism is None:
        optimism = learning_rate
    _checks.check_learning_rate("optimistic_adam", learning_rate)
    _check_coefficients("optimistic_adam", optimism=optimism)
    return chain(  # scale_by_adam checks b1, b2, eps and eps_root (the alias names them as ours)
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
        scale_by_learning_rate(1.0),
    )


@alias
def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: float | jax.Array = 1.0,
    beta: float | jax.Array = 1.0,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-08,
    eps_root: float | jax.Array = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = True,
) -> GradientTransformationExtraArgs:
    r"""Optimistic Adam, Optax's second interface: ``p <- p - learning_rate ((alpha + beta) r_t - beta r_{t-1})``.

    ``r_t`` is the Adam step of :func:`~jaxopt_lite.scale_by_adam` (``nesterov=True`` by default, as Optax),
    ``r_0 = r_1``: the chain ``scale_by_adam``, ``scale_by_optimistic_gradient(alpha, beta)``,
    ``scale_by_learning_rate(learning_rate)``, so ``learning_rate`` may be a schedule. Compared with
    :func:`optimistic_adam`, whose ``(learning_rate, optimism)`` are ``(alpha, beta)`` here with a unit
    learning rate, ``optimistic_adam(lr, o)`` equals ``optimistic_adam_v2(1.0, alpha=lr, beta=o)``.
    Memory: three numbers per parameter. Defaults: ``alpha=1, beta=1, b1=0.9, b2=0.999, eps=1e-8, eps_root=0``.
    """
    _check_coefficients("optimistic_adam_v2", alpha=alpha, beta=beta)
    return chain(  # scale_by_adam checks b1, b2, eps and eps_root (the alias names them as ours)
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        scale_by_learning_rate(learning_rate),
    )
