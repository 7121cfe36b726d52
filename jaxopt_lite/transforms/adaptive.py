"""Adaptive per-coordinate step sizes: the Adam family, RMSProp, AdaGrad, AdaDelta, Lion.

Conventions shared by this module (``g`` the incoming update, ``t`` the step
number starting at 1):

- first moment  ``m <- b1 * m + (1 - b1) * g``,
- second moment ``v <- b2 * v + (1 - b2) * g**2``,
- bias correction ``m_hat = m / (1 - b1**t)`` (and likewise for ``v``),
- ``eps`` is added *outside* the square root and ``eps_root`` *inside* it,
  unless a transform says otherwise (``eps_in_sqrt``).

The outputs are directions: chain them with ``scale_by_learning_rate`` (the
aliases in :mod:`jaxopt_lite.aliases` do) to take a descent step.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.numerics import (
    abs_sq,
    cast,
    eps_divide,
    known_zero,
    safe_div,
    safe_sqrt,
    safe_sqrt_all,
    widen,
)
from jaxopt_lite.base import GradientTransformation, pytree_factory


class ScaleByAdamState(NamedTuple):
    """Step count and the first (``mu``) and second (``nu``) moments."""

    count: jax.Array
    mu: Any
    nu: Any


class ScaleByAmsgradState(NamedTuple):
    """Adam's state plus the running maximum of the second moment."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


class ScaleByNadamState(NamedTuple):
    """Adam's state plus the product of the scheduled momentum coefficients."""

    count: jax.Array
    mu: Any
    nu: Any
    mu_product: jax.Array


class ScaleByRmsState(NamedTuple):
    nu: Any


class ScaleByRmsWithCountState(NamedTuple):
    count: jax.Array
    nu: Any


class ScaleByRStdDevState(NamedTuple):
    mu: Any
    nu: Any


class ScaleByRStdDevWithCountState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


class ScaleByRssState(NamedTuple):
    sum_of_squares: Any


class ScaleByAdaDeltaState(NamedTuple):
    e_g: Any
    e_x: Any


class ScaleByLionState(NamedTuple):
    count: jax.Array
    mu: Any


class ScaleByBeliefState(NamedTuple):
    """Step count, first moment ``mu`` and the second moment of the surprise ``nu`` (AdaBelief)."""

    count: jax.Array
    mu: Any
    nu: Any


def _check_betas(owner: str, **betas: Any) -> None:
    for name, value in betas.items():
        _checks.check_decay(owner, name, value)


def _check_eps(owner: str, **eps: Any) -> None:
    for name, value in eps.items():
        _checks.check_nonnegative(owner, name, value)


def _moments_init(owner: str, params: Any, mu_dtype: Any, nu_dtype: Any) -> tuple[Any, Any]:
    _tree.check_floating(params, owner)
    return _tree.accumulator_zeros(params, mu_dtype), _tree.accumulator_zeros(params, nu_dtype)


def _adam_moments(owner: str, updates: Any, state: Any, b1: Any, b2: Any) -> tuple[Any, Any, jax.Array]:
    """The raw moment updates shared by the Adam family, in float32 where stored in bfloat16 or float16 (the step
    is computed from them; the caller rounds them once, storing them with ``_tree.cast_like``)."""
    _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
    mu = _tree.update_moment(updates, state.mu, b1, 1, widened=True)
    nu = _tree.update_moment_per_elem_norm(updates, state.nu, b2, 2, widened=True)
    return mu, nu, _tree.safe_increment(state.count)


def _nesterov_first_moment(updates: Any, mu: Any, b1: Any, count: jax.Array) -> Any:
    """Nesterov's look-ahead of the debiased first moment (Dozat, 2016, with constant ``b1``):

    ``m_hat = b1 * m_t / (1 - b1**(t+1)) + (1 - b1) * g_t / (1 - b1**t)``.
    """
    ahead = _tree.bias_correction(mu, b1, _tree.safe_increment(count))
    now = _tree.bias_correction(updates, b1, count)
    return jax.tree.map(lambda m, g: (b1 * m + (1.0 - b1) * g).astype(m.dtype), ahead, now)


