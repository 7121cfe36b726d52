"""Wrappers: transformations built around other transformations.

Every wrapper takes one or more gradient transformations and returns a new one
(or, for :class:`MultiSteps` and :func:`params_ema`, a small object with pure
``init``/``update`` methods). All of them are pure functions of their inputs:
the state is an immutable pytree, ``jax.eval_shape(tx.init, params)`` works,
and ``update`` can be jitted, vmapped and differentiated like any other JAX
function.

Masks and labels
----------------
:func:`masked`, :func:`partition`, :func:`freeze` and :func:`selective_transform`
take a *static* description of which parameters they act on: a pytree with the
structure of the parameters (or a prefix of it: one leaf of the mask then
covers a whole subtree of parameters), or a callable that builds that tree from
the parameters. Its leaves must be concrete Python values, never traced arrays:
they decide the structure of the state.
"""

from jaxopt_lite.wrappers.accumulation import (
    ApplyEvery,
    ApplyIfFiniteState,
    MultiSteps,
    MultiStepsState,
    ShouldSkipUpdateFunction,
    apply_every,
    apply_if_finite,
    skip_large_updates,
    skip_not_finite,
)
from jaxopt_lite.wrappers.averaging import (
    LookaheadParams,
    LookaheadState,
    ParamsEMA,
    ParamsEMAState,
    SWA,
    SWAState,
    lookahead,
    params_ema,
    swa,
)
from jaxopt_lite.wrappers.flatten import (
    flatten,
)
from jaxopt_lite.wrappers.hyperparams import (
    InjectHyperparamsState,
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    WrappedScheduleState,
    inject_hyperparams,
    inject_stateful_hyperparams,
    set_hyperparams,
)
from jaxopt_lite.wrappers.masking import (
    MaskedNode,
    MaskedState,
    MultiTransformState,
    PartitionState,
    freeze,
    masked,
    multi_transform,
    partition,
    selective_transform,
)
from jaxopt_lite.wrappers.low_precision_state import (
    LowPrecisionState,
    low_precision_state,
)
from jaxopt_lite.wrappers.quantize_state import (
    QuantizedArray,
    QuantizedState,
    dequantize_blockwise,
    dynamic_codebook,
    max_rounding_error,
    quantize_blockwise,
    quantize_state,
)

__all__ = [
    "ApplyEvery",
    "ApplyIfFiniteState",
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "WrappedSchedule",
    "WrappedScheduleState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "LowPrecisionState",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "ParamsEMA",
    "ParamsEMAState",
    "PartitionState",
    "QuantizedArray",
    "QuantizedState",
    "SWA",
    "SWAState",
    "ShouldSkipUpdateFunction",
    "apply_every",
    "apply_if_finite",
    "dequantize_blockwise",
    "dynamic_codebook",
    "flatten",
    "freeze",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "lookahead",
    "low_precision_state",
    "masked",
    "max_rounding_error",
    "multi_transform",
    "params_ema",
    "partition",
    "quantize_blockwise",
    "quantize_state",
    "selective_transform",
    "set_hyperparams",
    "skip_large_updates",
    "skip_not_finite",
    "swa",
]
