"""Muon: momentum orthogonalised by Newton-Schulz (Jordan, 2024; Bernstein & Newhouse, 2024).

The momentum of each matrix parameter is replaced by (an approximation of) its
orthogonal polar factor ``U V^T`` (``M = U S V^T``), computed by a few odd
matrix polynomials ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``. Leaves
that are not matrices go to AdamW in :func:`muon`.

All matrices of the same (transposed-to-wide) shape and dtype are stacked and
orthogonalised by ONE batched Newton-Schulz call per step, whatever the number
of leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.aliases import adamw
from jaxopt_lite.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    pytree_factory,
)
from jaxopt_lite.fused import reject_fused
from jaxopt_lite.numerics import eps_divide
from jaxopt_lite.transforms.adaptive import _nesterov_first_moment
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale_by_learning_rate
from jaxopt_lite.wrappers import MaskedNode, partition

Scalar = float | jax.Array

# Keller Jordan's quintic, tuned for slope at 0 (singular values end in about [0.7, 1.2]); Optax's default.
_JORDAN_COEFFS = (3.4445, -4.7750, 2.0315)
# Per-step coefficients of Dion (Ahn et al., 2025), as Optax's "dion" preset.
_DION_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
# Polar Express (Amsel et al., 2025, arXiv:2505.16932, Algorithm 1): the optimal degree-5 polynomial
# for each step (greedy is optimal, so the first k rows are the best k-step method). All rows but
# the last are divided by (1.01, 1.01^3, 1.01^5), the paper's safety factor for low precision.
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_POLAR_EXPRESS_COEFFS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]) + (
    _POLAR_EXPRESS_RAW[-1],
)
# The classical cubic Newton-Schulz iteration X <- 1.5 X - 0.5 X X^T X: slow, but converges to U V^T exactly.
_CUBIC_COEFFS = (1.5, -0.5, 0.0)

NS_COEFFS_PRESETS = {
    "standard": _JORDAN_COEFFS,
    "jordan": _JORDAN_COEFFS,
    "dion": _DION_COEFFS,
    "polar_express": _POLAR_EXPRESS_COEFFS,
    "cubic": _CUBIC_COEFFS,
}
_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_PRECONDITION_EPS = 1e-8  # the floor of the AOL and Schatten-4 rescalings (fixed, as Optax)


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix that Muon orthogonalises.

    The weight maps ``x @ W = y``: ``reduction_axis`` (fan-in, default 0) and
    ``output_axis`` (fan-out, default 1), each an axis or a sequence of axes
    (flattened together). Every other axis is a batch axis: each slice is
    orthogonalised on its own (stacked layers, conv kernels, attention heads).
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


class MuonState(NamedTuple):
    """Step ``count``, the momentum ``mu`` and the Newton-Schulz coefficients (shape ``(3,)`` or ``(k, 3)``)."""

    count: jax.Array
    mu: Any
    ns_coeffs: jax.Array


def _is_dim_nums(x: Any) -> bool:
    return isinstance(x, MuonDimensionNumbers)


def _axes(axis: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))


class _MatrixView(NamedTuple):
    """How one leaf becomes a stack of wide matrices ``(batch, rows <= cols)`` and back."""

    transpose: tuple[int, ...]
    stacked_shape: tuple[int, int, int]  # (batch, fan_in, fan_out)
    wide: bool  # fan_in <= fan_out: no transpose of the matrices needed
    fan_in: int
    fan_out: int


def _matrix_view(owner: str, where: str, shape: tuple[int, ...], dim_nums: MuonDimensionNumbers) -> _MatrixView:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"{owner}: the leaf at {where} has shape {shape}; Muon orthogonalises matrices (rank >= 2). "
            "muon() sends other leaves to AdamW; with scale_by_muon mask them out or give them no dimension numbers"
        )
    red, out = _axes(dim_nums.reduction_axis, ndim), _axes(dim_nums.output_axis, ndim)
    if not red or not out or set(red) & set(out) or len(set(red)) != len(red) or len(set(out)) != len(out):
        raise ValueError(
            f"{owner}: dimension numbers {dim_nums} for the leaf at {where} (shape {shape}) need non-empty, "
            "disjoint reduction and output axes"
        )
    batch = tuple(a for a in range(ndim) if a not in red and a not in out)
    fan_in, fan_out = math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)
    return _MatrixView(
        batch + red + out, (math.prod(shape[a] for a in batch), fan_in, fan_out), fan_in <= fan_out, fan_in, fan_out
    )


def _to_wide(x: jax.Array, view: _MatrixView) -> jax.Array:
    m = x.transpose(view.transpose).reshape(view.stacked_shape)
    return m if view.wide else m.mT


def _from_wide(m: jax.Array, view: _MatrixView, shape: tuple[int, ...]) -> jax.Array:
    m = m if view.wide else m.mT
    unflat = tuple(shape[a] for a in view.transpose)
    return m.reshape(unflat).transpose(tuple(int(a) for a in np.argsort(view.transpose)))


def _gram(x: jax.Array) -> jax.Array:
    return x @ x.mT.conj()


def _ns_step(x: jax.Array, a: jax.Array, coeffs: jax.Array) -> jax.Array:
    return coeffs[0] * x + (coeffs[1] * a + coeffs[2] * (a @ a)) @ x


def _aol_first_step(x: jax.Array, coeffs: jax.Array) -> jax.Array:
    """Almost-orthogonal-layer rescaling (Boissin et al., 2025): ``X <- D^-1/2 X``, ``D = diag(row sums of |A|)``."""
    a = _gram(x)
    s = jax.lax.rsqrt(jnp.maximum(jnp.abs(a).sum(axis=-1), _PRECONDITION_EPS))
    return _ns_step(x * s[..., :, None], a * s[..., :, None] * s[..., None, :], coeffs)


def _schatten_first_step(x: jax.Array, coeffs: jax.Array) -> jax.Array:
    """Schatten-4 rescaling (Grishina et al., 2025): ``X <- X / ||X X^T||_F^(1/2)``."""
    a = _gram(x)
    fro = jnp.sqrt(jnp.sum(jnp.abs(a) ** 2, axis=(-2, -1), keepdims=True))
    s = jax.lax.rsqrt(jnp.maximum(fro, _PRECONDITION_EPS))
    return _ns_step(x * s, a * s * s, coeffs)


def newton_schulz(
    x: jax.Array,
    ns_coeffs: Any = _JORDAN_COEFFS,
    ns_steps: int | jax.Array = 5,
    preconditioning: str = "frobenius",
    eps: Scalar = 1e-8,
    ns_dtype: Any = None,
) -> jax.Array:
    """Orthogonalises a stack of wide matrices ``x`` of shape ``(..., m, n)``, ``m <= n``.

    ``X_0 = x / (||x|| + eps)`` (Frobenius or spectral norm of each matrix; no rescaling
    for ``"aol"``/``"schatten"``, whose first step rescales), then for ``k = 1..steps``
    ``X <- a_k X + (b_k A + c_k A^2) X`` with ``A = X X^H``. ``ns_coeffs`` is one row
    ``(a, b, c)`` used ``ns_steps`` times, or a ``(k, 3)`` table used once per row.
    The iteration runs in ``ns_dtype`` (e.g. ``jnp.bfloat16`` or ``jnp.float32``;
    default ``x.dtype``) and the result is returned in ``x.dtype``.
    """
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(f"newton_schulz: preconditioning must be one of {_PRECONDITIONINGS}, got {preconditioning!r}")
    out_dtype = x.dtype
    x = x.astype(ns_dtype or x.dtype)
    coeffs = jnp.asarray(ns_coeffs).astype(x.dtype)
    divide = eps_divide(eps)  # eps = 0: a zero matrix stays 0, not 0 / 0
    if preconditioning == "frobenius":
        x = divide(x, (jnp.sqrt(jnp.sum(jnp.abs(x) ** 2, axis=(-2, -1), keepdims=True)) + eps).astype(x.dtype))
    elif preconditioning == "spectral":
        sigma_max = jnp.linalg.norm(x.astype(jnp.promote_types(x.dtype, jnp.float32)), ord=2, axis=(-2, -1))
        x = divide(x, (sigma_max[..., None, None] + eps).astype(x.dtype))
    first = {"aol": _aol_first_step, "schatten": _schatten_first_step}.get(preconditioning)

    def step(i, x, row):
        plain = lambda x: _ns_step(x, _gram(x), row)  # noqa: E731
        if first is None:
            return plain(x)
        if isinstance(i, int):
            return first(x, row) if i == 0 else plain(x)
        return jax.lax.cond(i == 0, lambda x: first(x, row), plain, x)

    if coeffs.ndim == 2:
        for i in range(coeffs.shape[0]):
            x = step(i, x, coeffs[i])
    elif _checks.concrete(ns_steps) is not None:
        for i in range(int(_checks.concrete(ns_steps))):
            x = step(i, x, coeffs)
    else:  # a traced number of steps: a loop XLA cannot unroll
        x = jax.lax.fori_loop(0, ns_steps, lambda i, x: step(i, x, coeffs), x)
    return x.astype(out_dtype)


def _resolve_coeffs(owner: str, ns_coeffs: Any, ns_steps: Any) -> jax.Array:
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_COEFFS_PRESETS:
            raise ValueError(f"{owner}: unknown ns_coeffs preset {ns_coeffs!r}; known: {sorted(NS_COEFFS_PRESETS)}")
        if ns_coeffs == "polar_express":  # the first ns_steps rows; the last row repeats beyond the table
            steps = _checks.concrete(ns_steps)
            if steps is None:
                raise ValueError(f"{owner}: ns_coeffs='polar_express' needs a concrete ns_steps (a table row per step)")
            rows = _POLAR_EXPRESS_COEFFS
            ns_coeffs = tuple(rows[min(i, len(rows) - 1)] for i in range(int(steps)))
        else:
            ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
    coeffs = jnp.asarray(ns_coeffs)
    if coeffs.ndim not in (1, 2) or coeffs.shape[-1] != 3:
        raise ValueError(f"{owner}: ns_coeffs must have shape (3,) or (k, 3), got {coeffs.shape}")
    if coeffs.ndim == 2:
        steps = _checks.concrete(ns_steps)
        if steps is not None and coeffs.shape[0] > steps:
            raise ValueError(f"{owner}: ns_coeffs has {coeffs.shape[0]} rows, more than ns_steps={int(steps)}")
    return coeffs


def _leaf_dim_nums(owner: str, weight_dimension_numbers: Any, updates: Any) -> list:
    """One ``MuonDimensionNumbers`` (or ``None``: not a Muon leaf) per leaf of ``updates``, in order."""
    spec = weight_dimension_numbers(updates) if callable(weight_dimension_numbers) else weight_dimension_numbers
    n_leaves = len(jax.tree.leaves(updates))
    if spec is None:
        spec = MuonDimensionNumbers()
    if _is_dim_nums(spec):
        return [spec] * n_leaves
    is_leaf = lambda x: x is None or _is_dim_nums(x)  # noqa: E731
    specs, treedef = jax.tree.flatten(spec, is_leaf=is_leaf)
    try:
        subtrees = treedef.flatten_up_to(updates)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{owner}: weight_dimension_numbers must have the tree structure of the params (or a prefix), but\n"
            f"  weight_dimension_numbers: {_tree._describe(spec)}\n  updates: {_tree._describe(updates)}"  # noqa: SLF001
        ) from e
    return [s for s, sub in zip(specs, subtrees) for _ in jax.tree.leaves(sub)]


def _orthogonalize_tree(owner: str, tree: Any, dim_nums: list, orthogonalize: Callable) -> Any:
    """Orthogonalises every matrix leaf of ``tree``; leaves of one wide shape and dtype share one call."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = [leaf for _, leaf in paths_and_leaves]
    groups: dict[tuple, list] = {}
    views = {}
    for i, ((path, leaf), dn) in enumerate(zip(paths_and_leaves, dim_nums)):
        if dn is None:
            raise ValueError(
                f"{owner}: the leaf at {jax.tree_util.keystr(path)} has no dimension numbers (None); "
                "scale_by_muon orthogonalises every leaf it sees (muon() sends such leaves to AdamW)"
            )
        view = _matrix_view(owner, jax.tree_util.keystr(path) or "<root>", leaf.shape, dn)
        views[i] = view
        _, rows, cols = view.stacked_shape
        key = (min(rows, cols), max(rows, cols), jnp.result_type(leaf))
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        stacked = jnp.concatenate([_to_wide(out[i], views[i]) for i in members], axis=0)
        result = orthogonalize(stacked)
        offsets = np.cumsum([0] + [views[i].stacked_shape[0] for i in members])
        for i, lo, hi in zip(members, offsets[:-1], offsets[1:]):
            out[i] = _from_wide(result[lo:hi], views[i], out[i].shape)
    return jax.tree.unflatten(treedef, out)


