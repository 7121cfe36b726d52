"""jaxopt_lite: composable, purely functional gradient transformations for JAX.

An optimizer is a :class:`GradientTransformation` ``(init, update)``; build
one by chaining transforms, or take a ready alias::

    import jaxopt_lite as jol
    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = jol.apply_updates(params, updates)
"""

from jaxopt_lite import kernels, schedules, sweeps, tree
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
)

global_norm = tree.global_norm

__version__ = "0.1.0"
