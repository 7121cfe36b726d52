"""Layer-wise (per-leaf) step-size adaptation: trust ratios for LARS and LAMB."""

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks, numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import EmptyState, GradientTransformation, pytree_factory, stateless
from jaxopt_lite.fused import reject_fused

ScaleByTrustRatioState = EmptyState


@pytree_factory
def scale_by_trust_ratio(
    min_norm: float | jax.Array = 0.0,
    trust_coefficient: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
) -> GradientTransformation:
    """Scales each leaf by its trust ratio (You et al., 2017 "LARS"; 2020 "LAMB").

    ``u_i <- u_i * trust_coefficient * ||p_i|| / (||u_i|| + eps)`` with both
    norms floored at ``min_norm``; the ratio is 1 where either norm is 0 (a
    fresh zero-initialised layer still moves). Norms are real (``|z|`` for complex
    entries) and overflow-safe. Needs ``params``.
    """
    _checks.check_nonnegative("scale_by_trust_ratio", "min_norm", min_norm)
    _checks.check_nonnegative("scale_by_trust_ratio", "trust_coefficient", trust_coefficient)
    _checks.check_nonnegative("scale_by_trust_ratio", "eps", eps)

    def apply(updates, params):
        _tree.require_params("scale_by_trust_ratio", updates, params, "the ratio uses their norm")
        reject_fused("scale_by_trust_ratio", updates, params)
        u_leaves, treedef = jax.tree.flatten(updates)
        all_norms = numerics.norms(u_leaves + jax.tree.leaves(params))  # real, overflow-safe, one cond
        out = []
        for u, u_norm, p_norm in zip(u_leaves, all_norms[: len(u_leaves)], all_norms[len(u_leaves):]):
            p_norm, u_norm = jnp.maximum(p_norm, min_norm), jnp.maximum(u_norm, min_norm)
            degenerate = (p_norm == 0.0) | (u_norm == 0.0)
            ratio = trust_coefficient * p_norm / jnp.where(degenerate, 1.0, u_norm + eps)
            out.append((u * jnp.where(degenerate, 1.0, ratio)).astype(u.dtype))
        return treedef.unflatten(out)

    return stateless(apply)
