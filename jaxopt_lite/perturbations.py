"""Differentiable perturbed functions (Berthet et al., 2020, "Learning with Differentiable Perturbed Optimizers").

:func:`make_perturbed_fun` turns any function ``f`` of a pytree (a piecewise-constant argmax, a
sort, a solver) into a Monte-Carlo estimate of its smoothing
``f_sigma(x) = E_{z ~ mu}[f(x + sigma z)]`` whose derivatives of every order, taken by JAX's
autodiff, are unbiased estimates of those of ``f_sigma``, from values of ``f`` alone: the score
function (REINFORCE) estimator written with the "magic box" of Foerster et al. (2018, "DiCE: The
Infinitely Differentiable Monte Carlo Estimator"). The noise distributions are :class:`Gumbel` (the
default) and :class:`Normal`, each with ``sample`` and an unnormalized ``log_prob``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree

__all__ = ["Gumbel", "Normal", "make_perturbed_fun"]


class Normal:
    """The standard normal distribution: ``sample`` draws ``N(0, 1)``, ``log_prob(z) = -z**2 / 2`` (unnormalized)."""

    def sample(self, key: jax.typing.ArrayLike, sample_shape: tuple[int, ...] = (),
               dtype: jax.typing.DTypeLike = float) -> jax.Array:
        return jax.random.normal(key, sample_shape, dtype)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        return -0.5 * inputs**2


class Gumbel:
    """The standard Gumbel distribution: ``sample`` draws it, ``log_prob(z) = -z - exp(-z)``."""

    def sample(self, key: jax.typing.ArrayLike, sample_shape: tuple[int, ...] = (),
               dtype: jax.typing.DTypeLike = float) -> jax.Array:
        return jax.random.gumbel(key, sample_shape, dtype)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        return -inputs - jnp.exp(-inputs)


def _magic_box(x: jax.Array) -> jax.Array:
    """``exp(x - stop_gradient(x))``: the value 1, whose derivative is ``dx`` times itself (DiCE)."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def make_perturbed_fun(
    fun: Callable[[Any], Any],
    num_samples: int = 1000,
    sigma: jax.typing.ArrayLike = 0.1,
    noise: Any = Gumbel(),  # noqa: B008 - stateless, Optax's default
    use_baseline: bool = True,
) -> Callable[[jax.Array, Any], Any]:
    r"""``(key, x) -> `` a Monte-Carlo estimate of ``E_z[fun(x + sigma z)]``, differentiable in ``x``.

    With ``z_1, ..., z_n`` (``n = num_samples``) drawn from ``noise`` (one key per sample, split
    from ``key``; one per leaf of ``x`` within a sample), ``y_i = x + sigma z_i`` and the score
    ``s_i = sum log_prob((y_i - x) / sigma)`` (a function of ``x`` only through the explicit ``x``),
    the estimate is

    .. math::
        \frac1n \sum_i \left[ \square(s_i) f(y_i) + (1 - \square(s_i)) f(x) \right],
        \qquad \square(s) = e^{s - \bot(s)},

    where ``\bot`` stops gradients. Its value is the plain average of ``f(y_i)``, and its
    gradient is the score-function estimate
    ``(1/n) sum_i (f(y_i) - f(x)) grad_x s_i`` (Berthet et al., 2020, Prop. 3.1). ``f(x)``
    (taken at ``stop_gradient(x)``) is a control variate that lowers the variance without bias;
    ``use_baseline=False`` drops it. Higher derivatives are unbiased too (Foerster et al., 2018).
    ``fun`` need not be differentiable: it is only evaluated. ``noise`` is any object with
    ``sample(key, shape, dtype)`` and ``log_prob(z)`` (:class:`Gumbel`, the default, or
    :class:`Normal`). Same draws and numbers as Optax for the same key.
    """
    _checks.check_positive("make_perturbed_fun", "num_samples", num_samples)
    _checks.check_positive("make_perturbed_fun", "sigma", sigma)

    def one_sample(key, x, baseline):
        z = _tree.random_like(key, x, sampler=noise.sample)
        shifted = jax.lax.stop_gradient(jax.tree.map(lambda a, b: a + sigma * b, x, z))
        # The noise recovered from the (constant) perturbed point: its dependence on x carries the score.
        z = jax.tree.map(lambda a, y: (y - a) / sigma, x, shifted)
        log_probs = [jnp.sum(leaf) for leaf in jax.tree.leaves(jax.tree.map(noise.log_prob, z))]
        box = _magic_box(functools.reduce(operator.add, log_probs, 0))
        out = jax.tree.map(lambda v: box * v, fun(shifted))
        if use_baseline:
            out = jax.tree.map(lambda v, b: v + (1 - box) * b, out, baseline)
        return out

    def perturbed(key: jax.Array, x: Any) -> Any:
        baseline = fun(jax.lax.stop_gradient(x)) if use_baseline else None
        keys = jax.random.split(key, num_samples)
        outs = jax.vmap(one_sample, in_axes=(0, None, None))(keys, x, baseline)
        return jax.tree.map(lambda v: jnp.mean(v, axis=0), outs)

    return perturbed