@pytree_factory
def scale_by_muon(
    ns_coeffs: Any = _JORDAN_COEFFS,
    ns_steps: int | jax.Array = 5,
    beta: Scalar = 0.95,
    eps: Scalar = 1e-8,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    weight_dimension_numbers: Any = None,
    ns_dtype: Any = None,
    bias_correction: bool = True,
) -> GradientTransformation:
    """Muon's direction: the orthogonalised (Nesterov) momentum of each matrix.

    ``m <- beta m + (1-beta) g``; ``M = m / (1-beta^t)``, or with ``nesterov=True``
    (default) ``M = beta m / (1-beta^(t+1)) + (1-beta) g / (1-beta^t)``; with
    ``bias_correction=False`` (Jordan's code and ``torch.optim.Muon``) ``M = m``, or
    ``beta m + (1-beta) g`` with ``nesterov=True``. The two differ in direction after the
    first step (Newton-Schulz removes only a common scale);
    ``u = NS(M)``, the Newton-Schulz approximation of ``U V^T`` for ``M = U S V^T``
    (see :func:`newton_schulz`). With ``adaptive=True`` (Bernstein & Newhouse, 2024)
    ``u <- <M, u> u`` (the dual norm of ``M`` times ``u``, per leaf).

    ``ns_coeffs``: a row ``(a, b, c)`` (default Jordan's ``(3.4445, -4.775, 2.0315)``), a
    ``(k, 3)`` table (one row per step; ``k <= ns_steps``), or a preset name:
    ``"standard"``/``"jordan"``, ``"dion"``, ``"polar_express"`` (the first ``ns_steps`` rows of
    Amsel et al.'s per-step coefficients) or ``"cubic"`` (``(1.5, -0.5, 0)``, exact in the limit).
    ``ns_dtype`` runs the iteration in another dtype (``jnp.bfloat16`` as Jordan's code,
    ``jnp.float32``); the default is the momentum's dtype.

    ``weight_dimension_numbers``: ``None`` (every leaf a 2-D matrix ``(fan_in, fan_out)``), one
    :class:`MuonDimensionNumbers` for all leaves, a tree of them (a prefix of the params), or a
    function of the updates returning one. Leaves of the same matrix shape are orthogonalised in
    one batched call. Memory: one buffer per parameter. Defaults (Optax's): ``beta=0.95``,
    ``ns_steps=5``, ``eps=1e-8``, Frobenius preconditioning.
    """
    owner = "scale_by_muon"
    _checks.check_decay(owner, "beta", beta)
    _checks.check_nonnegative(owner, "eps", eps)
    _checks.check_range(owner, "ns_steps", ns_steps, low=0)
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(f"{owner}: preconditioning must be one of {_PRECONDITIONINGS}, got {preconditioning!r}")
    coeffs = _resolve_coeffs(owner, ns_coeffs, ns_steps)

    def init(params):
        reject_fused(owner, params)  # orthogonalises each matrix: a fused buffer is flat
        _tree.check_floating(params, owner)
        return MuonState(count=_tree.zero_count(), mu=_tree.accumulator_zeros(params, mu_dtype), ns_coeffs=coeffs)

    def update(updates, state, params=None):
        reject_fused(owner, updates, params)
        del params
        _tree.check_same_shapes(updates, state.mu, "updates", f"{owner} state")
        mu = _tree.update_moment(updates, state.mu, beta, 1)
        count = _tree.safe_increment(state.count)
        if not bias_correction:
            mu_hat = _tree.update_moment(updates, mu, beta, 1) if nesterov else mu
        elif nesterov:
            mu_hat = _nesterov_first_moment(updates, mu, beta, count)
        else:
            mu_hat = _tree.bias_correction(mu, beta, count)
        dim_nums = _leaf_dim_nums(owner, weight_dimension_numbers, updates)

        def orthogonalize(x):
            return newton_schulz(x, state.ns_coeffs, ns_steps, preconditioning, eps, ns_dtype)

        ortho = _orthogonalize_tree(owner, mu_hat, dim_nums, orthogonalize)
        if adaptive:
            ortho = jax.tree.map(lambda m, o: jnp.sum(m.conj() * o) * o, mu_hat, ortho)
        ortho = jax.tree.map(lambda o, g: o.astype(g.dtype), ortho, updates)
        return ortho, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

    return GradientTransformation(init, update)


