"""AdEMAMix (Pagliardini et al., 2024) and its simplified form (Morwani et al., 2025).

AdEMAMix adds to Adam a second, slow EMA of the gradients (``b3`` close to 1)
mixed in with weight ``alpha``; the simplified form keeps a single
un-normalised momentum ``m <- b1 m + g`` and mixes in the current gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

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
from jaxopt_lite.numerics import safe_div as _safe_div
from jaxopt_lite.numerics import safe_sqrt as _safe_sqrt
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


class ScaleByAdemamixState(NamedTuple):
    """Step counts (``count`` for ``m1``/``nu``, ``count_m2`` for the schedules of ``b3``/``alpha``),
    the fast EMA ``m1``, the slow EMA ``m2`` and the second moment ``nu``."""

    count: jax.Array
    count_m2: jax.Array
    m1: Any
    m2: Any
    nu: Any


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    """Step count ``t``, the momentum sum ``m`` and the second moment ``n``."""

    t: jax.Array
    m: Any
    n: Any


def _at(value: ScalarOrSchedule, count: jax.Array) -> Any:
    return value(count) if callable(value) else value


def _check_scheduled(owner: str, name: str, value: Any, check) -> None:
    if not callable(value):
        check(owner, name, value)


@pytree_factory
def scale_by_ademamix(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """AdEMAMix's direction (Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster, Older").

    ``m1 <- b1 m1 + (1-b1) g``, ``m2 <- b3 m2 + (1-b3) g``, ``nu <- b2 nu + (1-b2) g^2``,
    ``u = (m1 / (1-b1^t) + alpha m2) / (sqrt(nu / (1-b2^t) + eps_root) + eps)``.

    The slow EMA ``m2`` is not bias-corrected (it fills slowly on purpose).
    ``b3`` and ``alpha`` may be schedules of ``count_m2`` (the paper warms both up).
    Memory: three buffers per parameter, all in ``mu_dtype`` (default the params').
    Defaults (Optax's): ``b1=0.9, b2=0.999, b3=0.9999, alpha=6, eps=1e-8`` (the alias uses ``alpha=5``).
    """
    owner = "scale_by_ademamix"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _check_scheduled(owner, "b3", b3, _checks.check_decay)
    _check_scheduled(owner, "alpha", alpha, _checks.check_nonnegative)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "eps_root", eps_root)

    def init(params):
        _tree.check_floating(params, owner)
        return ScaleByAdemamixState(
            count=_tree.zero_count(),
            count_m2=_tree.zero_count(),
            m1=_tree.accumulator_zeros(params, mu_dtype),
            m2=_tree.accumulator_zeros(params, mu_dtype),
            nu=_tree.accumulator_zeros(params, mu_dtype),
        )

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.m1, "updates", f"{owner} state")
        b3_now, alpha_now = _at(b3, state.count_m2), _at(alpha, state.count_m2)
        m1 = _tree.update_moment(updates, state.m1, b1, 1)
        m2 = _tree.update_moment(updates, state.m2, b3_now, 1)
        nu = _tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = _tree.safe_increment(state.count)
        m1_hat = _tree.bias_correction(m1, b1, count)
        nu_hat = _tree.bias_correction(nu, b2, count)

        def leaf(g, a, b, v):
            return _safe_div(a + alpha_now * b, _safe_sqrt(v + eps_root) + eps).astype(g.dtype)

        direction = jax.tree.map(leaf, updates, m1_hat, m2, nu_hat)
        count_m2 = _tree.safe_increment(state.count_m2)
        new_state = ScaleByAdemamixState(count=count, count_m2=count_m2, m1=m1, m2=m2, nu=nu)
        return direction, new_state

    return GradientTransformation(init, update)


@alias
def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> GradientTransformationExtraArgs:
    """AdEMAMix: ``p <- p - lr * (u + weight_decay * p)`` with :func:`scale_by_ademamix`'s ``u``.

    AdamW with a mixture of a fast and a slow momentum. The decay is scaled by the
    learning rate (as Optax and PyTorch). Suited to long runs (the slow EMA uses very old gradients).
    """
    return chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@pytree_factory
def scale_by_simplified_ademamix(
    b1: Scalar = 0.99,
    b2: Scalar = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    """Simplified AdEMAMix's direction (Morwani et al., 2025, "Connections between Schedule-Free
    Optimizers, AdEMAMix, and Accelerated SGD Variants").

    ``m <- b1 m + g`` (a sum, not an average), ``n <- b2 n + (1-b2) g^2``,
    ``u = (m + alpha g) / (sqrt(n / (1-b2^t) + eps_root) + eps)``.

    ``alpha`` may be a schedule of ``t``; ``alpha = 0`` is Adam with a rescaled
    learning rate and ``b1``. Memory: two buffers per parameter.
    Defaults (Optax's): ``b1=0.99, b2=0.95, alpha=0, eps=1e-8``.
    """
    owner = "scale_by_simplified_ademamix"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _check_scheduled(owner, "alpha", alpha, _checks.check_nonnegative)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "eps_root", eps_root)

    def init(params):
        _tree.check_floating(params, owner)
        zeros = _tree.zeros_like(params)
        return ScaleBySimplifiedAdEMAMixState(t=_tree.zero_count(), m=zeros, n=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.m, "updates", f"{owner} state")
        alpha_now = _at(alpha, state.t)
        m = jax.tree.map(lambda g, m: (b1 * m + g).astype(m.dtype), updates, state.m)
        n = _tree.update_moment_per_elem_norm(updates, state.n, b2, 2)
        t = _tree.safe_increment(state.t)
        n_hat = _tree.bias_correction(n, b2, t)

        def leaf(g, m, v):
            return _safe_div(m + alpha_now * g, _safe_sqrt(v + eps_root) + eps).astype(g.dtype)

        return jax.tree.map(leaf, updates, m, n_hat), ScaleBySimplifiedAdEMAMixState(t=t, m=m, n=n)

    return GradientTransformation(init, update)


@alias
def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.99,
    b2: Scalar = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> GradientTransformationExtraArgs:
    """Simplified AdEMAMix: ``p <- p - lr * (u + weight_decay * p)`` with
    :func:`scale_by_simplified_ademamix`'s ``u`` (one momentum buffer, no ``alpha`` schedule needed)."""
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
