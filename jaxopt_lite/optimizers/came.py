"""CAME (Luo et al., 2023): Adafactor's factored second moment with a confidence-guided, factored
estimate of the update's instability.

Reference: Y. Luo, X. Ren, Z. Zheng, Z. Jiang, X. Jiang, Y. You, "CAME: Confidence-guided Adaptive
Memory Efficient Optimization", ACL 2023, arXiv:2307.02047 (Algorithm 1). Conventions beyond the
paper's matrices (vectors, scalars, tensors of more than two axes, where ``eps`` goes) are those of
the authors' ``came-pytorch`` 0.1.3.
"""

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
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


class CameState(NamedTuple):
    """Step count and CAME's statistics; each field but ``count`` is a tree shaped like the params.

    ``mu``: the first moment of the clipped update, one number per parameter. For a factored leaf
    (two or more axes; the last two are factored) ``v_row`` and ``v_col`` hold the second moment's
    row and column statistics (the leaf's shape without its last, resp. second-to-last, axis) and
    ``res_row``, ``res_col`` the instability's, while ``v`` is an empty ``(0,)`` placeholder. For a
    vector or a scalar ``v`` has the leaf's shape and the four factored fields are ``(0,)``
    placeholders. All in the parameter's dtype.
    """

    count: jax.Array
    mu: Any
    v_row: Any
    v_col: Any
    v: Any
    res_row: Any
    res_col: Any


def _placeholder(dtype: Any) -> jax.Array:
    return jnp.zeros((0,), dtype)


def _compute_dtype(dtype: Any) -> Any:
    """Statistics are formed in at least float32 (a bfloat16 mean of squares loses digits), stored in ``dtype``."""
    return jnp.promote_types(dtype, jnp.float32)


