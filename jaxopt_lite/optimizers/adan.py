"""Adan (Xie et al., 2022): adaptive Nesterov momentum through gradient differences."""

from __future__ import annotations

from typing import Any, NamedTuple

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
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

_DIFFERENCE_WEIGHTS = ("1-b2", "b2")


class ScaleByAdanState(NamedTuple):
    """The EMAs of the gradients (``m``), their differences (``v``) and the squared
    look-ahead (``n``), the previous gradient (``g``) and the step count (``t``)."""

    m: Any
    v: Any
    n: Any
    g: Any
    t: jax.Array


@pytree_factory
def scale_by_adan(
    b1: float | jax.Array = 0.98,
    b2: float | jax.Array = 0.92,
    b3: float | jax.Array = 0.99,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    difference_weight: str = "1-b2",
) -> GradientTransformation:
    r"""Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models", Algorithm 1, with ``b_i = 1 - beta_i`` of the paper).

    With ``d_t = g_t - g_{t-1}`` (``d_1 = 0``) and ``w`` the weight of the difference:

    - ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) d``,
      ``n <- b3 n + (1 - b3) (g + w d)^2``,
    - ``u = (m_hat + w v_hat) / (sqrt(n_hat + eps_root) + eps)``, each moment debiased by
      ``1 - b_i^t``.

    ``difference_weight="1-b2"`` (default) is Optax 0.2.8's ``w = 1 - b2``;
    ``difference_weight="b2"`` is the paper's and the authors' code's ``w = b2`` (``1 - beta_2``
    in the paper's notation; also Optax pull request #1715). They agree on the first step.
    Memory: four numbers per parameter.
    Defaults: ``b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=0``.
    """
    owner = "scale_by_adan"
    if difference_weight not in _DIFFERENCE_WEIGHTS:
        raise ValueError(f"{owner}: difference_weight must be '1-b2' (Optax) or 'b2' (the paper), "
                         f"got {difference_weight!r}")
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        _checks.check_decay(owner, name, value)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "eps_root", eps_root)

    def init(params):
        _tree.check_floating(params, owner)
        zeros = lambda: _tree.zeros_like(params)  # noqa: E731
        return ScaleByAdanState(m=zeros(), v=zeros(), n=zeros(), g=zeros(), t=_tree.zero_count())

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.m, "updates", f"{owner} state")
        w = (1.0 - b2) if difference_weight == "1-b2" else b2
        first = state.t == 0
        diff = jax.tree.map(lambda g, prev: jnp.where(first, jnp.zeros_like(g), g - prev), updates, state.g)
        m = _tree.update_moment(updates, state.m, b1, 1)
        v = _tree.update_moment(diff, state.v, b2, 1)
        look_ahead = jax.tree.map(lambda g, d: g + w * d, updates, diff)
        n = _tree.update_moment_per_elem_norm(look_ahead, state.n, b3, 2)
        t = _tree.safe_increment(state.t)
        m_hat, v_hat, n_hat = (_tree.bias_correction(x, b, t) for x, b in ((m, b1), (v, b2), (n, b3)))

        def leaf(mh, vh, nh, g):
            return numerics.safe_div(mh + w * vh, numerics.safe_sqrt(nh + eps_root) + eps).astype(g.dtype)

        out = jax.tree.map(leaf, m_hat, v_hat, n_hat, updates)
        g = jax.tree.map(lambda g, prev: g.astype(prev.dtype), updates, state.g)
        return out, ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)

    return GradientTransformation(init, update)


@alias
def adan(
    learning_rate: ScalarOrSchedule,
    b1: float | jax.Array = 0.98,
    b2: float | jax.Array = 0.92,
    b3: float | jax.Array = 0.99,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    difference_weight: str = "1-b2",
) -> GradientTransformationExtraArgs:
    """Adan: ``p <- p - learning_rate * (u + weight_decay * p)``, ``u`` from :func:`scale_by_adan`.

    Weight decay is decoupled and additive, as Optax (the paper divides by
    ``1 + learning_rate * weight_decay`` instead; the two agree to first order).
    Defaults as Optax: ``b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0``.
    """
    return chain(
        scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root, difference_weight=difference_weight),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
