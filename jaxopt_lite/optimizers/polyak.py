"""SGD with the stochastic Polyak step size (Loizou et al., 2021, SPS_max; SPS+ of Garrigos et al., 2023).

References: N. Loizou, S. Vaswani, I. Laradji, S. Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
Adaptive Learning Rate for Fast Convergence", AISTATS 2021, arXiv:2002.10542 (SPS_max);
L. Berrada, A. Zisserman, M. P. Kumar, "Training Neural Networks for and by Interpolation", ICML 2020;
G. Garrigos, R. M. Gower, F. Schaipp, "Function value learning: Adaptive learning rates based on the Polyak
stepsize and function splitting in ERM", arXiv:2307.14528, 2023 (SPS+).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.aliases import sgd
from jaxopt_lite.base import EmptyState, GradientTransformationExtraArgs, ScalarOrSchedule, alias, chain, pytree_factory

_VARIANTS = ("sps", "sps+")
_TINY = float(np.finfo(np.float64).eps)  # Optax's threshold on ||g||^2 + eps, whatever the dtype


def _check_polyak(owner: str, f_min, max_learning_rate, eps, variant) -> None:
    _checks.check_finite(owner, "f_min", f_min)
    _checks.check_nonnegative(owner, "max_learning_rate", max_learning_rate)
    _checks.check_nonnegative(owner, "eps", eps)
    if variant not in _VARIANTS:
        raise ValueError(f"{owner}: variant must be 'sps' or 'sps+', got {variant!r}")


@pytree_factory
def scale_by_polyak(
    f_min: float | jax.Array = 0.0,
    max_learning_rate: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    r"""Scales the updates ``u`` by Polyak's step size (Loizou et al., 2021, SPS_max, with ``c = 1``):

    ``u <- min((f - f_min) / (||u||^2 + eps), max_learning_rate) u``, and ``u <- 0`` where
    ``||u||^2 + eps <= 2.2e-16`` (float64's machine epsilon, whatever the dtype, as Optax).
    ``||u||^2`` is over the whole tree; ``f`` is the objective's current value, passed as the keyword
    argument ``value`` of ``update`` (a :class:`~jaxopt_lite.GradientTransformationExtraArgs`).
    ``variant='sps+'`` (Garrigos et al., 2023) uses ``max(f - f_min, 0)`` in place of ``f - f_min``.
    Stateless. Defaults: ``f_min=0, max_learning_rate=1, eps=0, variant='sps'``.
    """
    owner = "scale_by_polyak"
    _check_polyak(owner, f_min, max_learning_rate, eps, variant)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise TypeError(f"{owner}: update needs the objective's value: update(updates, state, params, value=f)")
        sq_norm = _tree.norm(updates, squared=True)
        gap = jnp.asarray(value - f_min).astype(sq_norm.dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denominator = sq_norm + eps
        degenerate = denominator <= _TINY
        step = jnp.where(degenerate, 0.0, jnp.minimum(gap / jnp.where(degenerate, 1.0, denominator), max_learning_rate))
        return _tree.scale(step, updates), state

    return GradientTransformationExtraArgs(init, update)


@alias
def polyak_sgd(
    max_learning_rate: float | jax.Array = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: float | jax.Array = 0.0,
    eps: float | jax.Array = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    r"""SGD with Polyak's step size: the chain ``sgd(learning_rate=scaling)``, :func:`scale_by_polyak`, as Optax.

    ``update(grads, state, params, value=f)``: ``p <- p - s gamma g`` with
    ``gamma = min((f - f_min) / (s^2 ||g||^2 + eps), max_learning_rate)`` and ``s = scaling`` (a number or a
    schedule). Optax documents ``s min((f - f_min) / (||g||^2 + eps), max_learning_rate)``; its chain (and
    this one) scales the gradient by ``s`` *before* the Polyak step sees it, hence the ``s^2``. The two agree
    for the default ``scaling=1``. Defaults: ``max_learning_rate=1, scaling=1, f_min=0, eps=0, variant='sps'``.
    """
    owner = "polyak_sgd"
    _check_polyak(owner, f_min, max_learning_rate, eps, variant)
    if not callable(scaling):
        _checks.check_nonnegative(owner, "scaling", scaling)
    return chain(
        sgd(learning_rate=scaling),
        scale_by_polyak(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps, variant=variant),
    )
