"""Cautious optimizers (Liang et al., 2024): keep only the coordinates where the step agrees with the gradient.

Reference: K. Liang, L. Chen, B. Liu, Q. Liu, "Cautious Optimizers: Improving Training with One Line of Code",
arXiv:2411.16085, 2024; the authors' code is https://github.com/kyleliang919/C-Optim (``c_adamw.py``,
``c_lion.py``).

Any optimizer proposes a step; its cautious version zeroes the coordinates whose step points uphill for the
current gradient and scales the rest up so that the step keeps its size on average. :func:`cautious` wraps any
gradient transformation; :func:`cautious_adamw` and :func:`cautious_lion` are the paper's C-AdamW and C-Lion,
whose decoupled weight decay is not masked.

Conventions, and where the published versions differ
----------------------------------------------------
With ``u`` the inner optimizer's direction in the paper's convention (``p <- p - lr u``) and ``g`` the gradient:

- mask: ``phi = 1[u g > 0]``, a strict inequality, as all the authors' code (a coordinate whose gradient or step
  is exactly 0 is dropped). jaxopt_lite's updates are steps, ``p <- p + s`` with ``s = -lr u``, so for a whole
  optimizer the test is ``-s g > 0``. For complex leaves the test is ``Re(conj(g) (-s)) > 0``, the sign of the
  coordinate's first-order change of a real loss when ``g`` is the conjugated JAX gradient, as jaxopt_lite feeds
  complex parameters (see :mod:`jaxopt_lite.transforms.complex_valued`); one complex number is one coordinate.
- rescaling, per parameter leaf (per tensor, as every reference implementation: ``mask.numel()``, ``mask.mean()``
  of one ``p``), chosen by ``normalization``:

  * ``"count"`` (default): ``phi * n / (sum(phi) + eps)`` with ``n`` the leaf's size and ``eps = 1``: the
    paper's algorithm (learning rate ``eps_t d / (nnz(phi_t) + 1)``), the authors' ``c_lion.py`` and their
    first ``c_adamw.py`` (``mask * (mask.numel() / (mask.sum() + 1))``, kept there as a comment), and
    ``pytorch_optimizer``'s ``cautious=True`` (``BaseOptimizer.apply_cautious``, version 4.1.0). ``eps``
    counts coordinates: with every sign in agreement a leaf of ``n`` entries takes ``n / (n + 1)`` of the
    inner step (a scalar, half of it). The one-liner of the paper's latest version, ``phi / (mean(phi) + e)``,
    is ``eps = e n`` for a leaf of ``n`` entries (one ``eps`` for all leaves cannot express it).
  * ``"clamped_mean"``: ``phi / max(mean(phi), eps)`` with ``eps = 1e-3``: the authors' current ``c_adamw.py``
    and timm's ``caution=True``. All signs in agreement leave the inner step unchanged; the scale is at most
    ``1 / eps``.

  ``eps`` is traceable (an array, under ``jit``/``vmap``/``grad``) and may be 0 (a leaf with no agreeing
  coordinate then gets a zero step, never ``0/0``).
- weight decay: the mask applies to the update of the wrapped transformation, whatever it contains. Wrapping a
  whole ``adamw`` masks its decay too (and the decay enters the sign test). The paper's C-AdamW and C-Lion
  mask the Adam or Lion direction only and decay every parameter; for those use :func:`cautious_adamw` /
  :func:`cautious_lion`, or compose the same way:
  ``chain(cautious(scale_by_adam(), negated=False), add_decayed_weights(wd), scale_by_learning_rate(lr))``.
- state: the wrapper keeps none. Its state *is* the inner transformation's state, unchanged (no extra node), so a
  checkpoint of ``adam`` resumes under ``cautious(adam)`` and back, and ``tree.get(state, "mu")`` finds the
  same moments. Memory: none per parameter beyond the inner optimizer's (temporaries only).
- fused trees (:func:`jaxopt_lite.fuse`) are refused: a fused leaf is a whole buffer of many parameters, and a
  per-tensor mean over it would not be the per-tensor mean of any parameter.

Known differences from ``pytorch_optimizer`` 4.1.0 (``Lion``, ``AdEMAMix``, ``ADOPT`` with ``cautious=True``):
none in the default ``"count"`` convention for real parameters. Where it takes complex parameters it views
them as real pairs (``view_as_real``, e.g. ``Lion``, ``ADOPT``): real and imaginary parts are masked separately
and ``n`` counts both, where here one complex entry is one coordinate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_lite import _checks, numerics
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
    with_extra_args_support,
)
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.transforms.adaptive import scale_by_adam, scale_by_lion
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate

Scalar = float | jax.Array

NORMALIZATIONS = {"count": 1.0, "clamped_mean": 1e-3}  # name -> default eps


def _resolve(owner: str, eps: Any, normalization: Any, name: str = "eps") -> Any:
    """The ``eps`` to use (its default for ``normalization`` if ``None``), validated when concrete."""
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(f"{owner}: normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    if eps is None:
        return NORMALIZATIONS[normalization]
    if callable(eps):
        raise TypeError(f"{owner}: {name} must be a number or an array, not a schedule, got {eps!r}")
    _checks.check_nonnegative(owner, name, eps)
    return eps


def _scale_dtype(leaf_dtype: Any) -> Any:
    """The real dtype the count and the scale are computed in: at least float32 (a bfloat16 sum of ones is exact
    only to 256), float64 for float64/complex128 leaves."""
    real = jnp.finfo(leaf_dtype).dtype if jnp.issubdtype(leaf_dtype, jnp.inexact) else jnp.float32
    return jnp.promote_types(real, jnp.float32)


def _cautious_leaf(u: jax.Array, g: jax.Array, eps: Any, normalization: str, negated: bool) -> jax.Array:
    """``u`` masked where it disagrees with ``g`` and rescaled by the kept fraction of this leaf."""
    u = jnp.asarray(u)
    g = jnp.asarray(g)
    if jnp.shape(u) != jnp.shape(g):
        raise ValueError(
            f"cautious: the inner transformation returned an update of shape {jnp.shape(u)} for a gradient of "
            f"shape {jnp.shape(g)}; the mask compares them elementwise"
        )
    agreement = jnp.conj(g) * u if (jnp.iscomplexobj(g) or jnp.iscomplexobj(u)) else g * u
    agreement = jnp.real(agreement)
    keep = agreement < 0 if negated else agreement > 0
    dtype = _scale_dtype(jnp.result_type(u))
    kept = jnp.sum(keep, dtype=dtype)
    size = jnp.asarray(u.size, dtype)
    eps = jnp.asarray(eps, dtype)
    if normalization == "count":
        denominator = kept + eps
        numerator = size
    else:  # "clamped_mean"
        denominator = jnp.maximum(kept / jnp.maximum(size, 1), eps)
        numerator = jnp.ones((), dtype)
    # denominator is 0 only with eps = 0 and no coordinate kept, where the step is 0 whatever the scale.
    scale = numerics.safe_div(numerator, denominator)
    # A product, not a `where`: a NaN or infinite step stays non-finite (as in the reference code), so that
    # apply_if_finite and friends still see it.
    return (u * (keep.astype(dtype) * scale).astype(u.dtype)).astype(u.dtype)


@pytree_factory
def cautious(
    inner: GradientTransformation,
    eps: Scalar | None = None,
    *,
    normalization: str = "count",
    negated: bool = True,
) -> GradientTransformationExtraArgs:
    r"""The cautious version of ``inner`` (Liang et al., 2024): its step, only where it agrees with the gradient.

    With ``g`` the updates this wrapper receives (the gradient) and ``s`` the step ``inner`` returns for them,
    per parameter leaf of ``n`` entries:

    .. math::

        \phi = 1[\mathrm{Re}(\bar g \cdot (-s)) > 0], \qquad
        s \leftarrow s \cdot \phi \cdot \frac{n}{\textstyle\sum \phi + \epsilon}
        \quad (\texttt{"count"}) \quad\text{or}\quad
        s \cdot \frac{\phi}{\max(\mathrm{mean}\,\phi,\ \epsilon)} \quad (\texttt{"clamped\_mean"}).

    ``C-Lion = cautious(lion(...))`` in spirit; the paper's exact C-AdamW / C-Lion leave the decoupled weight
    decay unmasked: see :func:`cautious_adamw`, :func:`cautious_lion` and the module's notes on conventions.

    Args:
      inner: any gradient transformation (an alias such as ``adam``, ``lion``, ``sgd``, or a chain).
      eps: the normaliser's guard, a number or array (traceable), ``>= 0``. ``None`` (default) is the
        normalization's own: ``1.0`` for ``"count"`` (the paper), ``1e-3`` for ``"clamped_mean"``.
      normalization: ``"count"`` (default; the paper, ``c_lion.py``, ``pytorch_optimizer``) or
        ``"clamped_mean"`` (the authors' current ``c_adamw.py``, timm). Static.
      negated: ``True`` (default): ``inner`` returns steps that are added to the params (every alias does),
        so a coordinate is kept where ``-s`` and ``g`` agree. ``False``: ``inner`` returns a direction that a
        later transform of a chain negates (``scale_by_adam``, ``scale_by_lion``: the paper's ``u``), so a
        coordinate is kept where ``s`` and ``g`` agree. Static.

    Returns:
      A transformation whose state is ``inner``'s state itself (the wrapper is stateless), and whose
      ``update`` passes ``params`` and extra keyword arguments on to ``inner``. Memory: nothing per parameter
      beyond ``inner``'s.

    Raises:
      TypeError: if ``inner`` is not a gradient transformation, or ``eps`` is a schedule.
      ValueError: if ``eps`` is negative or not finite, ``normalization`` is unknown, or (at ``init`` or
        ``update``) the tree is fused (:func:`jaxopt_lite.fuse`): the mean is per tensor.
    """
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(f"cautious: inner is not a GradientTransformation (no init/update): {inner!r}")
    if not isinstance(negated, bool):
        raise TypeError(f"cautious: negated must be a bool, got {negated!r}")
    eps = _resolve("cautious", eps, normalization)
    inner = with_extra_args_support(inner)

    def init(params):
        reject_fused("cautious", params)
        return inner.init(params)

    def update(updates, state, params=None, **extra_args):
        reject_fused("cautious", updates, params)
        steps, state = inner.update(updates, state, params, **extra_args)
        try:
            out = jax.tree.map(lambda s, g: _cautious_leaf(s, g, eps, normalization, negated), steps, updates)
        except (ValueError, TypeError) as error:
            if str(error).startswith("cautious:"):
                raise
            raise ValueError(
                f"cautious: the inner transformation's updates do not have the tree structure of the gradients "
                f"({error})"
            ) from error
        return out, state

    return GradientTransformationExtraArgs(init, update)


@alias
def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    cautious_eps: Scalar | None = None,
    normalization: str = "count",
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformationExtraArgs:
    r"""C-AdamW (Liang et al., 2024, Algorithm "C-AdamW"): AdamW whose Adam direction is masked, not its decay.

    .. math::

        u = \hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon), \quad \phi = 1[u g > 0], \quad
        p \leftarrow p - \eta\,\Big(u \phi \frac{n}{\sum\phi + \epsilon_c} + \lambda p\Big)

    per parameter leaf of ``n`` entries (``"count"``, the paper's scaling, ``cautious_eps = 1``; with
    ``normalization="clamped_mean"``, ``phi / max(mean(phi), cautious_eps)`` with ``cautious_eps = 1e-3``,
    the authors' current code). The decay uses the parameters before the step, scaled by the learning rate,
    as AdamW and the authors' ``c_adamw.py`` (``p.add_(p, alpha=-lr * wd)`` before the masked step).
    The chain is ``cautious(scale_by_adam(...), negated=False)``, ``add_decayed_weights``,
    ``scale_by_learning_rate``: the same state as :func:`~jaxopt_lite.adamw`. Memory: two numbers per
    parameter. Defaults as ``adamw``: ``b1=0.9, b2=0.999, eps=1e-8, eps_root=0, weight_decay=1e-4``.
    """
    return chain(
        cautious(
            scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
            _resolve("cautious_adamw", cautious_eps, normalization, "cautious_eps"),
            normalization=normalization,
            negated=False,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@alias
def cautious_lion(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any = None,
    *,
    cautious_eps: Scalar | None = None,
    normalization: str = "count",
) -> GradientTransformationExtraArgs:
    r"""C-Lion (Liang et al., 2024; the authors' ``c_lion.py``): Lion whose sign step is masked, not its decay.

    .. math::

        u = \mathrm{sign}(b_1 m + (1-b_1) g), \quad \phi = 1[u g > 0], \quad
        p \leftarrow p - \eta\,\Big(u \phi \frac{n}{\sum\phi + \epsilon_c} + \lambda p\Big), \quad
        m \leftarrow b_2 m + (1-b_2) g

    per parameter leaf of ``n`` entries (``cautious_eps = 1`` by default; ``normalization`` as
    :func:`cautious`). Equals ``pytorch_optimizer.Lion(cautious=True)``. Memory: one number per parameter.
    Defaults as ``lion``: ``b1=0.9, b2=0.99, weight_decay=1e-3``.
    """
    return chain(
        cautious(
            scale_by_lion(b1, b2, mu_dtype),
            _resolve("cautious_lion", cautious_eps, normalization, "cautious_eps"),
            normalization=normalization,
            negated=False,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
