"""Small utilities Optax exports at its top level: gradient scaling in the backward pass, a diagonal Gaussian."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm as _normal


@jax.custom_vjp
def _scale_gradient(inputs: Any, scale: Any) -> Any:
    del scale
    return inputs


def _scale_gradient_fwd(inputs, scale):
    return inputs, scale


def _scale_gradient_bwd(scale, cotangents):
    return jax.tree.map(lambda g: g * scale, cotangents), None


_scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def scale_gradient(inputs: Any, scale: float | jax.Array) -> Any:
    """The identity on ``inputs`` (any pytree) whose gradient is multiplied by ``scale`` in the backward pass.

    ``scale`` is not differentiated. A concrete scale of 1 returns ``inputs`` and of 0 stops the gradient.
    """
    if isinstance(scale, (int, float)):
        if scale == 1:
            return inputs
        if scale == 0:
            return jax.lax.stop_gradient(inputs)
    return _scale_gradient(inputs, scale)


class MultiNormalDiagFromLogScale:
    """A Gaussian with diagonal covariance, parameterized by its mean ``loc`` and ``log_scale = log(std)``."""

    def __init__(self, loc: Any, log_scale: Any):
        self._mean = jnp.asarray(loc)
        self._log_scale = jnp.asarray(log_scale)
        self._scale = jnp.exp(self._log_scale)
        self._param_shape = jax.lax.broadcast_shapes(self._mean.shape, self._scale.shape)

    def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
        """Draws samples of shape ``(*shape, *param_shape)``: ``loc + exp(log_scale) * N(0, 1)``."""
        noise = jax.random.normal(key, (*tuple(shape), *self._param_shape))
        return noise * self._scale + self._mean

    def log_prob(self, x: Any) -> jax.Array:
        """The log density of ``x``, summed over the parameter axes."""
        per_coordinate = _normal.logpdf(x, loc=self._mean, scale=self._scale)
        return jnp.sum(per_coordinate, axis=tuple(range(-len(self._param_shape), 0)))

    @property
    def log_scale(self) -> jax.Array:
        return self._log_scale

    @property
    def params(self) -> Sequence[jax.Array]:
        return [self._mean, self._log_scale]


def multi_normal(loc: Any, log_scale: Any) -> MultiNormalDiagFromLogScale:
    """A :class:`MultiNormalDiagFromLogScale` with mean ``loc`` and standard deviation ``exp(log_scale)``."""
    return MultiNormalDiagFromLogScale(loc=loc, log_scale=log_scale)
