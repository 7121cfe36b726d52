"""Gradient transformations, one module per family.

- :mod:`~jaxopt_lite.transforms.scaling`: constant and scheduled scaling, sign.
- :mod:`~jaxopt_lite.transforms.clipping`: clipping by value, norm, global norm, AGC.
- :mod:`~jaxopt_lite.transforms.momentum`: heavy-ball / Nesterov traces and EMAs.
- :mod:`~jaxopt_lite.transforms.adaptive`: per-coordinate step sizes (Adam family, RMSProp, AdaGrad, ...).
- :mod:`~jaxopt_lite.transforms.regularization`: weight decay, gradient noise, constraints.
- :mod:`~jaxopt_lite.transforms.low_precision`: stochastic rounding and Kahan summation for bfloat16/float16 parameters.
"""

# optax.transforms names: utility transforms
from jaxopt_lite.transforms.block_scaling import clip_by_block_rms
from jaxopt_lite.transforms.conditionality import (
    ConditionallyMaskState,
    ConditionallyTransformState,
    ConditionFn,
    conditionally_mask,
    conditionally_transform,
)
from jaxopt_lite.transforms.monitoring import MonitorState, SnapshotState, measure_with_ema, monitor, snapshot
from jaxopt_lite.transforms.per_example_clipping import per_example_global_norm_clip, per_example_layer_norm_clip

# optax.transforms names: the core transforms and wrappers; imports only
from jaxopt_lite.base import chain, named_chain
from jaxopt_lite.transforms.clipping import adaptive_grad_clip, clip, clip_by_global_norm, unitwise_clip, unitwise_norm
from jaxopt_lite.transforms.momentum import EmaState, TraceState, ema, trace
from jaxopt_lite.transforms.regularization import (
    AddNoiseState,
    NonNegativeParamsState,
    ZeroNansState,
    add_decayed_weights,
    add_noise,
    keep_params_nonnegative,
    zero_nans,
)
from jaxopt_lite.wrappers import (
    ApplyIfFiniteState,
    MaskedNode,
    MaskedState,
    MultiSteps,
    MultiStepsState,
    PartitionState,
    ShouldSkipUpdateFunction,
    apply_if_finite,
    flatten,
    freeze,
    masked,
    partition,
    selective_transform,
    skip_large_updates,
    skip_not_finite,
)
