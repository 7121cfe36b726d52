"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
arXiv:1804.04235): a factored estimate of the second moment, update clipping and relative step sizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
from jaxopt_lite.transforms.block_scaling import clip_by_block_rms, scale_by_param_block_rms
from jaxopt_lite.transforms.momentum import ema
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale, scale_by_learning_rate


class FactoredState(NamedTuple):
    """Step count and the second-moment statistics, one entry of each tree per parameter.

    For a factored leaf ``v_row`` and ``v_col`` hold the row and column statistics and ``v`` is a
    ``(1,)`` placeholder; for any other leaf ``v`` has the leaf's shape and ``v_row``, ``v_col`` are
    ``(1,)`` placeholders (Optax's layout). All stored in the parameter's dtype (computed in at least float32).
    """

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any


def _decay_rate_pow(i: Any, exponent: Any = 0.8) -> jax.Array:
    """The paper's schedule ``beta2_t = 1 - t**(-exponent)`` with ``t = i + 1`` formed in float32 (as Optax)."""
    t = jnp.asarray(i + 1, jnp.float32)
    return 1.0 - t ** (-exponent)


def _factored_dims(shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: Any) -> tuple[int, int] | None:
    """``(second largest axis, largest axis)`` of ``shape`` if the leaf is factored, else ``None``.

    Factored when ``factored``, the leaf has at least two axes and its second largest size is at
    least ``min_dim_size_to_factor``. Ties go as ``np.argsort`` orders them (as Optax).
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _placeholder(dtype: Any) -> jax.Array:
    return jnp.zeros((1,), dtype)


@pytree_factory
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float | jax.Array = 0.8,
    step_offset: int | jax.Array = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float | jax.Array = 1e-30,
    decay_rate_fn: Callable[[Any, Any], Any] = _decay_rate_pow,
) -> GradientTransformation:
    r"""Scales updates by a factored estimate of the root mean square of the gradients (Adafactor).

    With ``k = count - step_offset`` (``count`` = 0 at the first update) the second-moment decay is
    ``beta_t = decay_rate_fn(k, decay_rate)``, by default ``1 - (k + 1)^(-decay_rate)`` (the paper's
    ``1 - t^(-0.8)``, ``t`` from 1, so the first step keeps only the current gradient). Let
    ``G2 = |g|^2 + epsilon`` (``epsilon`` added to every squared entry, as the paper's ``epsilon_1``).

    - **Factored leaf** (``factored``, ``ndim >= 2`` and the second largest size is at least
      ``min_dim_size_to_factor``; ``a`` is the largest axis, ``b`` the second largest):

      ``r <- beta_t r + (1 - beta_t) mean_a(G2)`` (``v_row``, axis ``a`` removed),
      ``c <- beta_t c + (1 - beta_t) mean_b(G2)`` (``v_col``, axis ``b`` removed),
      ``V_hat = r c / mean_b(r)`` (broadcast back over the removed axes) and ``u = g V_hat^(-1/2)``.
      With means in place of the paper's sums this is its ``R C / (1^T R)`` (Algorithm 4); for a
      tensor of more than two axes the other axes are batch axes.
    - **Other leaves**: ``v <- beta_t v + (1 - beta_t) G2`` and ``u = g v^(-1/2)`` (Algorithm 5).

    Memory: ``n + m`` numbers for an ``n x m`` factored matrix, else one per parameter (plus ``(1,)``
    placeholders, see :class:`FactoredState`). The schedule is evaluated in float32 (as Optax), so
    ``beta_t`` carries float32 rounding in float64 runs. Complex parameters: ``|g|^2`` is real and
    the statistics are kept in the parameter's (complex) dtype with zero imaginary part, as Optax.
    ``params`` may be left out of ``update`` here (Optax requires it; shapes come from the updates).
    Low precision: for float16 or bfloat16 parameters the statistics and the update are computed in
    float32 (``epsilon = 1e-30`` is 0 in float16, and zero gradients would give ``0 / 0``) and rounded
    once, to the state's and the update's dtype; float32 and float64 are computed in their own dtype.
    Defaults (Optax's): ``factored=True, decay_rate=0.8, step_offset=0, min_dim_size_to_factor=128,
    epsilon=1e-30``.
    """
    owner = "scale_by_factored_rms"
    _checks.check_nonnegative(owner, "decay_rate", decay_rate)
    _checks.check_finite(owner, "step_offset", step_offset)
    _checks.check_nonnegative(owner, "epsilon", epsilon)
    if not callable(decay_rate_fn):
        raise TypeError(f"{owner}: decay_rate_fn must be callable, got {decay_rate_fn!r}")
    if _checks.concrete(min_dim_size_to_factor) is None:
        raise TypeError(f"{owner}: min_dim_size_to_factor must be a static number (it decides state shapes), "
                        f"got {min_dim_size_to_factor!r}")
    _checks.check_nonnegative(owner, "min_dim_size_to_factor", min_dim_size_to_factor)

    def dims(shape):
        return _factored_dims(tuple(shape), factored, min_dim_size_to_factor)

    def init(params):
        _tree.check_floating(params, owner)
        reject_fused(owner, params)

        def leaf(p):
            p = jnp.asarray(p)
            fd = dims(p.shape)
            if fd is None:
                return _placeholder(p.dtype), _placeholder(p.dtype), _tree.zeros_like(p)
            small, large = fd
            # Row and column statistics sharded as the update's means over an axis of the parameter
            # make them (zeros like its sums over that axis), not on one device.
            v_row = _tree.zeros_like(jnp.sum(p, axis=large), p.dtype)
            v_col = _tree.zeros_like(jnp.sum(p, axis=small), p.dtype)
            return v_row, v_col, _placeholder(p.dtype)

        treedef = jax.tree.structure(params)
        v_row, v_col, v = _tree.unzip_leaves(treedef, [leaf(p) for p in jax.tree.leaves(params)], 3)
        return FactoredState(count=_tree.zero_count(), v_row=v_row, v_col=v_col, v=v)

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        _tree.check_same_structure(updates, state.v, "updates", f"{owner} state")
        if params is not None:
            _tree.check_same_shapes(updates, params, "updates", "params")
        beta = decay_rate_fn(state.count - step_offset, decay_rate)

        def ema(old, new):  # in at least float32; the caller rounds it to the state's dtype
            return beta * numerics.widen(old) + (1.0 - beta) * new

        # A zero epsilon leaves 0 in the rows, columns and entries no gradient has reached yet: 0 there, not NaN.
        divide = numerics.eps_divide(epsilon)

        def inverse_root(x):  # x ** -0.5, and 0 where x is 0 unless epsilon is known positive (then x > 0)
            if numerics.known_positive(epsilon, x.dtype):
                return x**-0.5
            return jnp.where(x > 0, jnp.where(x > 0, x, 1) ** -0.5, 0)

        def leaf(g, r, c, v):
            wide_g = numerics.widen(g)
            g2 = numerics.abs_sq(wide_g) + epsilon  # epsilon = 1e-30 would be 0 in float16
            fd = dims(g.shape)
            if fd is None:
                new_v = jnp.real(ema(v, g2))
                u = wide_g * inverse_root(new_v)
                return u.astype(g.dtype), r, c, new_v.astype(v.dtype)
            small, large = fd
            new_r = ema(r, jnp.mean(g2, axis=large))
            new_c = ema(c, jnp.mean(g2, axis=small))
            small_in_r = small - 1 if small > large else small
            rr, cr = jnp.real(new_r), jnp.real(new_c)
            row_factor = inverse_root(divide(rr, jnp.mean(rr, axis=small_in_r, keepdims=True)))
            u = wide_g * jnp.expand_dims(row_factor, large) * jnp.expand_dims(inverse_root(cr), small)
            return u.astype(g.dtype), new_r.astype(r.dtype), new_c.astype(c.dtype), v

        treedef = jax.tree.structure(updates)
        out, v_row, v_col, v = _tree.unzip_leaves(
            treedef, treedef.flatten_up_to(jax.tree.map(leaf, updates, state.v_row, state.v_col, state.v)), 4
        )
        count = _tree.safe_increment(state.count)
        return out, FactoredState(count=count, v_row=v_row, v_col=v_col, v=v)

    return GradientTransformation(init, update)


@alias
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float | jax.Array = 0.8,
    decay_offset: int | jax.Array = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | jax.Array | None = 1.0,
    momentum: float | jax.Array | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: float | jax.Array = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> GradientTransformationExtraArgs:
    r"""Adafactor, composed as Optax composes it (each stage only when enabled):

    1. ``u = g V_hat^(-1/2)`` (:func:`scale_by_factored_rms` with ``factored, decay_rate,
       step_offset=decay_offset, min_dim_size_to_factor, epsilon=eps``);
    2. update clipping, per leaf: ``u <- u / max(1, RMS(u) / clipping_threshold)`` (paper's ``d``);
    3. ``u <- learning_rate u`` (a number or a schedule; skipped when ``learning_rate is None``);
    4. relative step, ``multiply_by_parameter_scale``: ``u <- max(RMS(p), 1e-3) u`` (paper's
       ``epsilon_2 = 1e-3``; Optax has no argument for it);
    5. ``momentum``: ``m <- momentum m + (1 - momentum) u``, ``u <- m`` (no debiasing; ``m`` stored in
       ``dtype_momentum``, float32 by default);
    6. ``weight_decay_rate``: ``u <- u + weight_decay_rate p`` (on the leaves ``weight_decay_mask``
       marks), *not* multiplied by the learning rate;
    7. ``p <- p - u``.

    Differences from the paper (all Optax's): with ``learning_rate=None`` there is no relative step
    size schedule: the step is ``max(RMS(p), 1e-3) u``, i.e. the paper's ``rho_t = 1`` (the paper
    uses ``rho_t = min(1e-2, 1/sqrt(t))``; pass ``learning_rate=lambda k: jnp.minimum(1e-2,
    1 / jnp.sqrt(k + 1.0))`` for it); momentum averages the already scaled step; tensors of more
    than two axes factor their two largest axes; ``factored=False`` keeps a full second moment for
    every leaf (Algorithm 5). The state is a tuple of the enabled stages' states, as Optax's.
    ``torch.optim.Adafactor(lr, weight_decay=wd)`` is ``learning_rate=lambda k: jnp.minimum(lr, 1 / jnp.sqrt(k +
    1.0)), weight_decay_rate=lr * wd, min_dim_size_to_factor=0`` except: it factors every tensor of 2+ dims on
    its last two dims, its ``beta2_t`` is float64, and its ``eps1`` (machine epsilon) floors ``mean(R)`` and
    ``sqrt(V_hat)`` instead of adding to ``g^2``, so float32 steps differ once a factored gradient's running
    RMS is under about 3.5e-4 (any gradient's under 1.2e-7).
    Defaults (Optax's): ``min_dim_size_to_factor=128, decay_rate=0.8, decay_offset=0,
    multiply_by_parameter_scale=True, clipping_threshold=1.0, eps=1e-30, factored=True``.
    """
    stages = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)]
    if clipping_threshold is not None:
        stages.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        stages.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        stages.append(scale_by_param_block_rms())
    if momentum is not None:
        _checks.check_decay("adafactor", "momentum", momentum)  # named as the user passed it (ema calls it decay)
        stages.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        stages.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    stages.append(scale(-1.0))
    return chain(*stages)
