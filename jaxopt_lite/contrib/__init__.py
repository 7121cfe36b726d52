"""Optax's ``contrib`` names, re-exported from where they live (imports only)."""

from jaxopt_lite.optimizers.ademamix import (
    ScaleByAdemamixState,
    ScaleBySimplifiedAdEMAMixState,
    ademamix,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
    simplified_ademamix,
)
from jaxopt_lite.optimizers.adopt import adopt, scale_by_adopt
from jaxopt_lite.optimizers.galore import GaLoreDimensionNumbers, GaLoreState, galore, scale_by_galore
from jaxopt_lite.optimizers.muon import MuonDimensionNumbers, MuonState, muon, scale_by_muon
from jaxopt_lite.optimizers.sam import NormalizeState, SAMState, normalize, sam
from jaxopt_lite.optimizers.acprop import acprop, scale_by_acprop
from jaxopt_lite.optimizers.cocob import COCOBState, cocob, scale_by_cocob
from jaxopt_lite.optimizers.dadapt_adamw import DAdaptAdamWState, dadapt_adamw
from jaxopt_lite.optimizers.dog import (
    DoGState,
    DoWGState,
    dog,
    dowg,
    scale_by_distance_over_gradients,
)
from jaxopt_lite.optimizers.madgrad import MadgradState, madgrad, scale_by_madgrad
from jaxopt_lite.optimizers.mechanic import MechanicState, mechanize
from jaxopt_lite.optimizers.momo import MomoAdamState, MomoState, momo, momo_adam
from jaxopt_lite.optimizers.prodigy import ProdigyState, prodigy
from jaxopt_lite.optimizers.sophia import (
    GaussNewtonBartlettState,
    HutchinsonState,
    SophiaState,
    gauss_newton_bartlett_estimator_diag_hessian,
    hutchinson_estimator_diag_hessian,
    sophia,
)
from jaxopt_lite.optimizers.schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from jaxopt_lite.transforms.complex_valued import SplitRealAndImaginaryState, split_real_and_imaginary
from jaxopt_lite.transforms.privacy import DifferentiallyPrivateAggregateState, differentially_private_aggregate, dpsgd
from jaxopt_lite.training import ReduceLROnPlateauState, reduce_on_plateau
