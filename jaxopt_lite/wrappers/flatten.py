"""Running a transformation on one flat buffer instead of many leaves."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    pytree_factory,
    with_extra_args_support,
)

# ----------------------------------------------------------------------------
# Flattening.
# ----------------------------------------------------------------------------


def _ravel(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([0])
    dtype = jnp.result_type(*leaves)
    return jnp.concatenate([jnp.ravel(jnp.asarray(x, dtype)) for x in leaves])


def _unravel(like: Any, flat: jax.Array) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    sizes = [int(np.size(x)) for x in leaves]
    offsets = np.cumsum(sizes)[:-1].tolist()
    parts = jnp.split(flat, offsets) if leaves else []
    return treedef.unflatten(
        [jnp.reshape(p, np.shape(x)).astype(jnp.result_type(x)) for p, x in zip(parts, leaves)]
    )


@pytree_factory
def flatten(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on one flat vector holding all leaves instead of on the tree.

    ``init`` and ``update`` ravel every leaf and concatenate them (in the
    promoted dtype of the leaves) into one 1-D buffer, run ``inner`` on it and
    split the result back into the tree, each leaf in its own dtype and shape.
    Many small leaves then cost one kernel instead of many. The state is
    ``inner``'s state for a single flat parameter (no wrapper state).
    """
    inner = with_extra_args_support(inner)

    def init(params):
        return inner.init(_ravel(params))

    def update(updates, state, params=None, **extra_args):
        if params is not None:
            _tree.check_same_structure(updates, params, "updates", "params")
            params = _ravel(params)
        flat_updates, state = inner.update(_ravel(updates), state, params, **extra_args)
        return _unravel(updates, flat_updates), state

    return GradientTransformationExtraArgs(init, update)
