"""Loss functions, as in ``optax.losses``: per-example losses (no averaging unless stated), numerically stable.

Families: classification (cross entropies, focal, poly, margin losses, label
smoothing), divergences (KL), regression, ranking, segmentation (Dice),
self-supervised (NT-Xent, triplet), Fenchel-Young (sparsemax), CTC.
"""

from jaxopt_lite.losses._classification import (
    hinge_loss,
    multiclass_hinge_loss,
    multiclass_perceptron_loss,
    perceptron_loss,
    poly_loss_cross_entropy,
    safe_softmax_cross_entropy,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    smooth_labels,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    sparsemax_loss,
)
from jaxopt_lite.losses._ctc import ctc_loss, ctc_loss_with_forward_probs
from jaxopt_lite.losses._divergences import (
    convex_kl_divergence,
    generalized_kl_divergence,
    kl_divergence,
    kl_divergence_with_log_targets,
)
from jaxopt_lite.losses._fenchel_young import make_fenchel_young_loss, multiclass_sparsemax_loss
from jaxopt_lite.losses._ranking import ranking_softmax_loss
from jaxopt_lite.losses._regression import cosine_distance, cosine_similarity, huber_loss, l2_loss, log_cosh, squared_error
from jaxopt_lite.losses._segmentation import binary_dice_loss, dice_loss, multiclass_generalized_dice_loss
from jaxopt_lite.losses._self_supervised import ntxent, triplet_margin_loss
