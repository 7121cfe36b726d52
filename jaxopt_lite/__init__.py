"""jaxopt_lite: composable, purely functional gradient transformations for JAX.

An optimizer is a :class:`GradientTransformation` ``(init, update)``; build
one by chaining transforms, or take a ready alias::

    import jaxopt_lite as jol
    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = jol.apply_updates(params, updates)
"""

from jaxopt_lite import kernels, schedules, sharding, sweeps, tree
from jaxopt_lite.aliases import (
    adabelief,
    lamb,
    lars,
    adadelta,
    adagrad,
    adam,
    adamax,
    adamaxw,
    adamw,
    amsgrad,
    lion,
    nadam,
    nadamw,
    noisy_sgd,
    radam,
    rmsprop,
    sgd,
    sign_sgd,
)
from jaxopt_lite.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
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
from jaxopt_lite.transforms.adaptive import (
    ScaleByAdaDeltaState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByLionState,
    ScaleByNadamState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_lion,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from jaxopt_lite.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_global_norm,
    clip_by_norm,
    unitwise_norm,
)
from jaxopt_lite.transforms.layerwise import ScaleByTrustRatioState, scale_by_trust_ratio
from jaxopt_lite.transforms.momentum import EmaState, TraceState, ema, trace
from jaxopt_lite.transforms.regularization import (
    AddDecayedWeightsScheduleState,
    AddNoiseState,
    ZeroNansState,
    add_decayed_weights,
    add_noise,
    keep_params_nonnegative,
    zero_nans,
)
from jaxopt_lite.transforms.scaling import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_by_sign,
)

from jaxopt_lite.fused import Fused, Layout, fuse, is_fused, unfuse
from jaxopt_lite.schedules import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    inverse_time_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    natural_exp_decay,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_stable_decay_schedule,
)
from jaxopt_lite.training import (
    EarlyStopping,
    EarlyStoppingState,
    ReduceLROnPlateauState,
    early_stopping,
    reduce_on_plateau,
)
from jaxopt_lite.wrappers import (
    ApplyEvery,
    ApplyIfFiniteState,
    InjectHyperparamsState,
    LookaheadParams,
    LookaheadState,
    MaskedNode,
    MaskedState,
    MultiSteps,
    MultiStepsState,
    MultiTransformState,
    ParamsEMA,
    ParamsEMAState,
    PartitionState,
    ShouldSkipUpdateFunction,
    SWA,
    SWAState,
    apply_every,
    apply_if_finite,
    flatten,
    freeze,
    inject_hyperparams,
    lookahead,
    masked,
    multi_transform,
    params_ema,
    partition,
    selective_transform,
    set_hyperparams,
    skip_large_updates,
    skip_not_finite,
    swa,
)

from jaxopt_lite import contrib

# modern optimizers also at the top level; Optax has them in contrib
from jaxopt_lite.optimizers.ademamix import ademamix
from jaxopt_lite.optimizers.adopt import adopt
from jaxopt_lite.optimizers.muon import muon, scale_by_muon
from jaxopt_lite.optimizers.shampoo import ShampooState, scale_by_shampoo, shampoo
from jaxopt_lite.optimizers.soap import SoapState, scale_by_soap, soap
from jaxopt_lite.optimizers.kron import KronState, kron, scale_by_kron
# CAME and Adam-mini (not in Optax)
from jaxopt_lite.optimizers.came import CameState, came, scale_by_came
from jaxopt_lite.optimizers.adam_mini import (
    AdamMiniPartition,
    AdamMiniState,
    adam_mini,
    adam_mini_partition,
    adam_mini_row_blocks,
    scale_by_adam_mini,
)

# utility namespaces and small transforms
from jaxopt_lite import assignment, microbatching, projections, tree_utils
from jaxopt_lite.microbatching import microbatch
from jaxopt_lite.tree import map_params as tree_map_params
from jaxopt_lite.transforms.block_scaling import (
    centralize,
    clip_by_block_rms,
    normalize_by_update_norm,
    scale_by_param_block_norm,
    scale_by_param_block_rms,
)
from jaxopt_lite.transforms.conditionality import (
    ConditionallyMaskState,
    ConditionallyTransformState,
    conditionally_mask,
    conditionally_transform,
)
from jaxopt_lite.transforms.monitoring import MonitorState, SnapshotState, measure_with_ema, monitor, snapshot
from jaxopt_lite.transforms.per_example_clipping import per_example_global_norm_clip, per_example_layer_norm_clip
from jaxopt_lite.utils import MultiNormalDiagFromLogScale, multi_normal, scale_gradient

