"""Distance over Gradients: DoG (Ivgi et al., 2023, "DoG is SGD's Best Friend: A Parameter-Free
Dynamic Step Size Schedule"), its layer-wise form LDoG, and DoWG (Khaled et al., 2023, "DoWG
Unleashed: An Efficient Universal Parameter-Free Gradient Descent Method")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    identity,
    pytree_factory,
)
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array
InitStep = tuple[Literal["distance", "learning_rate", "heuristic"], Scalar]


def _scalar_dtype(params: Any) -> Any:
    """Scalar accumulators run in the parameters' lowest dtype, but at least float32."""
    return jnp.promote_types(_tree.dtype(params, "lowest"), jnp.float32)


def _copy(params: Any, dtype: Any = None) -> Any:
    return jax.tree.map(lambda p: jnp.array(p, dtype=dtype or jnp.result_type(p), copy=True), params)


class DoGState(NamedTuple):
    """DoG's state: whether no step was taken yet, ``x_0``, ``max_k ||x_k - x_0||`` and ``sum_k ||g_k||^2``."""

    is_init_step: jax.Array
    init_params: Any
    max_dist: jax.Array
    sum_sq_norm_grads: jax.Array


@pytree_factory
def scale_by_dog(init_step: InitStep, eps: Scalar = 1e-8) -> GradientTransformation:
    """DoG's step size, applied to the updates (a positive multiple of them)::

        r_t = max(r_eps, max_{k<=t} ||x_k - x_0||),  G_t = sum_{k<=t} ||g_k||^2,  u = r_t / sqrt(G_t + eps) * g_t

    over the whole tree. ``init_step = (kind, value)`` sets the first step:
    ``("distance", r)`` takes ``r_eps = r``; ``("heuristic", a)`` takes
    ``r_eps = a (1 + ||x_0||)`` (``x_0``: the params given to ``init``); ``("learning_rate", lr)``
    makes the first step ``lr * g_0`` (``r_eps = 0``). ``value`` may be traced.
    Memory: one buffer per parameter (``x_0``). ``update`` needs ``params``.
    """
    owner = "scale_by_dog"
    kind, value = init_step
    if kind not in ("distance", "learning_rate", "heuristic"):
        raise ValueError(f"{owner}: init_step[0] must be 'distance', 'learning_rate' or 'heuristic', got {kind!r}")
    _checks.check_nonnegative(owner, "init_step[1]", value)
    _checks.check_nonnegative(owner, "eps", eps)

    def init(params):
        _tree.check_floating(params, owner)
        dtype = _scalar_dtype(params)
        if kind == "distance":
            r_eps = value
        elif kind == "heuristic":
            r_eps = value * (1 + _tree.norm(params))
        else:
            r_eps = 0.0
        return DoGState(
            is_init_step=jnp.asarray(True),
            init_params=_copy(params),
            max_dist=jnp.asarray(r_eps, dtype),
            sum_sq_norm_grads=jnp.zeros([], dtype),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params")
        _tree.check_same_shapes(updates, state.init_params, "updates", f"{owner} state")
        dtype = state.max_dist.dtype
        # safe_sqrt: the distance is 0 at the first step, where sqrt's derivative is infinite.
        dist = _numerics.safe_sqrt(_tree.norm(_tree.sub(state.init_params, params), squared=True).astype(dtype))
        max_dist = jnp.maximum(state.max_dist, dist)
        sum_sq = state.sum_sq_norm_grads + _tree.norm(updates, squared=True).astype(dtype)
        step = _numerics.safe_div(max_dist, _numerics.safe_sqrt(sum_sq + eps))
        if kind == "learning_rate":
            step = jnp.where(state.is_init_step, jnp.asarray(value, dtype), step)
        new_state = DoGState(jnp.asarray(False), state.init_params, max_dist, sum_sq)
        return _tree.scale(step, updates), new_state

    return GradientTransformation(init, update)


def _decay(weight_decay: Scalar | None, mask: Any):
    return identity() if weight_decay is None else add_decayed_weights(weight_decay, mask)


@alias
def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: InitStep = ("heuristic", 1e-6),
    eps: Scalar = 1e-8,
    weight_decay: Scalar | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformationExtraArgs:
    """DoG: SGD with step ``learning_rate * r_t / sqrt(G_t + eps)`` (see :func:`scale_by_dog`).

    ``x <- x - lr_t r_t / sqrt(G_t + eps) (g + weight_decay x)``; ``learning_rate`` is a
    multiplier (1 by default, or a schedule). The authors recommend evaluating an
    average of the iterates (e.g. :func:`params_ema`).
    """
    return chain(_decay(weight_decay, mask), scale_by_dog(init_step, eps), scale_by_learning_rate(learning_rate))


class DoWGState(NamedTuple):
    """DoWG's state: ``x_0``, ``sum_k rbar_k^2 ||g_k||^2`` and ``rbar_t^2 = max(rbar_0^2, max_k ||x_k - x_0||^2)``."""

    init_params: Any
    weighted_sq_norm_grads: jax.Array
    estim_sq_dist: jax.Array


@pytree_factory
def scale_by_dowg(init_estim_sq_dist: Scalar | None = None, eps: Scalar = 1e-4) -> GradientTransformation:
    """DoWG's step size, applied to the updates::

        rbar_t^2 = max(rbar_{t-1}^2, ||x_t - x_0||^2),  v_t = v_{t-1} + rbar_t^2 ||g_t||^2,
        u = rbar_t^2 / (sqrt(v_t) + eps) * g_t

    ``rbar_0^2 = init_estim_sq_dist`` (default ``eps``). Memory: one buffer per
    parameter (``x_0``). ``update`` needs ``params``.
    """
    owner = "scale_by_dowg"
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "init_estim_sq_dist", init_estim_sq_dist)
    initial = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def init(params):
        _tree.check_floating(params, owner)
        dtype = _scalar_dtype(params)
        return DoWGState(
            init_params=_copy(params),
            weighted_sq_norm_grads=jnp.zeros([], dtype),
            estim_sq_dist=jnp.asarray(initial, dtype),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params")
        _tree.check_same_shapes(updates, state.init_params, "updates", f"{owner} state")
        dtype = state.estim_sq_dist.dtype
        sq_dist = _tree.norm(_tree.sub(state.init_params, params), squared=True).astype(dtype)
        estim_sq_dist = jnp.maximum(state.estim_sq_dist, sq_dist)
        weighted = state.weighted_sq_norm_grads + estim_sq_dist * _tree.norm(updates, squared=True).astype(dtype)
        step = _numerics.safe_div(estim_sq_dist, _numerics.safe_sqrt(weighted) + eps)
        return _tree.scale(step, updates), DoWGState(state.init_params, weighted, estim_sq_dist)

    return GradientTransformation(init, update)


@alias
def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: Scalar | None = None,
    eps: Scalar = 1e-4,
    weight_decay: Scalar | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformationExtraArgs:
    """DoWG: SGD with step ``learning_rate * rbar_t^2 / (sqrt(v_t) + eps)`` (see :func:`scale_by_dowg`)."""
    return chain(
        _decay(weight_decay, mask), scale_by_dowg(init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate)
    )


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Layer-wise DoG's state, one scalar per parameter array: ``max_dist``, ``grad_sum_of_squares``;
    and ``init_params``."""

    max_dist: Any
    grad_sum_of_squares: Any
    init_params: Any


@pytree_factory
def scale_by_distance_over_gradients(
    reps_rel: Scalar = 1e-6, eps: Scalar = 1e-8, param_dtype: Any = jnp.float32, global_scale: Scalar = 1.0
) -> GradientTransformation:
    """Layer-wise DoG (LDoG, Ivgi et al., 2023): DoG's step size for each parameter array ``x``::

        r = max(reps_rel (1 + ||x_0||), max_k ||x_k - x_0||),  G = sum_k ||g_k||^2,
        u = global_scale * r / sqrt(G + eps) * g

    with norms over the array. ``x_0`` is stored in ``param_dtype`` (float32 by
    default; ``None`` keeps each parameter's dtype). ``global_scale=-1`` gives a
    descent step. Memory: one buffer per parameter plus two scalars per array.
    """
    owner = "scale_by_distance_over_gradients"
    _checks.check_nonnegative(owner, "reps_rel", reps_rel)
    _checks.check_nonnegative(owner, "eps", eps)

    def leaf_dtype(p):
        return jnp.promote_types(jnp.result_type(p), jnp.float32)

    def init(params):
        reject_fused(owner, params)  # distances and gradient norms per array
        _tree.check_floating(params, owner)
        return ScaleByDistanceOverGradientsState(
            max_dist=jax.tree.map(lambda p: (reps_rel * (1 + jnp.linalg.norm(p))).astype(leaf_dtype(p)), params),
            # On the array's devices (replicated over its mesh, as the update's ``jnp.sum`` makes it).
            grad_sum_of_squares=jax.tree.map(lambda p: _tree.zeros_like(jnp.sum(p), leaf_dtype(p)), params),
            init_params=_copy(params, param_dtype),
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        if params is None:
            raise ValueError(f"{owner}: update needs params")
        _tree.check_same_shapes(updates, state.init_params, "updates", f"{owner} state")

        def leaf(g, p, p0, r, sos):
            r = jnp.maximum(r, _numerics.safe_sqrt(jnp.sum(jnp.square((p - p0).astype(r.dtype)))))
            sos = sos + jnp.sum(jnp.square(g.astype(sos.dtype)))
            step = global_scale * _numerics.safe_div(r, _numerics.safe_sqrt(sos + eps))
            return (step * g).astype(g.dtype), r, sos

        triples = jax.tree.map(leaf, updates, params, state.init_params, state.max_dist, state.grad_sum_of_squares)
        new_updates, max_dist, sos = jax.tree.transpose(
            jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), triples
        )
        return new_updates, ScaleByDistanceOverGradientsState(max_dist, sos, state.init_params)

    return GradientTransformation(init, update)
