"""Optimizers that are more than a chain of elementwise transforms: one module per algorithm."""

# adopt, ademamix, muon, sam, galore
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
from jaxopt_lite.optimizers.shampoo import ShampooState, scale_by_shampoo, shampoo
from jaxopt_lite.optimizers.soap import SoapState, scale_by_soap, soap
from jaxopt_lite.optimizers.kron import KronState, kron, scale_by_kron
from jaxopt_lite.optimizers.sam import NormalizeState, SAMState, normalize, sam

# L-BFGS
from jaxopt_lite.optimizers.lbfgs import ScaleByLBFGSState, lbfgs, scale_by_lbfgs

# Optax top-level optimizers
from jaxopt_lite.optimizers.adan import ScaleByAdanState, adan, scale_by_adan
from jaxopt_lite.optimizers.rprop import ScaleByRpropState, rprop, scale_by_rprop
from jaxopt_lite.optimizers.yogi import scale_by_yogi, yogi
# parameter-free and contrib optimizers: schedule-free, prodigy, d-adapt, dog, mechanic, cocob, ...
from jaxopt_lite.optimizers.acprop import acprop, scale_by_acprop
from jaxopt_lite.optimizers.cocob import COCOBState, cocob, scale_by_cocob
from jaxopt_lite.optimizers.dadapt_adamw import DAdaptAdamWState, dadapt_adamw
from jaxopt_lite.optimizers.dog import (
    DoGState,
    DoWGState,
    ScaleByDistanceOverGradientsState,
    dog,
    dowg,
    scale_by_distance_over_gradients,
    scale_by_dog,
    scale_by_dowg,
)
from jaxopt_lite.optimizers.madgrad import MadgradState, madgrad, scale_by_madgrad
from jaxopt_lite.optimizers.mechanic import MechanicState, mechanize
from jaxopt_lite.optimizers.momo import MomoAdamState, MomoState, momo, momo_adam
from jaxopt_lite.optimizers.prodigy import ProdigyState, prodigy
from jaxopt_lite.optimizers.schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
