"""NovoGrad (Ginsburg et al., 2019): Adam-like steps with one second moment per layer (per leaf).

Reference: B. Ginsburg, P. Castonguay, O. Hrinchuk, O. Kuchaiev, V. Lavrukhin, R. Leary, J. Li, H. Nguyen,
Y. Zhang, J. M. Cohen, "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep
Networks", arXiv:1905.11286, 2019 (Algorithm 1); used for Jasper (Li et al., 2019).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks, numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
)
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.transforms.scaling import scale_by_learning_rate


class ScaleByNovogradState(NamedTuple):
    """Step count, the first moment (one number per parameter) and the second moment (one scalar per leaf)."""

    count: jax.Array
    mu: Any
    nu: Any


def _weight_decay_is_zero(weight_decay: Any) -> bool:
    value = _checks.concrete(weight_decay)
    return value is not None and not callable(weight_decay) and bool(np.all(value == 0))


def _check_novograd(owner: str, b1: Any, b2: Any, eps: Any, eps_root: Any, weight_decay: Any) -> None:
    _checks.check_decay(owner, "b1", b1)
    _checks.check_decay(owner, "b2", b2)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_nonnegative(owner, "eps_root", eps_root)
    if not callable(weight_decay):
        _checks.check_nonnegative(owner, "weight_decay", weight_decay)


@pytree_factory
def scale_by_novograd(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.25,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    weight_decay: float | jax.Array = 0.0,
    mu_dtype: Any = None,
) -> GradientTransformation:
    r"""NovoGrad (Ginsburg et al., 2019, Algorithm 1): layer-wise second moments, per-parameter first moments.

    For each leaf (layer) ``l`` with gradient ``g`` and parameters ``w``:

    - ``v <- ||g||^2`` at the first step, then ``v <- b2 v + (1 - b2) ||g||^2`` (one scalar per leaf);
    - ``m <- b1 m + (g / (sqrt(v + eps_root) + eps) + weight_decay w)``, ``m`` starting at 0 (so the first
      step is ``m = g / (sqrt(v) + eps) + weight_decay w``);
    - the output is ``m``.

    As the paper (and Optax), ``m`` has no ``(1 - b1)`` factor and there is no bias correction: the first
    step starts ``v`` at ``||g||^2`` instead; the weight decay is added *inside* the momentum, after the
    normalisation (the paper's decoupled-from-``v`` form). ``weight_decay`` may also be a schedule of the
    step count (called with the number of earlier updates; Optax takes numbers only). ``params`` must be
    passed to ``update`` unless ``weight_decay`` is a concrete 0. Complex leaves use ``||g||^2 = sum |g|^2``.
    With ``eps = eps_root = 0`` a leaf whose gradients were all 0 gets a 0 step (Optax's is ``nan``).
    Memory: one number per parameter plus one scalar per leaf. ``mu_dtype`` stores ``m`` in another dtype;
    the output (``m`` as stored) keeps the gradients' dtype (Optax returns it in ``mu_dtype``). Low precision:
    for float16 or bfloat16 leaves ``v``, the step and ``m`` are computed in float32 (``eps`` would round to 0
    in float16) and rounded once, to the state's dtypes; float32 and float64 use their own dtype.
    Defaults: ``b1=0.9, b2=0.25, eps=1e-8, eps_root=0, weight_decay=0`` (the alias :func:`novograd` has
    ``eps=1e-6``, as Optax).
    """
    owner = "scale_by_novograd"
    _check_novograd(owner, b1, b2, eps, eps_root, weight_decay)
    no_decay = _weight_decay_is_zero(weight_decay)

    def init(params):
        reject_fused(owner, params)  # one second moment per leaf: a fused buffer is not a layer
        _tree.check_floating(params, owner)
        return ScaleByNovogradState(
            count=_tree.zero_count(),
            mu=_tree.accumulator_zeros(params, mu_dtype),
            # One scalar per array, on the array's devices (replicated over its mesh, as the update's
            # ``jnp.sum`` makes it), not on one device: zeros like the array's sum.
            nu=jax.tree.map(lambda p: _tree.zeros_like(jnp.sum(p), jnp.result_type(p)), params),
        )

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        if params is None and not no_decay:
            raise ValueError(f"{owner}: params must be passed to update (for the weight decay)")
        if params is not None:
            _tree.check_same_structure(updates, params, "updates", "params")
        count = _tree.safe_increment(state.count)
        first = count == 1
        wd = weight_decay(state.count) if callable(weight_decay) else weight_decay

        def leaf(g, p, m, v):
            wide_g = numerics.widen(g)  # eps = 1e-8 would be 0 in float16
            sq = jnp.sum(numerics.abs_sq(wide_g))
            new_v = jnp.where(first, sq, b2 * numerics.widen(v) + (1.0 - b2) * sq)
            step = numerics.safe_div(wide_g, numerics.safe_sqrt(jnp.real(new_v) + eps_root) + eps)  # 0 if all g were 0
            if p is not None:
                step = step + wd * numerics.widen(p)
            new_m = (b1 * numerics.widen(m) + step).astype(m.dtype)
            return new_m.astype(g.dtype), new_m, new_v.astype(v.dtype)

        treedef = jax.tree.structure(updates)
        p_leaves = [None] * treedef.num_leaves if params is None else treedef.flatten_up_to(params)
        mu_leaves, nu_leaves = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        flat = [leaf(*x) for x in zip(jax.tree.leaves(updates), p_leaves, mu_leaves, nu_leaves)]
        out, mu, nu = _tree.unzip_leaves(treedef, flat, 3)
        return out, ScaleByNovogradState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


@alias
def novograd(
    learning_rate: ScalarOrSchedule,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.25,
    eps: float | jax.Array = 1e-6,
    eps_root: float | jax.Array = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
) -> GradientTransformationExtraArgs:
    """NovoGrad: ``p <- p - learning_rate * m`` with ``m`` from :func:`scale_by_novograd`.

    Defaults as Optax: ``b1=0.9, b2=0.25, eps=1e-6, eps_root=0, weight_decay=0``.
    """
    _check_novograd("novograd", b1, b2, eps, eps_root, weight_decay)
    return chain(
        scale_by_novograd(b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay),
        scale_by_learning_rate(learning_rate),
    )
