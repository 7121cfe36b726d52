"""Running a real-valued optimizer on complex parameters by splitting them into real and imaginary parts.

JAX's gradient of a real loss with respect to a complex parameter is the conjugate of the steepest-ascent
direction; conjugate it (``jaxopt_lite.tree.conj``) before ``update`` to descend.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite.base import GradientTransformation, pytree_factory


class SplitRealAndImaginaryArrays(NamedTuple):
    """The real and imaginary parts of a complex array, as two real arrays."""

    real: jax.Array
    imaginary: jax.Array


class SplitRealAndImaginaryState(NamedTuple):
    """The state of the inner transformation, which sees the split (real) tree."""

    inner_state: Any


def _split(x: Any) -> Any:
    return SplitRealAndImaginaryArrays(x.real, x.imag) if jnp.iscomplexobj(x) else x


def _merge(x: Any) -> Any:
    return x.real + 1j * x.imaginary if isinstance(x, SplitRealAndImaginaryArrays) else x


@pytree_factory
def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    """Applies ``inner`` to complex parameters as if each were the pair of its real and imaginary parts.

    Each complex leaf ``z`` of params and updates becomes ``SplitRealAndImaginaryArrays(z.real, z.imag)``
    for ``inner``; the transformed pairs are merged back into complex updates. Real leaves pass as they are.
    """

    def init(params):
        return SplitRealAndImaginaryState(inner.init(jax.tree.map(_split, params)))

    def update(updates, state, params=None):
        split_params = None if params is None else jax.tree.map(_split, params)
        new_updates, inner_state = inner.update(jax.tree.map(_split, updates), state.inner_state, split_params)
        merged = jax.tree.map(_merge, new_updates, is_leaf=lambda x: isinstance(x, SplitRealAndImaginaryArrays))
        return merged, SplitRealAndImaginaryState(inner_state)

    return GradientTransformation(init, update)
