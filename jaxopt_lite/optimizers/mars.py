"""MARS (Yuan et al., 2024): variance-reduced gradients (scaled STORM) fed to an Adam-like optimizer.

:func:`scale_by_mars` turns each gradient into the corrected, clipped gradient
``c~_t``; it composes with any optimizer chained after it. :func:`mars_adamw`
is the paper's MARS-AdamW (Algorithm 2): ``scale_by_mars`` followed by Adam's
bias-corrected moments of ``c~_t``, decoupled weight decay and the learning rate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformationExtraArgs, ScalarOrSchedule, alias, chain, pytree_factory
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.transforms.adaptive import scale_by_adam
from jaxopt_lite.transforms.clipping import clip_by_global_norm, clip_by_norm
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array

_CLIP_SCOPES = ("per_leaf", "global")
_PREVIOUS_GRAD_INITS = ("current", "zeros")


class ScaleByMarsState(NamedTuple):
    """The step count and the gradient received at the previous step (``g_{t-1}`` of MARS-approx)."""

    count: jax.Array
    previous_grad: Any


def _clip_to_norm(tree: Any, max_norm: Any, per_leaf: bool) -> Any:
    """``c * max_norm / ||c||`` where ``||c|| > max_norm``, else ``c``: each leaf's own norm, or the tree's
    (:func:`~jaxopt_lite.clip_by_norm`, :func:`~jaxopt_lite.clip_by_global_norm`: real, overflow-safe norms)."""
    clip = clip_by_norm(max_norm) if per_leaf else clip_by_global_norm(max_norm)
    return clip.update(tree, clip.init(tree))[0]


@pytree_factory
def scale_by_mars(
    b1: Scalar = 0.95,
    gamma: Scalar = 0.025,
    max_norm: Scalar | None = 1.0,
    *,
    clip_scope: str = "per_leaf",
    previous_grad_init: str = "current",
) -> GradientTransformationExtraArgs:
    r"""MARS's variance-reduced gradient (Yuan et al., 2024, "MARS: Unleashing the Power of
    Variance Reduction for Training Large Models", arXiv:2411.10438, Algorithms 1 and 2, lines 4-5).

    With ``g_t`` the incoming update and ``g_{t-1}`` the previous gradient:

    - ``c_t = g_t + gamma * (b1 / (1 - b1)) * (g_t - g_{t-1})``,
    - ``c~_t = c_t * max_norm / ||c_t||`` if ``||c_t|| > max_norm``, else ``c~_t = c_t``
      (the paper's ``max_norm = 1``: ``c~_t = c_t / ||c_t||_2``),

    and the output is ``c~_t``, to chain before an Adam-like transform (:func:`mars_adamw`
    chains :func:`~jaxopt_lite.scale_by_adam` with the same ``b1``). ``b1`` only sets the
    weight of the correction here; it should be the momentum ``b1`` of what follows.

    **Which previous gradient.** The paper's ``g_{t-1}`` is ``grad f(x_{t-1}, xi_t)``: the
    gradient at the previous parameters *on the current batch* (exact MARS, two gradient
    evaluations per step). Pass it to ``update`` as the keyword ``previous_params_grad=`` (a
    tree shaped like the updates, on the same footing: if a transform before this one rescales
    the gradients, rescale it alike; under ``partition``/``masked`` set
    ``mask_compatible_extra_args=True``). Without it, the gradient this transform received at
    the previous step, ``grad f(x_{t-1}, xi_{t-1})``, is used (MARS-approx, the paper's and the
    authors' default). The received gradient is stored either way, so the two forms can be mixed.

    **First step.** The paper sets ``x_1 = x_0``, so its correction vanishes at ``t = 1``:
    ``c_1 = g_1`` (then clipped). ``previous_grad_init="current"`` (default) does this in the
    approximate form (``g_0 = g_1``); ``"zeros"`` starts from ``g_0 = 0`` as the authors' code
    (AGI-Arena/MARS) and ``pytorch_optimizer.MARS`` do, so ``c_1 = (1 + gamma b1 / (1 - b1)) g_1``
    before clipping. (timm's ``Mars`` uses ``c_1 = g_1`` without clipping it.) In the exact form
    the given ``previous_params_grad`` is used at every step: at ``t = 1`` it is the current
    gradient (``x_0 = x_1``).

    **Norm.** Algorithm 2 writes ``||c_t||_2`` of the whole parameter vector, but the authors'
    code (and ``pytorch_optimizer``, timm) clip each parameter tensor by its own Frobenius norm
    (``torch.norm(c_t)`` per parameter): ``clip_scope="per_leaf"`` (default) does that;
    ``"global"`` uses the norm of the whole tree. ``max_norm=None`` turns clipping off.
    Norms of complex leaves are real (``sum |c|^2``). Per-leaf clipping refuses the fused
    layout (a fused buffer is not a parameter tensor); global or no clipping works on it.

    Every float hyperparameter may be traced (``jit``/``vmap``/``grad``); the string options
    and whether ``max_norm`` is ``None`` are static.
    Memory: one buffer per parameter (the previous gradient) and a step count.
    Defaults (the authors' code's and the paper's clip): ``b1=0.95, gamma=0.025, max_norm=1``.
    """
    owner = "scale_by_mars"
    if clip_scope not in _CLIP_SCOPES:
        raise ValueError(f"{owner}: clip_scope must be 'per_leaf' (the authors' code) or 'global', "
                         f"got {clip_scope!r}")
    if previous_grad_init not in _PREVIOUS_GRAD_INITS:
        raise ValueError(f"{owner}: previous_grad_init must be 'current' (the paper: c_1 = g_1) or 'zeros' "
                         f"(the authors' code: g_0 = 0), got {previous_grad_init!r}")
    _checks.check_decay(owner, "b1", b1)
    _checks.check_nonnegative(owner, "gamma", gamma)
    if max_norm is not None:
        _checks.check_positive(owner, "max_norm", max_norm)
    per_leaf = max_norm is not None and clip_scope == "per_leaf"

    def init(params):
        _tree.check_floating(params, owner)
        if per_leaf:
            reject_fused(owner, params)  # each parameter tensor's own norm: a fused buffer is many tensors
        return ScaleByMarsState(count=_tree.zero_count(), previous_grad=_tree.accumulator_zeros(params))

    def update(updates, state, params=None, *, previous_params_grad=None, **extra_args):
        del params, extra_args
        _tree.check_same_shapes(updates, state.previous_grad, "updates", f"{owner} state")
        if per_leaf:
            reject_fused(owner, updates)
        if previous_params_grad is None:
            previous = state.previous_grad
            if previous_grad_init == "current":
                first = state.count == 0
                previous = jax.tree.map(lambda g, p: jnp.where(first, g.astype(p.dtype), p), updates, previous)
        else:
            _tree.check_same_shapes(updates, previous_params_grad, "updates", "previous_params_grad")
            previous = previous_params_grad
        weight = gamma * (b1 / (1.0 - b1))
        corrected = jax.tree.map(lambda g, p: (g + weight * (g - p)).astype(g.dtype), updates, previous)
        if max_norm is not None:
            corrected = _clip_to_norm(corrected, max_norm, per_leaf)
        stored = jax.tree.map(lambda g, p: g.astype(p.dtype), updates, state.previous_grad)
        return corrected, ScaleByMarsState(count=_tree.safe_increment(state.count), previous_grad=stored)

    return GradientTransformationExtraArgs(init, update)


@alias
def mars_adamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.95,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    gamma: Scalar = 0.025,
    max_norm: Scalar | None = 1.0,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    mask: Any = None,
    *,
    clip_scope: str = "per_leaf",
    previous_grad_init: str = "current",
) -> GradientTransformationExtraArgs:
    r"""MARS-AdamW (Yuan et al., 2024, Algorithm 2): AdamW on MARS's corrected gradients.

    With ``c~_t`` from :func:`scale_by_mars` (both moments take the *clipped* ``c~_t``)::

        m_t = b1 m_{t-1} + (1 - b1) c~_t,        v_t = b2 v_{t-1} + (1 - b2) c~_t^2
        m^_t = m_t / (1 - b1^t),                 v^_t = v_t / (1 - b2^t)
        x_{t+1} = x_t - learning_rate * (m^_t / (sqrt(v^_t + eps_root) + eps) + weight_decay * x_t)

    ``eps`` outside the root of the debiased ``v`` as the paper and the authors' code
    (``pytorch_optimizer.MARS`` instead divides ``sqrt(v + 1e-15) + eps`` by ``sqrt(1 - b2^t)``:
    its ``eps`` acts as ``eps / sqrt(1 - b2^t)``). The decay is decoupled and scaled by the
    learning rate, as in the paper and the authors' code. Pass ``previous_params_grad=`` to
    ``update`` for exact MARS (see :func:`scale_by_mars`, also for ``max_norm``,
    ``clip_scope`` and ``previous_grad_init``; ``previous_grad_init="zeros"`` is the
    authors' code's first step).

    MARS applies to every leaf here, as Algorithm 2. The authors' code (and
    ``pytorch_optimizer``) by default (``optimize_1d=False``) run plain AdamW on the leaves
    that are not matrices (``lr_1d=3e-3``, ``betas_1d=(0.9, 0.95)``, ``weight_decay_1d=0.1``);
    reproduce that with ``partition({"mars": mars_adamw(...), "adamw": adamw(3e-3, 0.9, 0.95,
    weight_decay=0.1)}, labels)`` (their ``lr_1d`` follows ``lr``'s schedule as ``lr * lr_1d / lr0``:
    give ``adamw`` the schedule scaled alike). Their code takes exactly 2-D tensors as
    matrices; ``pytorch_optimizer`` takes ``ndim >= 2``.

    Defaults (the authors' code's): ``b1=0.95, b2=0.99, eps=1e-8, weight_decay=0, gamma=0.025,
    max_norm=1`` (their GPT-2 configs keep ``b1``, ``b2``, ``gamma`` and set ``weight_decay=1e-2``).
    Memory: three buffers per parameter (the previous gradient, ``m`` and ``v``).
    """
    return chain(
        scale_by_mars(b1, gamma, max_norm, clip_scope=clip_scope, previous_grad_init=previous_grad_init),
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