def _scale_by_shape(weight_dimension_numbers: Any, consistent_rms: Any, shape_scaling: str) -> GradientTransformation:
    """Multiplies each matrix update by a factor of its shape (see :func:`muon`)."""

    def factor(view: _MatrixView):
        if consistent_rms is not None:
            return math.sqrt(max(view.fan_in, view.fan_out)) * consistent_rms
        if shape_scaling == "width":
            return math.sqrt(max(1.0, view.fan_out / view.fan_in))
        return 1.0

    def update(updates, state, params=None):
        del params
        dim_nums = _leaf_dim_nums("muon", weight_dimension_numbers, updates)
        paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
        out = [
            (factor(_matrix_view("muon", jax.tree_util.keystr(p), u.shape, dn)) * u).astype(u.dtype)
            for (p, u), dn in zip(paths_and_leaves, dim_nums)
        ]
        return jax.tree.unflatten(treedef, out), state

    return GradientTransformation(lambda params: EmptyState(), update)


@alias
def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: Any = _JORDAN_COEFFS,
    ns_steps: int | jax.Array = 5,
    beta: Scalar = 0.95,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    adam_b1: Scalar = 0.9,
    adam_b2: Scalar = 0.999,
    adam_eps_root: Scalar = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: Scalar | None = None,
    shape_scaling: Literal["width", "none"] = "width",
    ns_dtype: Any = None,
    bias_correction: bool = True,
) -> GradientTransformationExtraArgs:
    """Muon (Jordan, 2024) on the matrices, AdamW on every other leaf.

    Matrix leaves: ``p <- p - lr * (s * u + weight_decay * p)`` with :func:`scale_by_muon`'s
    ``u`` and a shape factor ``s`` of ``(fan_in, fan_out)`` chosen by argument:

    - ``sqrt(max(1, fan_out / fan_in))`` (default, ``shape_scaling="width"``, Jordan's and Optax's);
    - ``consistent_rms * sqrt(max(fan_in, fan_out))`` when ``consistent_rms`` is given
      (Liu et al., 2025: ``0.2`` matches AdamW's update RMS);
    - ``1`` with ``shape_scaling="none"``.

    Other leaves: ``adamw(adam_learning_rate or learning_rate, adam_b1, adam_b2, eps,
    adam_eps_root, mu_dtype, adam_weight_decay, nesterov=nesterov)``. Without
    ``muon_weight_dimension_numbers`` the 2-D leaves are the matrices; with it (a tree of
    :class:`MuonDimensionNumbers` / ``None``, or a function of the params returning one), the
    leaves with dimension numbers are (``None``: AdamW). State: ``PartitionState`` with the
    groups ``"muon"`` and ``"adam"``, as Optax.

    ``bias_correction`` (default ``True``, Optax's convention) debiases Muon's momentum; ``False``
    is Jordan's and ``torch.optim.Muon``'s. With ``bias_correction=False``, ``eps=1e-30`` and
    ``muon_weight_dimension_numbers=MuonDimensionNumbers(reduction_axis=1, output_axis=0)`` for
    torch's ``(out, in)`` weights, this equals ``torch.optim.Muon`` with its Newton-Schulz in
    float64 (``consistent_rms=0.2`` for its ``adjust_lr_fn="match_rms_adamw"``), tested over 200 steps.
    """
    if shape_scaling not in ("width", "none"):
        raise ValueError(f"muon: shape_scaling must be 'width' or 'none', got {shape_scaling!r}")
    if consistent_rms is not None and shape_scaling == "none":
        raise ValueError("muon: consistent_rms sets the shape scaling; it cannot be combined with shape_scaling='none'")
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    user_dim_nums = muon_weight_dimension_numbers
    is_spec = lambda x: x is None or _is_dim_nums(x)  # noqa: E731

    def resolved(tree):
        return user_dim_nums(tree) if callable(user_dim_nums) else user_dim_nums

    def param_labels(params):
        if user_dim_nums is None:
            return jax.tree.map(lambda p: "muon" if jnp.ndim(p) == 2 else "adam", params)
        spec = resolved(params)
        if _is_dim_nums(spec):
            return jax.tree.map(lambda p: "muon", params)
        return jax.tree.map(
            lambda dn, sub: jax.tree.map(lambda _: "adam" if dn is None else "muon", sub), spec, params, is_leaf=is_spec
        )

    def muon_dim_nums(updates):  # the updates of the "muon" group: MaskedNode where AdamW acts
        if user_dim_nums is None:
            return MuonDimensionNumbers()
        # A user function written for the params sees a 0-d stand-in where AdamW acts, not a MaskedNode.
        masked = lambda x: isinstance(x, MaskedNode)  # noqa: E731
        stand_in = jax.ShapeDtypeStruct((), jnp.float32)
        spec = resolved(jax.tree.map(lambda x: stand_in if masked(x) else x, updates, is_leaf=masked))
        if _is_dim_nums(spec):
            return spec
        return jax.tree.map(
            lambda dn, sub: MaskedNode() if dn is None or masked(sub) else dn,
            spec,
            updates,
            is_leaf=is_spec,
        )

    muon_group = chain(
        scale_by_muon(
            ns_coeffs,
            ns_steps,
            beta,
            eps,
            mu_dtype,
            nesterov=nesterov,
            adaptive=adaptive,
            preconditioning=preconditioning,
            weight_dimension_numbers=muon_dim_nums,
            ns_dtype=ns_dtype,
            bias_correction=bias_correction,
        ),
        _scale_by_shape(muon_dim_nums, consistent_rms, shape_scaling),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    adam_group = adamw(
        adam_learning_rate, adam_b1, adam_b2, eps, adam_eps_root, mu_dtype, adam_weight_decay, nesterov=nesterov
    )
    return partition({"muon": muon_group, "adam": adam_group}, param_labels)
