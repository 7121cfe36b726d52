"""Rprop (Riedmiller & Braun, 1993): per-coordinate step sizes adapted from gradient signs."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformation, GradientTransformationExtraArgs, alias, chain, pytree_factory
from jaxopt_lite.transforms.scaling import scale


class ScaleByRpropState(NamedTuple):
    """Per-coordinate step sizes, and the last step taken (``0`` after a sign change)."""

    step_sizes: Any
    prev_updates: Any


@pytree_factory
def scale_by_rprop(
    learning_rate: float | jax.Array,
    eta_minus: float | jax.Array = 0.5,
    eta_plus: float | jax.Array = 1.2,
    min_step_size: float | jax.Array = 1e-6,
    max_step_size: float | jax.Array = 50.0,
    *,
    delayed: bool = True,
) -> GradientTransformation:
    r"""Rprop without weight backtracking (iRprop-, Igel & Husken, 2000; Riedmiller & Braun, 1993).

    Step sizes ``s`` start at ``learning_rate``; ``d`` is the previous step (0 at first).
    With ``c = g * d``:

    - ``c > 0``: ``s <- min(eta_plus s, max_step_size)``, ``d <- s sign(g)``;
    - ``c < 0``: ``s <- max(eta_minus s, min_step_size)``, ``d <- 0`` (skip, forget the sign);
    - ``c = 0``: ``s`` unchanged, ``d <- s sign(g)``.

    The output is a step to add with a flipped sign (the alias's ``scale(-1)``).
    ``delayed=True`` (default, Optax 0.2.8) returns the *previous* call's ``d`` (zeroed where
    ``c < 0``), so the first call returns zeros and every step lags one call;
    ``delayed=False`` returns the new ``d``, as the paper and ``torch.optim.Rprop``.
    Memory: two numbers per parameter.
    Defaults: ``eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6, max_step_size=50``.
    """
    owner = "scale_by_rprop"
    _checks.check_nonnegative(owner, "learning_rate", learning_rate)
    _checks.check_range(owner, "eta_minus", eta_minus, low=0.0, high=1.0)
    _checks.check_range(owner, "eta_plus", eta_plus, low=1.0)
    _checks.check_nonnegative(owner, "min_step_size", min_step_size)
    _checks.check_nonnegative(owner, "max_step_size", max_step_size)

    def init(params):
        _tree.check_floating(params, owner)
        return ScaleByRpropState(step_sizes=_tree.full_like(params, learning_rate), prev_updates=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.step_sizes, "updates", f"{owner} state")

        def leaf(g, s, d):
            c = g * d
            grown = jnp.clip(s * jnp.where(c > 0, eta_plus, eta_minus), min_step_size, max_step_size)
            s_new = jnp.where(c == 0, s, grown).astype(s.dtype)
            d_new = jnp.where(c < 0, 0, s_new * jnp.sign(g)).astype(d.dtype)
            out = jnp.where(c < 0, 0, d) if delayed else d_new
            return out.astype(g.dtype), s_new, d_new

        triples = jax.tree.map(leaf, updates, state.step_sizes, state.prev_updates)
        treedef = jax.tree.structure(updates)
        out, step_sizes, prev = _tree.unzip_leaves(treedef, treedef.flatten_up_to(triples), 3)
        return out, ScaleByRpropState(step_sizes=step_sizes, prev_updates=prev)

    return GradientTransformation(init, update)


@alias
def rprop(
    learning_rate: float | jax.Array,
    eta_minus: float | jax.Array = 0.5,
    eta_plus: float | jax.Array = 1.2,
    min_step_size: float | jax.Array = 1e-6,
    max_step_size: float | jax.Array = 50.0,
    *,
    delayed: bool = True,
) -> GradientTransformationExtraArgs:
    """Rprop: ``p <- p - d`` with ``d`` from :func:`scale_by_rprop`; ``learning_rate`` is the initial step size.

    ``delayed=False`` gives ``torch.optim.Rprop``'s steps (see :func:`scale_by_rprop`).
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size, delayed=delayed),
        scale(-1.0),
    )
