"""Ready-made optimizers. Each is a :func:`~jaxopt_lite.chain` of transforms.

Names, arguments and defaults follow Optax, so ``import jaxopt_lite as optax``
works for these. The update rules live in :mod:`jaxopt_lite.transforms`; this
module only composes them. ``learning_rate`` is always a number, an array
(possibly traced: vmap over it for a sweep) or a schedule of the step count.
"""

from typing import Any

import jax

from jaxopt_lite import _checks
from jaxopt_lite.base import GradientTransformationExtraArgs, ScalarOrSchedule, alias, chain, identity
from jaxopt_lite.transforms.adaptive import (
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
from jaxopt_lite.transforms.layerwise import scale_by_trust_ratio
from jaxopt_lite.transforms.momentum import trace
from jaxopt_lite.transforms.regularization import add_decayed_weights, add_noise
from jaxopt_lite.transforms.scaling import scale_by_learning_rate, scale_by_sign

Scalar = float | jax.Array


def _momentum(
    momentum: Scalar | None, nesterov: bool, accumulator_dtype: Any = None, dampening: Scalar = 0.0, *, owner: str = "sgd"
):
    if momentum is None:
        return identity()
    _checks.check_decay(owner, "momentum", momentum)  # named as the alias's argument, not trace's "decay"
    return trace(momentum, nesterov, accumulator_dtype, dampening=dampening)


@alias
def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    dampening: Scalar = 0.0,
) -> GradientTransformationExtraArgs:
    """Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum.

    ``p <- p - lr * g``; with momentum ``t <- momentum * t + (1 - dampening) * g``
    and ``p <- p - lr * t`` (Nesterov: ``p <- p - lr * (g + momentum * t)``).
    ``dampening=momentum`` is the averaged momentum of the seed articles.
    Full-batch, mini-batch and stochastic gradient descent differ only in the
    gradient passed in. ``momentum=None`` keeps no state.
    """
    return chain(_momentum(momentum, nesterov, accumulator_dtype, dampening), scale_by_learning_rate(learning_rate))


@alias
def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: Scalar = 0.01,
    gamma: Scalar = 0.55,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformationExtraArgs:
    """SGD on gradients with annealed Gaussian noise (Neelakantan et al., 2015).

    ``p <- p - lr * (g + N(0, eta / (1 + t)^gamma))``. See :func:`add_noise`.
    """
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))


@alias
def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformationExtraArgs:
    """signSGD (Bernstein et al., 2018): ``p <- p - lr * sign(g)``."""
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


@alias
def adagrad(
    learning_rate: ScalarOrSchedule, initial_accumulator_value: Scalar = 0.1, eps: Scalar = 1e-7
) -> GradientTransformationExtraArgs:
    """AdaGrad (Duchi et al., 2011): ``s <- s + g^2``, ``p <- p - lr * g / sqrt(s + eps)``.

    ``s`` starts at ``initial_accumulator_value`` (0.1); ``eps`` is inside the root.
    """
    return chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate))


@alias
def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: Scalar = 0.9,
    eps: Scalar = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
) -> GradientTransformationExtraArgs:
    """AdaDelta (Zeiler, 2012). ``learning_rate=None`` means 1, the paper's method.

    The update ``dx`` of :func:`scale_by_adadelta` is applied as ``p <- p - lr * dx``;
    ``weight_decay`` adds ``weight_decay * p`` to the gradient first.
    """
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )


