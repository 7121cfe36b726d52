"""Layer-wise (per-leaf) step-size adaptation: trust ratios for LARS and LAMB."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, stateless
from jaxopt_lite.fused import reject_fused

ScaleByTrustRatioState = EmptyState


def scale_by_trust_ratio(
    min_norm: float | jax.Array = 0.0,
    trust_coefficient: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
) -> GradientTransformation:
    """Scales each leaf by its trust ratio (You et al., 2017 "LARS"; 2020 "LAMB").

    ``u_i <- u_i * trust_coefficient * ||p_i|| / (||u_i|| + eps)`` with both
    norms floored at ``min_norm``; the ratio is 1 where either norm is 0 (a
    fresh zero-initialised layer still moves). Needs ``params``.
    """
    _checks.check_nonnegative("scale_by_trust_ratio", "min_norm", min_norm)
    _checks.check_nonnegative("scale_by_trust_ratio", "trust_coefficient", trust_coefficient)
    _checks.check_nonnegative("scale_by_trust_ratio", "eps", eps)

    def leaf(u, p):
        p_norm = jnp.maximum(_tree.global_norm(p), min_norm)
        u_norm = jnp.maximum(_tree.global_norm(u), min_norm)
        degenerate = (p_norm == 0.0) | (u_norm == 0.0)
        ratio = trust_coefficient * p_norm / jnp.where(degenerate, 1.0, u_norm + eps)
        return (u * jnp.where(degenerate, 1.0, ratio)).astype(u.dtype)

    def apply(updates, params):
        if params is None:
            raise ValueError("scale_by_trust_ratio: params must be passed to update (the ratio uses their norm)")
        reject_fused("scale_by_trust_ratio", updates, params)
        _tree.check_same_structure(updates, params, "updates", "params")
        return jax.tree.map(leaf, updates, params)

    return stateless(apply)