# L-BFGS and line searches
from jaxopt_lite.linesearch import (
    ScaleByBacktrackingLinesearchState,
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_backtracking_linesearch,
    scale_by_zoom_linesearch,
    value_and_grad_from_state,
)
from jaxopt_lite.optimizers.lbfgs import ScaleByLBFGSState, lbfgs, scale_by_lbfgs

# Optax top-level optimizers
from jaxopt_lite.optimizers.adan import ScaleByAdanState, adan, scale_by_adan
from jaxopt_lite.optimizers.rprop import ScaleByRpropState, rprop, scale_by_rprop
from jaxopt_lite.optimizers.yogi import scale_by_yogi, yogi
from jaxopt_lite.optimizers.adafactor import FactoredState, adafactor, scale_by_factored_rms
from jaxopt_lite.optimizers.sm3 import ScaleBySM3State, scale_by_sm3, sm3
from jaxopt_lite.optimizers.fromage import fromage
from jaxopt_lite.optimizers.novograd import ScaleByNovogradState, novograd, scale_by_novograd
from jaxopt_lite.optimizers.optimistic import (
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    scale_by_optimistic_gradient,
)
from jaxopt_lite.optimizers.polyak import polyak_sgd, scale_by_polyak
from jaxopt_lite.optimizers.signum import signum
from jaxopt_lite.optimizers.mars import ScaleByMarsState, mars_adamw, scale_by_mars
from jaxopt_lite.wrappers.cautious import cautious, cautious_adamw, cautious_lion
from jaxopt_lite.transforms.low_precision import (
    KahanSummationState,
    StochasticRoundingState,
    apply_updates_stochastic,
    kahan_summation,
    round_stochastic,
    stochastic_rounding,
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

# linear algebra (Shampoo's inverse root, the power method, non-negative least squares), perturbations
from jaxopt_lite import perturbations
from jaxopt_lite.linear_algebra import matrix_inverse_pth_root, nnls, power_iteration
# parameter-free: Optax has LDoG at the top level
from jaxopt_lite.optimizers.dog import scale_by_distance_over_gradients

# losses: the namespace, and the names Optax also has at its top level
from jaxopt_lite import losses
from jaxopt_lite.losses import (
    convex_kl_divergence,
    cosine_distance,
    cosine_similarity,
    ctc_loss,
    ctc_loss_with_forward_probs,
    generalized_kl_divergence,
    hinge_loss,
    huber_loss,
    kl_divergence,
    l2_loss,
    log_cosh,
    ntxent,
    safe_softmax_cross_entropy,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    smooth_labels,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    squared_error,
)

# Optax compatibility names and numerics
from jaxopt_lite import numerics
from jaxopt_lite.base import (
    StatefulSchedule,
    TransformInitFn,
    TransformUpdateExtraArgsFn,
    TransformUpdateFn,
    init_empty_state,
)
from jaxopt_lite.numerics import safe_increment, safe_int32_increment, safe_norm, safe_root_mean_squares
from jaxopt_lite.transforms.adaptive import ScaleByBeliefState
from jaxopt_lite.transforms.clipping import AdaptiveGradClipState, ClipByGlobalNormState, ClipState
from jaxopt_lite.transforms.regularization import AddDecayedWeightsState, NonNegativeParamsState
from jaxopt_lite.transforms.scaling import ScaleState
from jaxopt_lite.tree import bias_correction, update_infinity_moment, update_moment, update_moment_per_elem_norm
from jaxopt_lite.wrappers.hyperparams import (
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    inject_stateful_hyperparams,
)
from jaxopt_lite.wrappers.masking import MaskOrFn

global_norm = tree.global_norm

__version__ = "0.1.0"