@alias
def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> GradientTransformationExtraArgs:
    """RMSProp (Tieleman & Hinton, 2012); centered (Graves, 2013) with ``centered=True``.

    ``v <- decay v + (1-decay) g^2``, ``p <- p - lr * g / sqrt(v + eps)``
    (``eps_in_sqrt=True``, as Optax) or ``g / (sqrt(v) + eps)`` (as PyTorch).
    With ``momentum`` the scaled step feeds a trace (as Optax: the learning
    rate is applied before the momentum).
    """
    scaler = scale_by_stddev if centered else scale_by_rms
    return chain(
        scaler(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
        scale_by_learning_rate(learning_rate),
        _momentum(momentum, nesterov, owner="rmsprop"),
    )


@alias
def adam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """Adam (Kingma & Ba, 2015): ``p <- p - lr * m_hat / (sqrt(v_hat + eps_root) + eps)``.

    See :func:`scale_by_adam` for the moments and the Nesterov variant.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@alias
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ``p <- p - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p)``.
    The decay is scaled by the learning rate (as Optax and PyTorch).
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@alias
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_over: str = "debiased",
) -> GradientTransformationExtraArgs:
    """AMSGrad (Reddi et al., 2018). ``max_over="raw"`` gives the paper's and
    ``torch.optim``'s maximum over the raw second moment; see :func:`scale_by_amsgrad`.
    """
    return chain(
        scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu, max_over=max_over),
        scale_by_learning_rate(learning_rate),
    )


@alias
def adamax(
    learning_rate: ScalarOrSchedule, b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8
) -> GradientTransformationExtraArgs:
    """AdaMax (Kingma & Ba, 2015, sec. 7.1): ``p <- p - lr * m_hat / max(b2 u, |g| + eps)``."""
    return chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))


@alias
def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
) -> GradientTransformationExtraArgs:
    """AdaMax with decoupled weight decay: ``p <- p - lr * (adamax_dir + weight_decay * p)``."""
    return chain(
        scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate)
    )


def _nadam_direction(b1, b2, eps, eps_root, mu_dtype, momentum_decay):
    if momentum_decay is None:
        return scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True)
    return scale_by_nadam(b1, b2, eps, eps_root, momentum_decay, mu_dtype)


@alias
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: Scalar | None = None,
) -> GradientTransformationExtraArgs:
    """NAdam (Dozat, 2016): Adam with Nesterov momentum.

    Two definitions exist. ``momentum_decay=None`` (default) keeps ``b1``
    constant, as Optax: ``m_hat = b1 m / (1-b1^(t+1)) + (1-b1) g / (1-b1^t)``.
    A number (PyTorch's default is 0.004) uses Dozat's momentum schedule
    ``mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay))``, as ``torch.optim.NAdam``;
    see :func:`scale_by_nadam`.
    """
    return chain(
        _nadam_direction(b1, b2, eps, eps_root, mu_dtype, momentum_decay), scale_by_learning_rate(learning_rate)
    )


@alias
def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    momentum_decay: Scalar | None = None,
) -> GradientTransformationExtraArgs:
    """NAdam with decoupled weight decay; ``momentum_decay`` as in :func:`nadam`."""
    return chain(
        _nadam_direction(b1, b2, eps, eps_root, mu_dtype, momentum_decay),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@alias
def radam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    threshold: Scalar = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """Rectified Adam (Liu et al., 2020); see :func:`scale_by_radam`."""
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov), scale_by_learning_rate(learning_rate)
    )


@alias
def lion(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any = None,
) -> GradientTransformationExtraArgs:
    """Lion (Chen et al., 2023): ``p <- p - lr * (sign(b1 m + (1-b1) g) + weight_decay * p)``."""
    return chain(
        scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate)
    )


@alias
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """AdaBelief (Zhuang et al., 2020); see :func:`scale_by_belief`."""
    return chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov), scale_by_learning_rate(learning_rate))


@alias
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> GradientTransformationExtraArgs:
    """LAMB (You et al., 2020): AdamW's direction rescaled per leaf by its trust ratio.

    ``d = adam_dir + weight_decay * p``, ``p <- p - lr * ||p|| / ||d|| * d``.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


@alias
def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: Scalar = 0.001,
    eps: Scalar = 0.0,
    trust_ratio_mask: Any = True,
    momentum: Scalar = 0.9,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """LARS (You et al., 2017): momentum SGD on ``g + wd p`` rescaled per leaf by
    ``trust_coefficient * ||p|| / (||g + wd p|| + eps)``.

    The masks (pytrees of bools or functions of params; ``True`` means every
    leaf) choose which leaves get weight decay and the trust ratio.
    """
    from jaxopt_lite.wrappers import masked  # wrappers build on the transforms

    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask),
        scale_by_learning_rate(learning_rate),
        _momentum(momentum, nesterov, owner="lars"),
    )
