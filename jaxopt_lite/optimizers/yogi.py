"""Yogi (Zaheer et al., 2018): Adam with an additive, sign-controlled second-moment update."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks, numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
)
from jaxopt_lite.transforms.adaptive import ScaleByAdamState
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


@pytree_factory
def scale_by_yogi(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-3,
    eps_root: float | jax.Array = 0.0,
    initial_accumulator_value: float | jax.Array = 1e-6,
    *,
    bias_correction: bool = True,
) -> GradientTransformation:
    r"""Yogi (Zaheer et al., 2018, "Adaptive Methods for Nonconvex Optimization", Algorithm 2).

    Both moments start at ``initial_accumulator_value``;

    - ``m <- b1 m + (1 - b1) g``,
    - ``v <- v - (1 - b2) sign(v - g^2) g^2`` (Adam's ``v`` moves towards ``g^2`` by
      ``(1 - b2) (g^2 - v)``; Yogi's by ``(1 - b2) g^2`` at most, so ``v`` cannot collapse),
    - ``u = m_hat / (sqrt(v_hat + eps_root) + eps)`` with ``m_hat = m / (1 - b1^t)``,
      ``v_hat = v / (1 - b2^t)``.

    The bias corrections are Optax's (and Adam's); the paper's Algorithm 2 has none:
    ``bias_correction=False`` gives it (``m_hat = m``, ``v_hat = v``). The state is
    :class:`ScaleByAdamState`. Memory: two numbers per parameter.
    Defaults: ``b1=0.9, b2=0.999, eps=1e-3, eps_root=0, initial_accumulator_value=1e-6``.
    """
    owner = "scale_by_yogi"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    for name, value in (("eps", eps), ("eps_root", eps_root), ("initial_accumulator_value", initial_accumulator_value)):
        _checks.check_nonnegative(owner, name, value)

    def init(params):
        _tree.check_floating(params, owner)
        return ScaleByAdamState(
            count=_tree.zero_count(),
            mu=_tree.full_like(params, initial_accumulator_value),
            nu=_tree.full_like(params, initial_accumulator_value),
        )

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        mu = _tree.update_moment(updates, state.mu, b1, 1)

        def second(g, v):
            g2 = numerics.abs_sq(g)
            return (v - (1.0 - b2) * jnp.sign(v - g2) * g2).astype(v.dtype)

        nu = jax.tree.map(second, updates, state.nu)
        count = _tree.safe_increment(state.count)
        mu_hat = _tree.bias_correction(mu, b1, count) if bias_correction else mu
        nu_hat = _tree.bias_correction(nu, b2, count) if bias_correction else nu
        out = jax.tree.map(
            lambda m, v, g: numerics.safe_div(m, numerics.safe_sqrt(v + eps_root) + eps).astype(g.dtype),
            mu_hat,
            nu_hat,
            updates,
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


@alias
def yogi(
    learning_rate: ScalarOrSchedule,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-3,
    *,
    bias_correction: bool = True,
) -> GradientTransformationExtraArgs:
    """Yogi: ``p <- p - learning_rate * u`` with ``u`` from :func:`scale_by_yogi`.

    Defaults as Optax: ``b1=0.9, b2=0.999, eps=1e-3`` (moments start at ``1e-6``).
    """
    return chain(scale_by_yogi(b1=b1, b2=b2, eps=eps, bias_correction=bias_correction),
                 scale_by_learning_rate(learning_rate))