def _factored_scale(x: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
    """``x / sqrt(row col^T / mean(row))`` over the last two axes (leading axes are batch axes).

    Formed as ``(x * sqrt(mean(row)) / sqrt(row)) / sqrt(col)``: ``row / mean(row)`` alone underflows
    in float32 when one row is all zeros and another holds gradients of 1e15, and ``rsqrt`` of the
    underflow times a zero gradient would be ``nan``.
    """
    row_scale = jnp.sqrt(jnp.mean(row, axis=-1, keepdims=True)) * jax.lax.rsqrt(row)
    return (x * row_scale[..., :, None]) * jax.lax.rsqrt(col)[..., None, :]


def _check_came(owner: str, b1: Any, b2: Any, b3: Any, eps1: Any, eps2: Any, clip_threshold: Any) -> None:
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        _checks.check_decay(owner, name, value)
    _checks.check_nonnegative(owner, "eps1", eps1)
    _checks.check_nonnegative(owner, "eps2", eps2)
    _checks.check_positive(owner, "clip_threshold", clip_threshold)


@pytree_factory
def scale_by_came(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: Scalar = 0.9999,
    eps1: Scalar = 1e-30,
    eps2: Scalar = 1e-16,
    clip_threshold: Scalar = 1.0,
) -> GradientTransformation:
    r"""CAME's direction (Luo et al., 2023, Algorithm 1): the step before the learning rate.

    For a leaf with two or more axes (the last two factored, ``n x m``; leading axes are batch axes,
    each slice factored on its own; means are over the factored axes):

    - second moment, as Adafactor: ``r <- b2 r + (1-b2) mean_cols(g^2 + eps1)``,
      ``c <- b2 c + (1-b2) mean_rows(g^2 + eps1)``, ``u = g / sqrt(r c^T / mean(r))``;
    - update clipping: ``u_hat = u / max(1, RMS(u) / clip_threshold)``, ``RMS`` over the whole leaf;
    - first moment: ``m <- b1 m + (1-b1) u_hat``;
    - instability: ``U = (u_hat - m)^2 + eps2``, ``R <- b3 R + (1-b3) mean_cols(U)``,
      ``C <- b3 C + (1-b3) mean_rows(U)``, ``S = R C^T / mean(R)``;
    - output ``m / sqrt(S)`` (the update's confidence scales the step).

    Means in place of the paper's sums give the same ``R C^T / (1^T R)``. No moment is debiased (as
    the paper). A vector or a scalar keeps an unfactored ``v <- b2 v + (1-b2)(g^2 + eps1)``,
    ``u = g / sqrt(v)``, is clipped and averaged alike, and its output is ``m`` itself: no
    instability statistic, as ``came-pytorch`` 0.1.3 (the paper's algorithm is for matrices).
    ``eps1`` is added to every squared gradient and ``eps2`` to every squared residual before the
    averages (the paper's and ``came-pytorch``'s placement).

    Memory: ``m`` (one per parameter) plus ``2 (n + m)`` numbers per ``n x m`` slice of a factored
    leaf, i.e. about 1 per parameter for large matrices (Adam: 2); 2 per parameter for vectors and
    scalars. Statistics are formed in at least float32 and stored in the parameter's dtype.
    Complex parameters are refused. Defaults (the paper's and ``came-pytorch``'s): ``b1=0.9,
    b2=0.999, b3=0.9999, eps1=1e-30, eps2=1e-16, clip_threshold=1.0``.
    """
    owner = "scale_by_came"
    _check_came(owner, b1, b2, b3, eps1, eps2, clip_threshold)

    def init(params):
        _tree.check_floating(params, owner, real="CAME's clipping and instability are defined for real updates")
        reject_fused(owner, params)

        def leaf(p):
            p = jnp.asarray(p)
            dtype = p.dtype
            mu = _tree.zeros_like(p)
            if p.ndim < 2:
                empty = _placeholder(dtype)
                return mu, empty, empty, _tree.zeros_like(p), empty, empty
            # Sharded as the update's means over an axis of the parameter make them (zeros like its sums).
            row = _tree.zeros_like(jnp.sum(p, axis=-1), dtype)
            col = _tree.zeros_like(jnp.sum(p, axis=-2), dtype)
            return mu, row, col, _placeholder(dtype), _tree.zeros_like(row), _tree.zeros_like(col)

        treedef = jax.tree.structure(params)
        mu, v_row, v_col, v, res_row, res_col = _tree.unzip_leaves(
            treedef, [leaf(p) for p in jax.tree.leaves(params)], 6
        )
        return CameState(
            count=_tree.zero_count(), mu=mu, v_row=v_row, v_col=v_col, v=v, res_row=res_row, res_col=res_col
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        if params is not None:
            _tree.check_same_shapes(updates, params, "updates", "params")

        def leaf(g, m, r, c, v, rr, rc):
            if g.size == 0:  # nothing to average (a mean over an empty axis would store nan)
                return jnp.zeros_like(g), m, r, c, v, rr, rc
            dtype = _compute_dtype(g.dtype)
            g = g.astype(dtype)
            g2 = jnp.square(g) + eps1
            factored = g.ndim >= 2
            if factored:
                r_new = b2 * r.astype(dtype) + (1.0 - b2) * jnp.mean(g2, axis=-1)
                c_new = b2 * c.astype(dtype) + (1.0 - b2) * jnp.mean(g2, axis=-2)
                u = _factored_scale(g, r_new, c_new)
            else:
                v_new = b2 * v.astype(dtype) + (1.0 - b2) * g2
                u = g * jax.lax.rsqrt(v_new)
            rms = numerics.safe_sqrt(jnp.mean(jnp.square(u)))
            u = u / jnp.maximum(1.0, rms / clip_threshold)
            m_new = b1 * m.astype(dtype) + (1.0 - b1) * u
            if factored:
                res = jnp.square(u - m_new) + eps2
                rr_new = b3 * rr.astype(dtype) + (1.0 - b3) * jnp.mean(res, axis=-1)
                rc_new = b3 * rc.astype(dtype) + (1.0 - b3) * jnp.mean(res, axis=-2)
                out = _factored_scale(m_new, rr_new, rc_new)
                r, c, rr, rc = (x.astype(y.dtype) for x, y in ((r_new, r), (c_new, c), (rr_new, rr), (rc_new, rc)))
            else:
                out = m_new
                v = v_new.astype(v.dtype)
            return out.astype(m.dtype), m_new.astype(m.dtype), r, c, v, rr, rc

        treedef = jax.tree.structure(updates)
        per_leaf = treedef.flatten_up_to(
            jax.tree.map(leaf, updates, state.mu, state.v_row, state.v_col, state.v, state.res_row, state.res_col)
        )
        out, mu, v_row, v_col, v, res_row, res_col = _tree.unzip_leaves(treedef, per_leaf, 7)
        out = jax.tree.map(lambda o, g: o.astype(g.dtype), out, updates)
        count = _tree.safe_increment(state.count)
        return out, CameState(count=count, mu=mu, v_row=v_row, v_col=v_col, v=v, res_row=res_row, res_col=res_col)

    return GradientTransformation(init, update)


@alias
def came(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: Scalar = 0.9999,
    eps1: Scalar = 1e-30,
    eps2: Scalar = 1e-16,
    clip_threshold: Scalar = 1.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> GradientTransformationExtraArgs:
    r"""CAME (Luo et al., 2023, "CAME: Confidence-guided Adaptive Memory Efficient Optimization").

    ``p <- p - learning_rate * (d + weight_decay * p)`` with ``d`` :func:`scale_by_came`'s direction:
    for matrices (the last two axes of any leaf of two or more) ``d = m / sqrt(S)``, the clipped,
    averaged Adafactor step ``m`` divided by the root of the factored average ``S`` of its
    instability ``(u_hat - m)^2``; for vectors and scalars ``d = m``. Weight decay is decoupled and
    multiplied by the learning rate (``came-pytorch``'s ``p <- p - lr wd p``), on the leaves ``mask``
    marks. The learning rate is plain: no relative step size (as ``came-pytorch``; the paper's
    experiments use ``2e-4`` for BERT). ``came-pytorch``'s ``CAME(params, lr, eps=(eps1, eps2),
    clip_threshold, betas=(b1, b2, b3), weight_decay)`` is ``came(lr, b1, b2, b3, eps1, eps2,
    clip_threshold, weight_decay)``, up to rounding.

    Memory: about one number per parameter for large matrices, plus ``2 (n + m)`` per ``n x m``
    slice; two per parameter for vectors and scalars (see :class:`CameState`). Acts on each leaf on
    its own: a fused tree (:func:`jaxopt_lite.fuse`) is refused. Defaults (the paper's): ``b1=0.9,
    b2=0.999, b3=0.9999, eps1=1e-30, eps2=1e-16, clip_threshold=1.0, weight_decay=0``.
    """
    return chain(
        scale_by_came(b1, b2, b3, eps1, eps2, clip_threshold),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
