"""jaxopt_lite: composable, purely functional gradient transformations for JAX."""

from jaxopt_lite import tree
from jaxopt_lite.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Schedule,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    chain,
    identity,
    incremental_update,
    named_chain,
    periodic_update,
    set_to_zero,
    stateless,
    stateless_with_tree_map,
    with_extra_args_support,
)

__version__ = "0.1.0"
