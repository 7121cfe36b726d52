"""Sophia (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training") and two estimators of the Hessian diagonal: Hutchinson's (Hutchinson, 1989; Sophia-H)
and Gauss-Newton-Bartlett (Sophia-G)."""

from __future__ import annotations

from collections.abc import Callable
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
    with_extra_args_support,
)
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array


class HutchinsonState(NamedTuple):
    """The PRNG key the next probe is split from."""

    key: jax.Array


class GaussNewtonBartlettState(NamedTuple):
    """The PRNG key the next labels are sampled from (split at every call)."""

    key: jax.Array


def hutchinson_estimator_diag_hessian(random_seed: jax.Array | None = None) -> GradientTransformationExtraArgs:
    r"""Hutchinson's estimate of the Hessian diagonal: ``z * (H z)`` for a Rademacher probe ``z``.

    ``E[z \odot H z] = diag(H)`` when the entries of ``z`` are independent signs. ``update(updates,
    state, params, obj_fn=f)`` ignores ``updates`` and returns the estimate for the Hessian of the
    scalar function ``f`` at ``params`` (one Hessian-vector product, forward over reverse mode), and
    the state with a fresh key. Per step, the key is split into the next state's key and the probe's
    key, which is split into one key per leaf; the signs are drawn in float32 (as Optax, so the probes
    are Optax's for the same key) and cast to each leaf's dtype (Optax casts them all to the narrowest
    one, which ``jax.jvp`` refuses for params of mixed dtypes).
    ``random_seed`` defaults to ``jax.random.PRNGKey(0)``. Memory: none per parameter (a key).
    """
    owner = "hutchinson_estimator_diag_hessian"

    def init(params):
        del params
        return HutchinsonState(key=jax.random.PRNGKey(0) if random_seed is None else random_seed)

    def update(updates, state, params=None, obj_fn=None, **extra_args):
        del updates, extra_args
        if params is None:
            raise ValueError(f"{owner}: update needs params (the point the Hessian is taken at)")
        if obj_fn is None:
            raise ValueError(f"{owner}: update needs the keyword argument obj_fn (a scalar function of params)")
        key, probe_key = jax.random.split(state.key)
        signs = _tree.random_like(probe_key, params, jax.random.rademacher, dtype=jnp.float32)
        signs = _tree.cast_like(signs, params)  # +-1 in every dtype: Optax's draws, and jvp needs each leaf's dtype
        hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
        return jax.tree.map(lambda h, z: h * z, hvp, signs), HutchinsonState(key=key)

    return GradientTransformationExtraArgs(init, update)


def gauss_newton_bartlett_estimator_diag_hessian(
    batch_size: int, random_seed: jax.Array | None = None
) -> GradientTransformationExtraArgs:
    r"""The Gauss-Newton-Bartlett estimate of the Hessian diagonal (Liu et al., 2023, Algorithm 2; Sophia-G).

    For a loss ``l(f(theta, x), y)`` that is a negative log-likelihood of the model's own predictive
    distribution (softmax cross-entropy), with labels ``y_hat_b`` sampled from that distribution,
    ``g_hat = grad (1/B) sum_b l(f(theta, x_b), y_hat_b)`` and the estimate is ``B * g_hat * g_hat``:
    by Bartlett's second identity its expectation is the diagonal of the Gauss-Newton matrix, which
    is positive semi-definite. ``update(updates, state, params, sampled_obj_fn=f)`` ignores ``updates``;
    ``f(params, key)`` returns the mean loss over the batch at labels it samples with ``key`` (for
    logits ``z``: ``jax.random.categorical(key, z)``). Per call the key is split into the next state's
    key and the sampling key. ``batch_size`` is ``B`` (a Python int or an array). ``random_seed``
    defaults to ``jax.random.PRNGKey(0)``. Memory: none per parameter (a key).
    """
    owner = "gauss_newton_bartlett_estimator_diag_hessian"
    _checks.check_range(owner, "batch_size", batch_size, low=1)

    def init(params):
        del params
        return GaussNewtonBartlettState(key=jax.random.PRNGKey(0) if random_seed is None else random_seed)

    def update(updates, state, params=None, sampled_obj_fn=None, **extra_args):
        del updates, extra_args
        if params is None:
            raise ValueError(f"{owner}: update needs params (the point the Hessian is taken at)")
        if sampled_obj_fn is None:
            raise ValueError(
                f"{owner}: update needs the keyword argument sampled_obj_fn(params, key): the mean loss at "
                "labels sampled from the model with key"
            )
        key, sample_key = jax.random.split(state.key)
        grads = jax.grad(sampled_obj_fn)(params, sample_key)
        estimate = jax.tree.map(lambda g: batch_size * numerics.abs_sq(g).astype(g.dtype), grads)
        return estimate, GaussNewtonBartlettState(key=key)

    return GradientTransformationExtraArgs(init, update)