def _roots(second: Any, eps_root: Any = 0.0) -> Any:
    """``sqrt(v + eps_root)`` of every second moment (real even when stored in a complex dtype; float32 when stored
    in bfloat16 or float16), with a
    finite derivative at 0 (so meta-gradients stay finite where a gradient coordinate is exactly zero).
    One :func:`safe_sqrt_all` for the tree; a concrete zero ``eps_root`` adds nothing."""
    leaves, treedef = jax.tree.flatten(second)
    shifted = [widen(jnp.real(v) if jnp.iscomplexobj(v) else v) for v in leaves]
    if not known_zero(eps_root):
        shifted = [v + eps_root for v in shifted]
    return treedef.unflatten(list(safe_sqrt_all(tuple(shifted))))


def _ratio(numerators: Any, second: Any, eps: Any, eps_root: Any, like: Any) -> Any:
    """``n / (sqrt(v + eps_root) + eps)``, leaf by leaf, computed in at least float32 and rounded once to the dtype
    of ``like``."""
    divide = eps_divide(eps)
    return jax.tree.map(
        lambda n, r, g: cast(divide(widen(n), r + eps), g.dtype), numerators, _roots(second, eps_root), like
    )


@pytree_factory
def scale_by_adam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization").

    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``u = m_hat / (sqrt(v_hat + eps_root) + eps)`` with ``m_hat = m / (1-b1^t)``,
    ``v_hat = v / (1-b2^t)``. With ``nesterov=True`` the first moment is
    replaced by its Nesterov look-ahead (NAdam, Dozat 2016, constant ``b1``):
    ``m_hat = b1 m / (1-b1^(t+1)) + (1-b1) g / (1-b1^t)``.

    ``eps`` is outside the root (as the paper, Optax and PyTorch); ``eps_root``
    inside it (useful when differentiating through Adam). ``mu_dtype`` and
    ``nu_dtype`` store the moments in another dtype (default: the params'):
    bfloat16 or float16 moments are updated in float32, the step is computed
    from them before they are rounded once to nearest for the state (for
    unbiased stochastic rounding, wrap in :func:`~jaxopt_lite.low_precision_state`).
    Defaults: ``b1=0.9, b2=0.999, eps=1e-8, eps_root=0``.
    """
    _check_betas("scale_by_adam", b1=b1, b2=b2)
    _check_eps("scale_by_adam", eps=eps, eps_root=eps_root)

    def init(params):
        mu, nu = _moments_init("scale_by_adam", params, mu_dtype, nu_dtype)
        return ScaleByAdamState(count=_tree.zero_count(), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        mu, nu, count = _adam_moments("scale_by_adam", updates, state, b1, b2)
        if nesterov:
            mu_hat = _nesterov_first_moment(updates, mu, b1, count)
        else:
            mu_hat = _tree.bias_correction(mu, b1, count)
        nu_hat = _tree.bias_correction(nu, b2, count)
        new_state = ScaleByAdamState(count=count, mu=_tree.cast_like(mu, state.mu), nu=_tree.cast_like(nu, state.nu))
        return _ratio(mu_hat, nu_hat, eps, eps_root, updates), new_state

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_nadam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    momentum_decay: float | jax.Array = 0.004,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """NAdam with Dozat's momentum schedule (Dozat, 2016, "Incorporating Nesterov
    Momentum into Adam"), as ``torch.optim.NAdam``.

    ``mu_t = b1 (1 - 0.5 * 0.96^(t psi))`` with ``psi = momentum_decay``,
    ``P_t = prod_{i<=t} mu_i``, moments as Adam, ``d = sqrt(v / (1-b2^t) + eps_root) + eps``:

    ``u = (1 - mu_t) / (1 - P_t) * g / d + mu_{t+1} / (1 - P_t mu_{t+1}) * m / d``.

    For the constant-``b1`` variant (Optax's ``nadam``) use
    ``scale_by_adam(nesterov=True)``. Defaults: ``b1=0.9, b2=0.999, eps=1e-8,
    momentum_decay=0.004``.
    """
    _check_betas("scale_by_nadam", b1=b1, b2=b2)
    _check_eps("scale_by_nadam", eps=eps, eps_root=eps_root, momentum_decay=momentum_decay)

    def init(params):
        mu, nu = _moments_init("scale_by_nadam", params, mu_dtype, None)
        return ScaleByNadamState(
            count=_tree.zero_count(), mu=mu, nu=nu, mu_product=jnp.ones([], jnp.result_type(float))
        )

    def update(updates, state, params=None):
        del params
        mu, nu, count = _adam_moments("scale_by_nadam", updates, state, b1, b2)
        t = count.astype(state.mu_product.dtype)
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
        mu_product = state.mu_product * mu_t
        grad_coef = (1.0 - mu_t) / (1.0 - mu_product)
        mom_coef = mu_next / (1.0 - mu_product * mu_next)
        nu_hat = _tree.bias_correction(nu, b2, count)

        divide = eps_divide(eps)

        def leaf(g, m, r):
            return divide(grad_coef * g + mom_coef * m, r + eps).astype(g.dtype)

        out = jax.tree.map(leaf, updates, mu, _roots(nu_hat, eps_root))
        return out, ScaleByNadamState(count=count, mu=_tree.cast_like(mu, state.mu), nu=_tree.cast_like(nu, state.nu),
                                      mu_product=mu_product.astype(state.mu_product.dtype))

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_amsgrad(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_over: str = "debiased",
) -> GradientTransformation:
    """AMSGrad (Reddi et al., 2018, "On the Convergence of Adam and Beyond").

    Adam's moments, with the denominator built from a running maximum of the
    second moment. Two conventions exist, chosen by ``max_over``:

    - ``"debiased"`` (default, as Optax): ``v_max <- max(v_max, v_hat)``,
      ``u = m_hat / (sqrt(v_max + eps_root) + eps)``.
    - ``"raw"`` (as the paper and ``torch.optim.Adam(amsgrad=True)``):
      ``v_max <- max(v_max, v)``, ``u = m_hat / (sqrt(v_max / (1-b2^t) + eps_root) + eps)``.
      With both bias corrections off this is the paper's algorithm exactly.

    ``m_hat``/``v_hat`` are bias-corrected unless ``bias_correction_mu``/``_nu``
    are False.
    """
    if max_over not in ("debiased", "raw"):
        raise ValueError(f"scale_by_amsgrad: max_over must be 'debiased' or 'raw', got {max_over!r}")
    _check_betas("scale_by_amsgrad", b1=b1, b2=b2)
    _check_eps("scale_by_amsgrad", eps=eps, eps_root=eps_root)

    def init(params):
        mu, nu = _moments_init("scale_by_amsgrad", params, mu_dtype, None)
        return ScaleByAmsgradState(count=_tree.zero_count(), mu=mu, nu=nu, nu_max=_tree.zeros_like(nu))

    def update(updates, state, params=None):
        del params
        mu, nu, count = _adam_moments("scale_by_amsgrad", updates, state, b1, b2)
        mu_hat = _tree.bias_correction(mu, b1, count) if bias_correction_mu else mu

        def debias_nu(x):
            return _tree.bias_correction(x, b2, count) if bias_correction_nu else x

        old_max = jax.tree.map(widen, state.nu_max)
        if max_over == "debiased":
            nu_max = jax.tree.map(_real_maximum, old_max, debias_nu(nu))
            denom_sq = nu_max
        else:
            nu_max = jax.tree.map(_real_maximum, old_max, nu)
            denom_sq = debias_nu(nu_max)
        new_state = ScaleByAmsgradState(count=count, mu=_tree.cast_like(mu, state.mu), nu=_tree.cast_like(nu, state.nu),
                                        nu_max=_tree.cast_like(nu_max, state.nu_max))
        return _ratio(mu_hat, denom_sq, eps, eps_root, updates), new_state

    return GradientTransformation(init, update)


def _real_maximum(a: jax.Array, b: jax.Array) -> jax.Array:
    """``max(a, b)`` of second moments, which are real even when stored in a complex dtype."""
    return jnp.maximum(jnp.real(a), jnp.real(b)).astype(a.dtype)


@pytree_factory
def scale_by_adamax(
    b1: float | jax.Array = 0.9, b2: float | jax.Array = 0.999, eps: float | jax.Array = 1e-8
) -> GradientTransformation:
    """AdaMax, Adam with the infinity norm (Kingma & Ba, 2015, section 7.1).

    ``m <- b1 m + (1-b1) g``, ``u_inf <- max(b2 u_inf, |g| + eps)``,
    output ``m / (1 - b1^t) / u_inf``. ``eps`` inside the max (as Optax and
    PyTorch) keeps the division safe for zero gradients; with ``eps = 0`` a
    coordinate whose gradients were all zero gets 0 (not ``0/0``).
    """
    _check_betas("scale_by_adamax", b1=b1, b2=b2)
    _check_eps("scale_by_adamax", eps=eps)

    def init(params):
        mu, nu = _moments_init("scale_by_adamax", params, None, None)
        return ScaleByAdamState(count=_tree.zero_count(), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", "scale_by_adamax state")
        count = _tree.safe_increment(state.count)
        mu = _tree.update_moment(updates, state.mu, b1, 1)
        nu = _tree.update_infinity_moment(updates, state.nu, b2, eps)
        mu_hat = _tree.bias_correction(mu, b1, count)
        out = jax.tree.map(lambda m, v, g: safe_div(m, jnp.real(v)).astype(g.dtype), mu_hat, nu, updates)
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


def _rms_divide(g: jax.Array, second: jax.Array, eps: Any, eps_in_sqrt: bool) -> jax.Array:
    second = jnp.maximum(jnp.real(widen(second)), 0.0)  # a centered estimate can round below 0
    denom = safe_sqrt(second + eps) if eps_in_sqrt else safe_sqrt(second) + eps
    return safe_div(widen(g), denom).astype(g.dtype)


@pytree_factory
def scale_by_rms(
    decay: float | jax.Array = 0.9,
    eps: float | jax.Array = 1e-8,
    initial_scale: float | jax.Array = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSProp's scaling (Tieleman & Hinton, 2012, lecture 6.5).

    ``v <- decay v + (1-decay) g^2``; output ``g / sqrt(v + eps)`` with
    ``eps_in_sqrt=True`` (default, as Optax), else ``g / (sqrt(v) + eps)`` (as
    PyTorch and Keras). ``v`` starts at ``initial_scale``; with
    ``bias_correction=True``, ``v`` is divided by ``1 - decay^t`` first.
    """
    _checks.check_decay("scale_by_rms", "decay", decay)
    _check_eps("scale_by_rms", eps=eps, initial_scale=initial_scale)

    def init(params):
        _tree.check_floating(params, "scale_by_rms")
        nu = _tree.full_like(params, initial_scale)
        return ScaleByRmsWithCountState(_tree.zero_count(), nu) if bias_correction else ScaleByRmsState(nu)

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.nu, "updates", "scale_by_rms state")
        nu = _tree.update_moment_per_elem_norm(updates, state.nu, decay, 2, widened=True)
        stored = _tree.cast_like(nu, state.nu)
        if bias_correction:
            count = _tree.safe_increment(state.count)
            nu_hat, new_state = _tree.bias_correction(nu, decay, count), ScaleByRmsWithCountState(count, stored)
        else:
            nu_hat, new_state = nu, ScaleByRmsState(stored)
        return jax.tree.map(lambda g, v: _rms_divide(g, v, eps, eps_in_sqrt), updates, nu_hat), new_state

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_stddev(
    decay: float | jax.Array = 0.9,
    eps: float | jax.Array = 1e-8,
    initial_scale: float | jax.Array = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Centered RMSProp's scaling (Graves, 2013, "Generating Sequences with RNNs", eq. 38).

    ``m <- decay m + (1-decay) g``, ``v <- decay v + (1-decay) g^2``; output
    ``g / sqrt(v - m^2 + eps)`` (``eps_in_sqrt``, default) or
    ``g / (sqrt(v - m^2) + eps)``. ``v - m^2`` is clamped at 0 against rounding.
    ``v`` starts at ``initial_scale``, ``m`` at 0.
    """
    _checks.check_decay("scale_by_stddev", "decay", decay)
    _check_eps("scale_by_stddev", eps=eps, initial_scale=initial_scale)

    def init(params):
        _tree.check_floating(params, "scale_by_stddev")
        mu, nu = _tree.zeros_like(params), _tree.full_like(params, initial_scale)
        if bias_correction:
            return ScaleByRStdDevWithCountState(_tree.zero_count(), mu, nu)
        return ScaleByRStdDevState(mu, nu)

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.nu, "updates", "scale_by_stddev state")
        mu = _tree.update_moment(updates, state.mu, decay, 1, widened=True)
        nu = _tree.update_moment_per_elem_norm(updates, state.nu, decay, 2, widened=True)
        stored = (_tree.cast_like(mu, state.mu), _tree.cast_like(nu, state.nu))
        if bias_correction:
            count = _tree.safe_increment(state.count)
            mu_hat, nu_hat = _tree.bias_correction(mu, decay, count), _tree.bias_correction(nu, decay, count)
            new_state = ScaleByRStdDevWithCountState(count, *stored)
        else:
            mu_hat, nu_hat, new_state = mu, nu, ScaleByRStdDevState(*stored)
        out = jax.tree.map(lambda g, m, v: _rms_divide(g, jnp.real(v) - abs_sq(m), eps, eps_in_sqrt), updates, mu_hat, nu_hat)
        return out, new_state

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_rss(
    initial_accumulator_value: float | jax.Array = 0.1, eps: float | jax.Array = 1e-7
) -> GradientTransformation:
    """AdaGrad's scaling (Duchi et al., 2011): divide by the root of the sum of squares.

    ``s <- s + |g|^2`` (``s`` starts at ``initial_accumulator_value``); output
    ``g / sqrt(s + eps)`` where ``s > 0``, else 0. ``eps`` is inside the root.
    """
    _check_eps("scale_by_rss", initial_accumulator_value=initial_accumulator_value, eps=eps)

    def init(params):
        _tree.check_floating(params, "scale_by_rss")
        return ScaleByRssState(sum_of_squares=_tree.full_like(params, initial_accumulator_value))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.sum_of_squares, "updates", "scale_by_rss state")
        sos = jax.tree.map(lambda g, s: (s + abs_sq(g)).astype(s.dtype), updates, state.sum_of_squares)

        def leaf(g, s):
            s = jnp.real(s)
            positive = s > 0
            inv = jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, s, 1.0) + eps), 0.0)
            return (g * inv).astype(g.dtype)

        return jax.tree.map(leaf, updates, sos), ScaleByRssState(sum_of_squares=sos)

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_adadelta(rho: float | jax.Array = 0.9, eps: float | jax.Array = 1e-6) -> GradientTransformation:
    """AdaDelta (Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method", Algorithm 1).

    ``E[g^2] <- rho E[g^2] + (1-rho) g^2``,
    ``dx = sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) * g``,
    ``E[dx^2] <- rho E[dx^2] + (1-rho) dx^2``; output ``dx`` (a descent step
    follows from a learning rate of 1 and the usual sign flip).
    """
    _checks.check_decay("scale_by_adadelta", "rho", rho)
    _checks.check_positive("scale_by_adadelta", "eps", eps)  # with eps == 0 the step sqrt(E[dx^2] + eps) stays 0

    def init(params):
        _tree.check_floating(params, "scale_by_adadelta")
        return ScaleByAdaDeltaState(e_g=_tree.zeros_like(params), e_x=_tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.e_g, "updates", "scale_by_adadelta state")
        e_g = _tree.update_moment(updates, state.e_g, rho, 2)
        delta = jax.tree.map(
            lambda g, eg, ex: (jnp.sqrt(ex + eps) / jnp.sqrt(eg + eps) * g).astype(g.dtype), updates, e_g, state.e_x
        )
        e_x = _tree.update_moment(delta, state.e_x, rho, 2)
        return delta, ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_radam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    threshold: float | jax.Array = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rectified Adam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond").

    ``rho_inf = 2 / (1-b2) - 1``, ``rho_t = rho_inf - 2 t b2^t / (1-b2^t)``.
    When ``rho_t >= threshold`` the output is Adam's, times
    ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``;
    before that, the bias-corrected momentum ``m_hat`` alone (SGD with momentum).
    The paper uses 4 as the threshold; 5 (the default) is the authors' code's
    and Optax's. ``nesterov`` as in :func:`scale_by_adam`.
    """
    _check_betas("scale_by_radam", b1=b1, b2=b2)
    _check_eps("scale_by_radam", eps=eps, eps_root=eps_root)
    _checks.check_range("scale_by_radam", "threshold", threshold, low=4.0)  # sqrt((rho-4)(rho-2)...) is real

    def init(params):
        mu, nu = _moments_init("scale_by_radam", params, None, None)
        return ScaleByAdamState(count=_tree.zero_count(), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        mu, nu, count = _adam_moments("scale_by_radam", updates, state, b1, b2)
        t = count.astype(jnp.result_type(float))
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        # rho_t is a difference of two numbers near rho_inf (~2000): form b2^t and 1 - b2^t
        # through log1p/expm1 so that float32 keeps the digits that survive the subtraction.
        t_log_b2 = t * jnp.log1p(-(1.0 - b2))
        rho_t = rho_inf - 2.0 * t * jnp.exp(t_log_b2) / -jnp.expm1(t_log_b2)
        rectify = rho_t >= threshold
        # Both branches are evaluated; keep the unused one finite (no NaN in values or grads).
        safe_rho = jnp.where(rectify, rho_t, rho_inf)
        r = jnp.sqrt((safe_rho - 4.0) * (safe_rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe_rho))
        mu_hat = _nesterov_first_moment(updates, mu, b1, count) if nesterov else _tree.bias_correction(mu, b1, count)
        nu_hat = _tree.bias_correction(nu, b2, count)
        adam_dir = _ratio(mu_hat, nu_hat, eps, eps_root, updates)
        out = jax.tree.map(
            lambda a, m, g: jnp.where(rectify, r * a, m).astype(g.dtype), adam_dir, mu_hat, updates
        )
        return out, ScaleByAdamState(count=count, mu=_tree.cast_like(mu, state.mu), nu=_tree.cast_like(nu, state.nu))

    return GradientTransformation(init, update)


_LION_MODES = ("hard", "smooth", "refined")


@pytree_factory
def scale_by_lion(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.99,
    mu_dtype: Any = None,
    *,
    mode: str = "hard",
    smooth_beta: float | jax.Array = 1.0,
) -> GradientTransformation:
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    ``c = b1 m + (1-b1) g``, ``u = sign(c)``, then ``m <- b2 m + (1-b2) g``.
    ``mode`` picks the sign (as Optax): ``"hard"`` (default) ``sign(c)``,
    ``"smooth"`` ``tanh(smooth_beta * c)``, ``"refined"`` ``c`` where ``|c| < 1``
    and ``sign(c)`` elsewhere.
    Defaults: ``b1=0.9, b2=0.99``; use a learning rate 3-10x smaller than Adam's.
    """
    if mode not in _LION_MODES:
        raise ValueError(f"scale_by_lion: unknown lion mode {mode!r}; it must be one of {list(_LION_MODES)}")
    _check_betas("scale_by_lion", b1=b1, b2=b2)
    _checks.check_finite("scale_by_lion", "smooth_beta", smooth_beta)

    def direction(c):
        if mode == "smooth":
            return jnp.tanh(smooth_beta * c)
        if mode == "refined":
            return jnp.where(jnp.abs(c) < 1.0, c, jnp.sign(c))
        return jnp.sign(c)

    def init(params):
        _tree.check_floating(params, "scale_by_lion")
        return ScaleByLionState(count=_tree.zero_count(), mu=_tree.accumulator_zeros(params, mu_dtype))

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", "scale_by_lion state")
        out = jax.tree.map(lambda g, m: direction(b1 * m + (1.0 - b1) * g).astype(g.dtype), updates, state.mu)
        mu = _tree.update_moment(updates, state.mu, b2, 1)
        return out, ScaleByLionState(count=_tree.safe_increment(state.count), mu=mu)

    return GradientTransformation(init, update)


@pytree_factory
def scale_by_belief(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-16,
    eps_root: float | jax.Array = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the
    Belief in Observed Gradients", Algorithm 2).

    ``m <- b1 m + (1-b1) g``, ``s <- b2 s + (1-b2) |g - m|^2 + eps_root`` (the
    new ``m``), ``u = m_hat / (sqrt(s_hat) + eps)`` with both moments
    bias-corrected. ``nesterov`` as in :func:`scale_by_adam`. State:
    :class:`ScaleByBeliefState` ``(count, mu, nu)``.
    Defaults: ``b1=0.9, b2=0.999, eps=eps_root=1e-16``.
    """
    _check_betas("scale_by_belief", b1=b1, b2=b2)
    _check_eps("scale_by_belief", eps=eps, eps_root=eps_root)

    def init(params):
        mu, nu = _moments_init("scale_by_belief", params, None, None)
        return ScaleByBeliefState(count=_tree.zero_count(), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", "scale_by_belief state")
        count = _tree.safe_increment(state.count)
        mu = _tree.update_moment(updates, state.mu, b1, 1, widened=True)
        surprise = jax.tree.map(lambda g, m: widen(g) - m, updates, mu)
        nu = _tree.update_moment_per_elem_norm(surprise, state.nu, b2, 2, widened=True)
        nu = jax.tree.map(lambda v: (v + eps_root).astype(v.dtype), nu)
        mu_hat = _nesterov_first_moment(updates, mu, b1, count) if nesterov else _tree.bias_correction(mu, b1, count)
        nu_hat = _tree.bias_correction(nu, b2, count)
        new_state = ScaleByBeliefState(count=count, mu=_tree.cast_like(mu, state.mu), nu=_tree.cast_like(nu, state.nu))
        return _ratio(mu_hat, nu_hat, eps, 0.0, updates), new_state

    return GradientTransformation(init, update)