class SophiaState(NamedTuple):
    """Step ``count``, momentum ``mu``, EMA ``nu`` of the Hessian diagonal, and the estimator's state."""

    count: jax.Array
    mu: Any
    nu: Any
    hessian_fn_state: Any


@pytree_factory
def scale_by_sophia(
    b1: Scalar = 0.965,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    gamma: Scalar = 0.01,
    clip_threshold: Scalar | None = 1.0,
    update_interval: int | jax.Array = 10,
    hessian_diagonal_fn: GradientTransformation = hutchinson_estimator_diag_hessian(),  # noqa: B008 - as Optax
    mu_dtype: Any = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int | jax.Array = 0,
) -> GradientTransformationExtraArgs:
    r"""Sophia's direction: the momentum over a lagged EMA of the Hessian diagonal, clipped.

    At step ``t`` (from 1), with gradient ``g`` and ``h`` the EMA as it was before this step:

    - ``m <- b1 m + (1 - b1) g``, ``m_hat = m / (1 - b1^t)``,
    - ``u = clip(m_hat / max(gamma h, eps), -c, c)`` with ``c = clip_threshold`` (``None``: no clip),
    - if ``(t - 1) % update_interval == 0`` (steps 1, k+1, 2k+1, ...):
      ``h <- b2 h + (1 - b2) hhat`` with ``hhat`` from ``hessian_diagonal_fn``'s ``update``, which
      gets this update's keyword arguments (the default, :func:`hutchinson_estimator_diag_hessian`,
      needs ``obj_fn=``, a scalar function of the params).

    The first step uses ``h = 0`` (so ``u = clip(m_hat / eps)``). Conventions that differ from the
    paper's Algorithm 3 (they are Optax's and Levanter's): ``m`` is bias-corrected; a step that
    refreshes ``h`` uses the ``h`` from before the refresh (the paper, the refreshed one); the probe
    is Rademacher (the paper: Gaussian). Effective EMA rate of ``h`` per step:
    ``1 - (1 - b2) / update_interval``. ``verbose`` prints the fraction of unclipped coordinates
    (the "win rate", 0.1-0.5 is healthy) every ``print_win_rate_every_n_steps`` steps (0: never).
    ``mu`` is kept in ``mu_dtype`` (default: the params'); the updates in the params' dtypes. Low
    precision: for float16 or bfloat16 state ``m_hat / max(gamma h, eps)`` and the clip are computed in
    float32 (``eps`` would round to 0 in float16) and rounded once, to the update's dtype.
    Memory: two numbers per parameter. Defaults (Optax's): ``b1=0.965, b2=0.99, eps=1e-8,
    gamma=0.01, clip_threshold=1, update_interval=10``.
    """
    owner = "scale_by_sophia"
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "gamma", gamma)
    _checks.check_positive(owner, "update_interval", update_interval)
    _checks.check_nonnegative(owner, "print_win_rate_every_n_steps", print_win_rate_every_n_steps)
    if clip_threshold is not None:
        _checks.check_nonnegative(owner, "clip_threshold", clip_threshold)
    estimator = with_extra_args_support(hessian_diagonal_fn)

    def init(params):
        _tree.check_floating(params, owner, real="Sophia clips m / (gamma h), and complex numbers have no order")
        return SophiaState(
            count=_tree.zero_count(),
            mu=_tree.accumulator_zeros(params, mu_dtype),
            nu=_tree.zeros_like(params),
            hessian_fn_state=estimator.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{owner}: update needs params (the Hessian diagonal is estimated at them)")
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        count = numerics.safe_increment(state.count)
        mu = _tree.update_moment(updates, state.mu, b1, 1)
        # In at least float32, rounded once at the end (eps = 1e-8 would be 0 in float16: 0 / 0 on zero gradients).
        mu_hat = _tree.bias_correction(jax.tree.map(numerics.widen, mu), b1, count)
        divide = numerics.eps_divide(eps, numerics.zero_safe_div)  # eps = 0: 0 where m is 0, not 0 / 0
        direction = jax.tree.map(lambda m, h: divide(m, jnp.maximum(gamma * numerics.widen(h), eps)), mu_hat, state.nu)
        if clip_threshold is not None:
            if verbose:
                leaves = jax.tree.leaves(direction)
                unclipped = sum(jnp.sum(jnp.abs(u) < clip_threshold) for u in leaves)
                win_rate = unclipped / max(1, sum(u.size for u in leaves))
                every = jnp.asarray(print_win_rate_every_n_steps)
                jax.lax.cond(
                    (every > 0) & (count % jnp.maximum(every, 1) == 0),
                    lambda: jax.debug.print("Sophia optimizer win rate: {}", win_rate),
                    lambda: None,
                )
            direction = jax.tree.map(lambda u: jnp.clip(u, -clip_threshold, clip_threshold), direction)

        def refresh(estimator_state, nu):
            diag, estimator_state = estimator.update(updates, estimator_state, params, **extra_args)
            return estimator_state, _tree.update_moment(diag, nu, b2, 1)

        estimator_state, nu = jax.lax.cond(
            state.count % update_interval == 0, refresh, lambda s, n: (s, n), state.hessian_fn_state, state.nu
        )
        direction = jax.tree.map(lambda u, g: u.astype(g.dtype), direction, updates)
        return direction, SophiaState(count=count, mu=mu, nu=nu, hessian_fn_state=estimator_state)

    return GradientTransformationExtraArgs(init, update)


@alias
def sophia(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.965,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 1e-4,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    gamma: Scalar = 0.01,
    clip_threshold: Scalar | None = 1.0,
    update_interval: int | jax.Array = 10,
    hessian_diagonal_fn: GradientTransformation = hutchinson_estimator_diag_hessian(),  # noqa: B008 - as Optax
    mu_dtype: Any = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int | jax.Array = 0,
) -> GradientTransformationExtraArgs:
    """Sophia: ``p <- p - learning_rate * (u + weight_decay * p)`` with ``u`` from :func:`scale_by_sophia`.

    Pass the loss to the update: ``update(grads, state, params, obj_fn=lambda p: loss(p, batch))``
    (any keyword argument goes to ``hessian_diagonal_fn``). The weight decay is decoupled and
    scaled by the learning rate (``weight_decay_mask`` selects the decayed leaves). Defaults as
    Optax: ``b1=0.965, b2=0.99, eps=1e-8, weight_decay=1e-4, gamma=0.01, clip_threshold=1,
    update_interval=10``, Hutchinson's estimator.
    """
    return chain(
        scale_by_sophia(
            b1=b1,
            b2=b2,
            eps=eps,
            gamma=gamma,
            clip_threshold=clip_threshold,
            update_interval=update_interval,
            hessian_diagonal_fn=hessian_diagonal_fn,
            mu_dtype=mu_dtype,
            verbose=verbose,
            print_win_rate_every_n_steps=print_win_rate_every_n_steps,
        ),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
