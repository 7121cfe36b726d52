"""jaxopt_lite.losses against NumPy/SciPy references written here and against optax.losses.

Each case draws small random inputs; the loss must match the reference and
Optax to ~1e-12 in float64 and ~1e-5 in float32, run in bfloat16, give the same
numbers under jit, and vmap. Extreme logits (+-1e4) and -inf / masked entries
must give finite values and finite gradients equal to the analytic ones.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

import jaxopt_lite
from jaxopt_lite import losses

# ----------------------------------------------------------------------------------------------------------------------
# NumPy references (float64), written from the definitions.


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return special.expit(x)


def log_softmax(x, axis=-1, mask=None):
    x = np.where(mask, x, -np.inf) if mask is not None else x
    return x - special.logsumexp(x, axis=axis, keepdims=True)


def ref_softmax_ce(logits, labels, axis=-1, where=None):
    lp = log_softmax(logits, axis, where)
    include = (labels != 0) if where is None else where & (labels != 0)
    return -np.sum(np.where(include, labels * np.where(include, lp, 0), 0), axis=axis)


def ref_integer_ce(logits, labels, axis=-1, where=None):
    lp = log_softmax(logits, -1, where)
    return -np.take_along_axis(lp, labels[..., None], -1)[..., 0]


def ref_poly(logits, labels, epsilon=2.0, axis=-1, where=None):
    p = np.exp(log_softmax(logits, axis, where))
    return ref_softmax_ce(logits, labels, axis, where) + epsilon * np.sum(labels * (1 - p), axis=axis)


def ref_focal(logits, labels, alpha=None, gamma=2.0):
    p = sigmoid(logits)
    ce = -labels * log_sigmoid(logits) - (1 - labels) * log_sigmoid(-logits)
    loss = ce * (labels * (1 - p) + (1 - labels) * p) ** gamma
    return loss if alpha is None else (alpha * labels + (1 - alpha) * (1 - labels)) * loss


def ref_sparse_plus(z):
    return np.where(z <= -1, 0.0, np.where(z >= 1, z, (z + 1) ** 2 / 4))


def ref_simplex(x):
    """Projection onto the simplex by bisection on tau (independent of the sort-based algorithm)."""
    lo, hi = x.min(-1, keepdims=True) - 1, x.max(-1, keepdims=True)
    for _ in range(200):
        tau = (lo + hi) / 2
        too_big = np.maximum(x - tau, 0).sum(-1, keepdims=True) > 1
        lo, hi = np.where(too_big, tau, lo), np.where(too_big, hi, tau)
    return np.maximum(x - (lo + hi) / 2, 0)


def ref_multiclass_sparsemax(scores, labels):
    p = ref_simplex(scores)
    s_y = np.take_along_axis(scores, labels[..., None], -1)[..., 0]
    return np.sum(p * scores, -1) + 0.5 * (1 - np.sum(p * p, -1)) - s_y


def ref_kl(log_predictions, targets, axis=-1, where=None):
    include = targets > 0 if where is None else where & (targets > 0)
    t = np.where(include, targets, 1)
    return np.sum(np.where(include, t * (np.log(t) - log_predictions), 0), axis=axis)


def ref_kl_log(log_predictions, log_targets, axis=-1, where=None):
    terms = np.exp(log_targets) * (log_targets - log_predictions)
    return np.sum(terms if where is None else np.where(where, terms, 0), axis=axis)


def ref_gkl(log_predictions, targets, axis=-1, where=None):
    mass = np.exp(log_predictions) - targets
    mass = mass if where is None else np.where(where, mass, 0)
    return ref_kl(log_predictions, targets, axis, where) + np.sum(mass, axis=axis)


def ref_ctc(logits, logit_paddings, labels, label_paddings, blank_id=0):
    """Graves' forward recursion on the blank-extended label sequence, one sequence at a time."""
    out = []
    for b in range(logits.shape[0]):
        lp = log_softmax(logits[b][logit_paddings[b] == 0])
        y = labels[b][label_paddings[b] == 0]
        ext = [blank_id]
        for label in y:
            ext += [int(label), blank_id]
        alpha = np.full(len(ext), -np.inf)
        alpha[0] = lp[0, blank_id]
        if len(ext) > 1:
            alpha[1] = lp[0, ext[1]]
        for t in range(1, lp.shape[0]):
            new = np.full_like(alpha, -np.inf)
            for s in range(len(ext)):
                a = alpha[s]
                if s >= 1:
                    a = np.logaddexp(a, alpha[s - 1])
                if s >= 2 and ext[s] != blank_id and ext[s] != ext[s - 2]:
                    a = np.logaddexp(a, alpha[s - 2])
                new[s] = a + lp[t, ext[s]]
            alpha = new
        out.append(-np.logaddexp(alpha[-1], alpha[-2]) if len(ext) > 1 else -alpha[-1])
    return np.array(out)


def ref_cosine(predictions, targets, epsilon=0.0, axis=-1, where=None):
    a, b = np.broadcast_arrays(predictions, targets)
    if where is not None:
        a, b = np.where(where, a, 0), np.where(where, b, 0)
    na = np.sqrt(np.maximum(np.sum(a * a, axis, keepdims=True), epsilon))
    nb = np.sqrt(np.maximum(np.sum(b * b, axis, keepdims=True), epsilon))
    return np.sum(a / na * b / nb, axis=axis)


def ref_huber(predictions, targets, delta=1.0):
    e = np.abs(predictions - targets)
    return np.where(e <= delta, 0.5 * e**2, 0.5 * delta**2 + delta * (e - delta))


def ref_smooth(labels, alpha, axis=-1, where=None):
    k = labels.shape[-1] if where is None else np.sum(where, axis, keepdims=True)
    return (1 - alpha) * labels + alpha / k


def ref_ranking(logits, labels, where=None, weights=None):
    where = np.ones(logits.shape, bool) if where is None else where
    y = labels * (1 if weights is None else weights)
    per_list = ref_softmax_ce(logits, y, -1, where)
    valid = where.any(-1)
    return per_list[valid].mean()


def ref_dice_per_class(probs, targets, smooth=1.0, alpha=0.5, beta=0.5):
    axis = tuple(range(1, probs.ndim - 1))
    inter = np.sum(probs * targets, axis)
    p, t = np.sum(probs, axis), np.sum(targets, axis)
    return 1 - (inter + smooth) / (inter + alpha * (p - inter) + beta * (t - inter) + smooth)


def ref_softmax(x):
    return np.exp(log_softmax(x))


def ref_dice(predictions, targets, class_weights=None, alpha=0.5, beta=0.5, reduction="mean", ignore_background=False):
    per_class = ref_dice_per_class(ref_softmax(predictions), targets, alpha=alpha, beta=beta)
    if class_weights is not None:
        per_class = per_class * class_weights
    if ignore_background:
        per_class = per_class[..., 1:]
    return {"mean": per_class.mean(-1), "sum": per_class.sum(-1), "none": per_class}[reduction]


def ref_generalized_dice(predictions, targets):
    freq = targets.sum(axis=tuple(range(targets.ndim - 1)))
    w = 1 / (freq**2 + 1e-7)
    w = w / w.sum() * len(w)
    return np.mean(ref_dice_per_class(ref_softmax(predictions), targets) * w)


def ref_binary_dice(predictions, targets):
    return ref_dice_per_class(sigmoid(predictions)[..., None], targets[..., None]).mean(-1)


def ref_ntxent(embeddings, labels, temperature=0.07):
    n = embeddings / np.sqrt(np.maximum(np.sum(embeddings**2, -1, keepdims=True), np.finfo(np.float64).eps))
    s = n @ n.T / temperature
    total, count = 0.0, 0
    for i in range(len(labels)):
        negatives = [s[i, k] for k in range(len(labels)) if labels[k] != labels[i]]
        for j in range(len(labels)):
            if j != i and labels[j] == labels[i]:
                total -= s[i, j] - special.logsumexp([s[i, j]] + negatives)
                count += 1
    return np.array(total / count)


def ref_triplet(anchors, positives, negatives, margin=1.0, eps=1e-6):
    dp = np.sqrt(np.sum((anchors - positives) ** 2, -1) + eps)
    dn = np.sqrt(np.sum((anchors - negatives) ** 2, -1) + eps)
    return np.maximum(dp - dn + margin, 0)


# ----------------------------------------------------------------------------------------------------------------------
# The table of cases.


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    name: str  # the public name in jaxopt_lite.losses and optax.losses
    make: Callable  # rng -> (args, kwargs), floats as float64 NumPy arrays
    ref: Callable
    smooth: bool = True  # False: a max/kink makes bfloat16 comparisons coarse

    def ours(self, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # convex_kl_divergence, as in Optax
            return getattr(losses, self.name)(*args, **kwargs)

    def optax(self, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return getattr(optax.losses, self.name)(*args, **kwargs)


def _onehot(rng, shape, k):
    return np.eye(k)[rng.integers(0, k, shape)]


def _dist(rng, shape):
    return ref_softmax(rng.normal(size=shape))


def _mask(rng, shape):
    mask = rng.random(shape) < 0.7
    mask[..., 0] = True
    return mask


CASES = [
    Case("sigmoid_bce", "sigmoid_binary_cross_entropy",
         lambda r: ((3 * r.normal(size=(2, 3)), r.random((2, 3))), {}),
         lambda x, y: -y * log_sigmoid(x) - (1 - y) * log_sigmoid(-x)),
    Case("hinge", "hinge_loss",
         lambda r: ((r.normal(size=(2, 3)), np.sign(r.normal(size=(2, 3)))), {}),
         lambda s, t: np.maximum(0, 1 - s * t), smooth=False),
    Case("perceptron", "perceptron_loss",
         lambda r: ((r.normal(size=(2, 3)), np.sign(r.normal(size=(2, 3)))), {}),
         lambda s, t: np.maximum(0, -s * t), smooth=False),
    Case("sparsemax_binary", "sparsemax_loss",
         lambda r: ((1.5 * r.normal(size=(2, 4)), r.integers(0, 2, (2, 4))), {}),
         lambda x, y: ref_sparse_plus(np.where(y, -x, x)), smooth=False),
    Case("safe_softmax_ce", "safe_softmax_cross_entropy",
         lambda r: ((r.normal(size=(2, 4)), _dist(r, (2, 4))), {}), ref_softmax_ce),
    Case("softmax_ce", "softmax_cross_entropy",
         lambda r: ((r.normal(size=(2, 4)), _onehot(r, (2,), 4)), {}), ref_softmax_ce),
    Case("softmax_ce_axis_where", "softmax_cross_entropy",
         lambda r: ((r.normal(size=(4, 2)), _dist(r, (2, 4)).T), {"axis": 0, "where": _mask(r, (2, 4)).T}),
         ref_softmax_ce),
    Case("integer_ce", "softmax_cross_entropy_with_integer_labels",
         lambda r: ((r.normal(size=(3, 4)), r.integers(0, 4, (3,))), {}), ref_integer_ce),
    Case("integer_ce_where", "softmax_cross_entropy_with_integer_labels",
         lambda r: ((r.normal(size=(3, 4)), np.zeros(3, int)), {"where": _mask(r, (3, 4))}), ref_integer_ce),
    Case("integer_ce_tuple_axis", "softmax_cross_entropy_with_integer_labels",
         lambda r: ((r.normal(size=(2, 2, 3)), r.integers(0, 6, (2,))), {"axis": (1, 2)}),
         lambda x, y, axis: ref_integer_ce(x.reshape(2, 6), y)),
    Case("multiclass_hinge", "multiclass_hinge_loss",
         lambda r: ((r.normal(size=(3, 4)), r.integers(0, 4, (3,))), {}),
         lambda s, y: np.max(s + (np.arange(4) != y[:, None]), -1) - s[np.arange(3), y], smooth=False),
    Case("multiclass_perceptron", "multiclass_perceptron_loss",
         lambda r: ((r.normal(size=(3, 4)), r.integers(0, 4, (3,))), {}),
         lambda s, y: np.max(s, -1) - s[np.arange(3), y], smooth=False),
    Case("multiclass_sparsemax", "multiclass_sparsemax_loss",
         lambda r: ((r.normal(size=(3, 5)), r.integers(0, 5, (3,))), {}), ref_multiclass_sparsemax, smooth=False),
    Case("poly", "poly_loss_cross_entropy",
         lambda r: ((r.normal(size=(2, 4)), _dist(r, (2, 4))), {"epsilon": 1.5}), ref_poly),
    Case("poly_where", "poly_loss_cross_entropy",
         lambda r: ((r.normal(size=(2, 4)), _onehot(r, (2,), 4)), {"where": np.ones((2, 4), bool)}), ref_poly),
    Case("focal", "sigmoid_focal_loss",
         lambda r: ((2 * r.normal(size=(2, 3)), r.integers(0, 2, (2, 3)).astype(float)), {}), ref_focal),
    Case("focal_soft_alpha", "sigmoid_focal_loss",
         lambda r: ((2 * r.normal(size=(2, 3)), r.random((2, 3))), {"alpha": 0.25, "gamma": 1.5}), ref_focal),
    Case("kl", "kl_divergence",
         lambda r: ((np.log(_dist(r, (2, 4))), _dist(r, (2, 4)) * (r.random((2, 4)) < 0.8)), {}), ref_kl),
    Case("kl_where", "kl_divergence",
         lambda r: ((np.log(_dist(r, (2, 4))), _dist(r, (2, 4))), {"where": _mask(r, (2, 4))}), ref_kl),
    Case("kl_log_targets", "kl_divergence_with_log_targets",
         lambda r: ((np.log(_dist(r, (2, 4))), np.log(_dist(r, (2, 4)))), {}), ref_kl_log),
    Case("generalized_kl", "generalized_kl_divergence",
         lambda r: ((r.normal(size=(2, 4)), r.random((2, 4))), {"axis": None}), ref_gkl),
    Case("convex_kl", "convex_kl_divergence",
         lambda r: ((r.normal(size=(2, 4)), r.random((2, 4))), {"where": _mask(r, (2, 4))}), ref_gkl),
    Case("ctc", "ctc_loss",
         lambda r: ((r.normal(size=(2, 6, 4)), np.array([[0.0] * 6, [0.0] * 4 + [1.0] * 2]),
                     np.array([[1, 2, 2], [3, 1, 0]]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])), {}),
         ref_ctc),
    Case("squared_error", "squared_error",
         lambda r: ((r.normal(size=(2, 3)), r.normal(size=(2, 3))), {}), lambda p, t: (p - t) ** 2),
    Case("l2", "l2_loss", lambda r: ((r.normal(size=(2, 3)),), {}), lambda p: 0.5 * p**2),
    Case("huber", "huber_loss",
         lambda r: ((3 * r.normal(size=(2, 3)), r.normal(size=(3,))), {"delta": 0.7}), ref_huber, smooth=False),
    Case("log_cosh", "log_cosh",
         lambda r: ((3 * r.normal(size=(2, 3)), r.normal(size=(2, 3))), {}), lambda p, t: np.log(np.cosh(p - t))),
    Case("cosine_similarity", "cosine_similarity",
         lambda r: ((r.normal(size=(2, 4)), r.normal(size=(2, 4))), {"where": _mask(r, (2, 4))}), ref_cosine),
    Case("cosine_distance", "cosine_distance",
         lambda r: ((r.normal(size=(3, 2)), r.normal(size=(3, 2))), {"axis": 0, "epsilon": 0.1}),
         lambda p, t, axis, epsilon: 1 - ref_cosine(p, t, epsilon, axis)),
    Case("smooth_labels", "smooth_labels",
         lambda r: ((_onehot(r, (2,), 4), 0.1), {}), ref_smooth),
    Case("smooth_labels_where", "smooth_labels",
         lambda r: ((_onehot(r, (2,), 4), 0.2), {"where": _mask(r, (2, 4))}), ref_smooth),
    Case("ranking", "ranking_softmax_loss",
         lambda r: ((r.normal(size=(3, 4)), r.integers(0, 3, (3, 4)).astype(float)),
                    {"where": _mask(r, (3, 4)), "weights": r.random((3, 4))}), ref_ranking),
    Case("ranking_plain", "ranking_softmax_loss",
         lambda r: ((r.normal(size=(2, 3)), r.random((2, 3))), {}), ref_ranking),
    Case("dice", "dice_loss",
         lambda r: ((r.normal(size=(2, 3, 3, 3)), _onehot(r, (2, 3, 3), 3)), {}), ref_dice),
    Case("tversky_none", "dice_loss",
         lambda r: ((r.normal(size=(2, 4, 3)), _onehot(r, (2, 4), 3)),
                    {"alpha": 0.3, "beta": 0.7, "reduction": "none", "class_weights": r.random(3)}), ref_dice),
    Case("dice_sum_no_background", "dice_loss",
         lambda r: ((r.normal(size=(2, 4, 3)), _onehot(r, (2, 4), 3)),
                    {"reduction": "sum", "ignore_background": True}), ref_dice),
    Case("generalized_dice", "multiclass_generalized_dice_loss",
         lambda r: ((r.normal(size=(2, 4, 3)), _onehot(r, (2, 4), 3)), {}), ref_generalized_dice),
    Case("binary_dice", "binary_dice_loss",
         lambda r: ((r.normal(size=(2, 5)), r.integers(0, 2, (2, 5)).astype(float)), {}), ref_binary_dice),
    Case("ntxent", "ntxent",
         lambda r: ((r.normal(size=(6, 3)), np.array([0, 0, 1, 1, 2, 2])), {"temperature": 0.5}), ref_ntxent),
    Case("triplet", "triplet_margin_loss",
         lambda r: ((r.normal(size=(3, 4)), r.normal(size=(3, 4)), r.normal(size=(3, 4))), {"margin": 2.0}),
         ref_triplet, smooth=False),
]
CASE_IDS = [c.id for c in CASES]


def _cast(tree, dtype):
    """Float NumPy leaves become ``dtype`` JAX arrays; ints, bools and Python scalars stay."""
    def cast(x):
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            return jnp.asarray(x, dtype)
        return jnp.asarray(x) if isinstance(x, np.ndarray) else x
    return jax.tree.map(cast, tree)


def _to_np64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64) if isinstance(x, jax.Array) and
                        jnp.issubdtype(x.dtype, jnp.floating) else (np.asarray(x) if isinstance(x, jax.Array) else x),
                        tree)


def _inputs(case, seed=0):
    return case.make(np.random.default_rng(seed))


# ----------------------------------------------------------------------------------------------------------------------
# The public surface.


def test_names_and_signatures_match_optax():
    public = sorted(n for n in dir(optax.losses) if not n.startswith("_"))
    assert sorted(n for n in dir(losses) if not n.startswith("_")) == public
    for name in public:
        ours, theirs = inspect.signature(getattr(losses, name)), inspect.signature(getattr(optax.losses, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name
    top_level = [n for n in public if hasattr(optax, n)]
    assert len(top_level) == 19
    for name in top_level:
        assert getattr(jaxopt_lite, name) is getattr(losses, name)
    assert {c.name for c in CASES} | {"ctc_loss_with_forward_probs", "make_fenchel_young_loss"} == set(public)


# ----------------------------------------------------------------------------------------------------------------------
# Values: reference and Optax, float64 and float32.


def _as_function(case, args, kwargs):
    """``(fn, arrays)``: the loss as a function of its array arguments only (others are closed over)."""
    is_array = [isinstance(x, jax.Array) for x in args]
    static = {n: v for n, v in kwargs.items() if not isinstance(v, jax.Array)}
    arrays = ([x for x in args if isinstance(x, jax.Array)], {n: v for n, v in kwargs.items() if isinstance(v, jax.Array)})

    def fn(positional, keyword, impl=case.ours):
        it = iter(positional)
        return impl(*[next(it) if arr else x for arr, x in zip(is_array, args)], **keyword, **static)

    return fn, arrays


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_and_optax_jit_vmap(case):
    """float64: eager = reference = Optax (1e-12), jit(vmap) = eager; float32 and bfloat16: close to the reference."""
    (args, kwargs), (args2, kwargs2) = _inputs(case, 0), _inputs(case, 1)
    a, k = _cast((args, kwargs), jnp.float64)
    eager = case.ours(*a, **k)
    np.testing.assert_allclose(eager, case.ref(*args, **kwargs), rtol=1e-12, atol=1e-13)
    fn, arrays = _as_function(case, a, k)
    np.testing.assert_allclose(eager, jax.jit(functools.partial(fn, impl=case.optax))(*arrays), rtol=1e-12, atol=1e-13)
    assert eager.shape == np.shape(case.ref(*args, **kwargs))
    if jnp.issubdtype(a[0].dtype, jnp.floating):
        assert eager.dtype == a[0].dtype

    # jit(vmap) over two draws equals the eager calls.
    a2, k2 = _cast((args2, kwargs2), jnp.float64)
    _, arrays2 = _as_function(case, a2, k2)
    batched = jax.jit(jax.vmap(fn))(*jax.tree.map(lambda x, y: jnp.stack([x, y]), arrays, arrays2))
    np.testing.assert_allclose(batched[0], eager, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(batched[1], case.ours(*a2, **k2), rtol=1e-13, atol=1e-14)

    # Lower precisions, against the reference on the same rounded inputs.
    for dtype, rtol in ((jnp.float32, 2e-5), (jnp.bfloat16, 3e-2 if case.smooth else 6e-2)):
        low_args, low_kwargs = _cast((args, kwargs), dtype)
        fn, arrays = _as_function(case, low_args, low_kwargs)
        out = jax.jit(fn)(*arrays)
        assert np.all(np.isfinite(np.asarray(out, np.float32)))
        expected = case.ref(*_to_np64(low_args), **_to_np64(low_kwargs))
        np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=rtol, atol=rtol / 10)


# ----------------------------------------------------------------------------------------------------------------------
# Extreme and masked inputs: finite values, finite gradients equal to the analytic ones.

EXTREME = np.array([[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, 1e4, -2.0]])
ONEHOT = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
INT_LABELS = np.array([1, 0])


def _grad_ref_softmax_ce(x, y):
    return ref_softmax(x) * y.sum(-1, keepdims=True) - y


def _grad_ref_focal(x, y, gamma):
    log_1mpt = np.where(y == 1, log_sigmoid(-x), log_sigmoid(x))
    ce = -y * log_sigmoid(x) - (1 - y) * log_sigmoid(-x)
    return (sigmoid(x) - y) * np.exp(gamma * log_1mpt) + ce * gamma * (1 - 2 * y) * np.exp(
        (gamma - 1) * log_1mpt + log_sigmoid(x) + log_sigmoid(-x)
    )


EXTREME_CASES = {
    "softmax_ce": (lambda x: losses.softmax_cross_entropy(x, ONEHOT), lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "safe_softmax_ce": (lambda x: losses.safe_softmax_cross_entropy(x, ONEHOT),
                        lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "integer_ce": (lambda x: losses.softmax_cross_entropy_with_integer_labels(x, INT_LABELS),
                   lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "poly_eps0": (lambda x: losses.poly_loss_cross_entropy(x, ONEHOT, epsilon=0.0),
                  lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "ranking_sum": (lambda x: losses.ranking_softmax_loss(x, ONEHOT, reduce_fn=jnp.sum),
                    lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "fenchel_young_lse": (lambda x: losses.make_fenchel_young_loss(jax.nn.logsumexp)(x, ONEHOT),
                          lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "multiclass_sparsemax": (lambda x: losses.multiclass_sparsemax_loss(x, INT_LABELS),
                             lambda x: ref_simplex(x) - ONEHOT),
    "sigmoid_bce": (lambda x: losses.sigmoid_binary_cross_entropy(x, ONEHOT), lambda x: sigmoid(x) - ONEHOT),
    "focal_gamma_half": (lambda x: losses.sigmoid_focal_loss(x, ONEHOT, gamma=0.5),
                         lambda x: _grad_ref_focal(x, ONEHOT, 0.5)),
    "focal_gamma_2": (lambda x: losses.sigmoid_focal_loss(x, ONEHOT), lambda x: _grad_ref_focal(x, ONEHOT, 2.0)),
    "log_cosh": (lambda x: losses.log_cosh(x), np.tanh),
    "huber": (lambda x: losses.huber_loss(x, delta=2.0), lambda x: np.clip(x, -2.0, 2.0)),
    "kl_log_predictions": (lambda x: losses.kl_divergence(jax.nn.log_softmax(x), ONEHOT),
                           lambda x: _grad_ref_softmax_ce(x, ONEHOT)),
    "ctc": (lambda x: losses.ctc_loss(x[None], jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1))), None),
}


@pytest.mark.parametrize("name", list(EXTREME_CASES))
def test_extreme_logits_finite_values_and_gradients(name):
    fn, grad_ref = EXTREME_CASES[name]
    x = jnp.asarray(EXTREME, jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(fn(x))))(x)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (value, grad)
    if grad_ref is not None:
        np.testing.assert_allclose(grad, grad_ref(EXTREME), rtol=1e-5, atol=1e-6)


def test_minus_inf_logits_and_masked_entries_contribute_zero():
    nan, inf = np.nan, np.inf
    logits = np.array([[2.0, -inf, 0.5, -1.0], [0.3, 1.0, -inf, -inf]])
    labels = np.array([[0.6, 0.0, 0.4, 0.0], [0.0, 1.0, 0.0, 0.0]])
    finite_rows = np.where(np.isinf(logits), -50.0, logits)  # -inf with a zero label = a very small logit
    for fn in (losses.softmax_cross_entropy, losses.safe_softmax_cross_entropy, losses.poly_loss_cross_entropy):
        value, grad = jax.value_and_grad(lambda x: fn(x, labels).sum())(jnp.asarray(logits))
        expected, expected_grad = jax.value_and_grad(lambda x: fn(x, labels).sum())(jnp.asarray(finite_rows))
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        np.testing.assert_allclose(grad, np.where(np.isinf(logits), 0, expected_grad), atol=1e-12)
    # Masked entries may hold anything (inf, NaN): they leave the loss and get a zero gradient.
    where = np.array([[True, False, True, True], [True, True, False, False]])
    garbage = np.where(where, logits, np.array([[0, nan, 0, 0], [0, 0, inf, -inf]]))
    for fn, lab in ((losses.softmax_cross_entropy, labels),
                    (losses.poly_loss_cross_entropy, labels),
                    (losses.softmax_cross_entropy_with_integer_labels, np.array([0, 1])),
                    (lambda x, y, where: losses.ranking_softmax_loss(x, y, where=where, reduce_fn=None), labels)):
        value, grad = jax.value_and_grad(lambda x: fn(x, lab, where=where).sum())(jnp.asarray(garbage))
        clean, clean_grad = jax.value_and_grad(lambda x: fn(x, lab, where=where).sum())(jnp.asarray(finite_rows))
        np.testing.assert_allclose(value, clean, rtol=1e-12)
        np.testing.assert_allclose(grad, clean_grad, atol=1e-12)
        assert np.all(grad[~where] == 0)
    # A fully masked example: loss 0, gradient 0.
    none = np.zeros((2, 4), bool)
    value, grad = jax.value_and_grad(lambda x: losses.softmax_cross_entropy(x, labels, where=none).sum())(
        jnp.asarray(garbage))
    assert value == 0 and np.all(grad == 0)
    value, grad = jax.value_and_grad(
        lambda x: losses.softmax_cross_entropy_with_integer_labels(x, np.array([0, 1]), where=none).sum())(
        jnp.asarray(logits))
    assert value == 0 and np.all(np.isfinite(grad))
    assert losses.ranking_softmax_loss(jnp.asarray(logits), labels, where=none) == 0


def test_divergences_zero_targets_and_masks_give_finite_gradients():
    log_q = np.array([[-np.inf, -0.5, -1.0], [-0.2, -np.inf, -2.0]])
    targets = np.array([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0]])
    for fn in (losses.kl_divergence, losses.generalized_kl_divergence):
        value, (g_q, g_t) = jax.value_and_grad(lambda q, t: fn(q, t).sum(), argnums=(0, 1))(log_q, targets)
        assert np.isfinite(value) and np.all(np.isfinite(g_q)) and np.all(np.isfinite(g_t))
    np.testing.assert_allclose(losses.kl_divergence(log_q, targets), ref_kl(log_q, targets), rtol=1e-12)
    with np.errstate(divide="ignore"):
        log_t = np.log(targets)
    value, (g_q, g_t) = jax.value_and_grad(
        lambda q, t: losses.kl_divergence_with_log_targets(q, t).sum(), argnums=(0, 1))(log_q, log_t)
    assert np.isfinite(value) and np.all(np.isfinite(g_q)) and np.all(np.isfinite(g_t))
    np.testing.assert_allclose(value, ref_kl(log_q, targets).sum(), rtol=1e-12)
    where = np.array([[False, True, True], [True, False, False]])
    junk = np.where(where, log_q, np.nan)
    g = jax.grad(lambda q: losses.kl_divergence(q, targets + 0.1, where=where).sum())(junk)
    assert np.all(np.isfinite(g)) and np.all(g[~where] == 0)


def test_zero_vectors_and_no_positive_pairs_are_not_nan():
    zero = jnp.zeros((2, 3))
    assert np.all(losses.cosine_similarity(zero, jnp.ones((2, 3))) == 0)
    g = jax.grad(lambda p: losses.cosine_distance(p, jnp.ones((2, 3))).sum())(zero)
    assert np.all(np.isfinite(g))
    assert losses.ntxent(jnp.eye(3), jnp.array([0, 1, 2])) == 0
    # Near-collinear embeddings with a tiny temperature: large similarities, still finite.
    e = jnp.array([[1.0, 0.0], [1.0, 1e-3], [-1.0, 0.0], [-1.0, 1e-3]])
    value, grad = jax.value_and_grad(lambda e: losses.ntxent(e, jnp.array([0, 1, 0, 1]), 1e-3))(e)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_ctc_forward_probs_match_optax_and_padding_is_ignored():
    args, _ = _inputs(CASES[CASE_IDS.index("ctc")])
    ours = losses.ctc_loss_with_forward_probs(*args, blank_id=0)
    theirs = optax.losses.ctc_loss_with_forward_probs(*args, blank_id=0)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    logits, logit_pad, labels, label_pad = args
    changed = logits.copy()
    changed[1, 4:] = 1e4  # padded frames
    np.testing.assert_allclose(losses.ctc_loss(changed, logit_pad, labels, label_pad), ours[0], rtol=1e-12)
    # Another blank id (labels avoid it).
    np.testing.assert_allclose(losses.ctc_loss(logits, logit_pad, labels, label_pad, blank_id=3)[0],
                               ref_ctc(logits[:1], logit_pad[:1], labels[:1], label_pad[:1], blank_id=3), rtol=1e-12)
    # bfloat16 logits compute in float32.
    assert losses.ctc_loss(jnp.asarray(logits, jnp.bfloat16), logit_pad, labels, label_pad).dtype == jnp.float32


def test_fenchel_young_and_sparsemax_projection():
    rng = np.random.default_rng(3)
    scores, targets = rng.normal(size=(2, 3, 5)), _dist(rng, (2, 3, 5))
    fy = losses.make_fenchel_young_loss(jax.nn.logsumexp)
    np.testing.assert_allclose(fy(scores, targets), special.logsumexp(scores, -1) - np.sum(targets * scores, -1),
                               rtol=1e-12)
    np.testing.assert_allclose(fy(scores, targets), optax.losses.make_fenchel_young_loss(jax.nn.logsumexp)(
        scores, targets), rtol=1e-12)
    # Sparsemax loss is 0 at a one-hot sparsemax, and works with extra leading axes and -inf scores.
    s = jnp.array([[3.0, 0.0, -jnp.inf, 1.0], [0.1, 0.2, 0.3, 0.0]])
    value, grad = jax.value_and_grad(lambda s: losses.multiclass_sparsemax_loss(s, jnp.array([0, 2])).sum())(s)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert losses.multiclass_sparsemax_loss(s, jnp.array([0, 2]))[0] == 0
    batched = losses.multiclass_sparsemax_loss(jnp.asarray(scores), jnp.zeros((2, 3), int))
    np.testing.assert_allclose(batched, ref_multiclass_sparsemax(scores, np.zeros((2, 3), int)), rtol=1e-12)


def test_ranking_reductions_and_dice_under_jit():
    rng = np.random.default_rng(4)
    logits, labels, where = rng.normal(size=(3, 4)), rng.random((3, 4)), _mask(rng, (3, 4))
    where[1] = False
    per_list = losses.ranking_softmax_loss(logits, labels, where=where, reduce_fn=None)
    assert per_list[1] == 0
    np.testing.assert_allclose(per_list, optax.losses.ranking_softmax_loss(logits, labels, where=where,
                                                                           reduce_fn=None), rtol=1e-12)
    np.testing.assert_allclose(losses.ranking_softmax_loss(logits, labels, where=where, reduce_fn=jnp.sum),
                               per_list.sum(), rtol=1e-12)
    np.testing.assert_allclose(losses.ranking_softmax_loss(logits, labels, where=where),
                               per_list[where.any(-1)].mean(), rtol=1e-12)
    # apply_softmax=False validates concrete probabilities, and is skipped under jit.
    probs = jnp.asarray(_dist(rng, (2, 4, 3)))
    targets = jnp.asarray(_onehot(rng, (2, 4), 3))
    np.testing.assert_allclose(jax.jit(lambda p: losses.dice_loss(p, targets, apply_softmax=False))(probs),
                               losses.dice_loss(probs, targets, apply_softmax=False), rtol=1e-12)
    with pytest.raises(ValueError, match="dice_loss: with apply_softmax=False, predictions must be probabilities"):
        losses.dice_loss(2 * probs, targets, apply_softmax=False)


def test_convex_kl_divergence_warns():
    with pytest.warns(DeprecationWarning, match="generalized_kl_divergence"):
        losses.convex_kl_divergence(jnp.zeros(3), jnp.ones(3))


def test_traced_hyperparameters():
    x, y = jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[0.0, 1.0, 0.0]])
    grads = jax.grad(lambda g, e, d: (losses.sigmoid_focal_loss(x, y, gamma=g).sum()
                                      + losses.poly_loss_cross_entropy(x, y, epsilon=e).sum()
                                      + losses.huber_loss(x, delta=d).sum()), argnums=(0, 1, 2))(2.0, 1.0, 0.7)
    assert all(np.isfinite(g) and g != 0 for g in grads)
    sweep = jax.vmap(lambda a: losses.smooth_labels(y, a))(jnp.array([0.0, 0.3]))
    np.testing.assert_allclose(sweep[0], y)
    np.testing.assert_allclose(sweep[1], 0.7 * y + 0.1)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the loss.

X, ONE_HOT3 = jnp.zeros((2, 4)), jnp.zeros((2, 3))


@pytest.mark.parametrize("call, error, message", [
    (lambda: losses.softmax_cross_entropy(X, ONE_HOT3), ValueError,
     r"softmax_cross_entropy: logits shape \(2, 4\) and labels shape \(2, 3\) do not broadcast"),
    (lambda: losses.safe_softmax_cross_entropy(X, ONE_HOT3), ValueError, "safe_softmax_cross_entropy: logits shape"),
    (lambda: losses.softmax_cross_entropy_with_integer_labels(X, jnp.zeros(3, int)), ValueError,
     r"softmax_cross_entropy_with_integer_labels: labels must have the shape \(2,\)"),
    (lambda: losses.softmax_cross_entropy_with_integer_labels(X, jnp.zeros(2)), TypeError,
     "softmax_cross_entropy_with_integer_labels: labels must be an integer array"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 4), int), X), TypeError,
     "softmax_cross_entropy: logits must be a floating-point array"),
    (lambda: losses.softmax_cross_entropy(X, X, where=jnp.ones((3,), bool)), ValueError,
     r"softmax_cross_entropy: where must have the logits' shape \(2, 4\) or .* got \(3,\)"),
    (lambda: losses.sigmoid_binary_cross_entropy(X, ONE_HOT3), ValueError, "sigmoid_binary_cross_entropy: logits"),
    (lambda: losses.sigmoid_focal_loss(X, ONE_HOT3), ValueError, "sigmoid_focal_loss: logits"),
    (lambda: losses.poly_loss_cross_entropy(X, ONE_HOT3), ValueError, "poly_loss_cross_entropy: logits"),
    (lambda: losses.kl_divergence(X, ONE_HOT3), ValueError, "kl_divergence: log_predictions shape"),
    (lambda: losses.perceptron_loss(X, jnp.zeros(4)), ValueError, "perceptron_loss: predictor_outputs and targets"),
    (lambda: losses.squared_error(X, jnp.zeros(4)), ValueError, "squared_error: predictions and targets"),
    (lambda: losses.multiclass_hinge_loss(X, jnp.zeros(3, int)), ValueError, "multiclass_hinge_loss: labels must"),
    (lambda: losses.multiclass_sparsemax_loss(X, jnp.zeros(2)), TypeError, "multiclass_sparsemax_loss: labels"),
    (lambda: losses.make_fenchel_young_loss(jax.nn.logsumexp)(X, ONE_HOT3), ValueError, "fenchel_young_loss"),
    (lambda: losses.ranking_softmax_loss(X, ONE_HOT3), ValueError, "ranking_softmax_loss: logits shape"),
    (lambda: losses.dice_loss(X, ONE_HOT3), ValueError, "dice_loss: predictions and targets"),
    (lambda: losses.dice_loss(X, X, reduction="avg"), ValueError, "dice_loss: reduction must be one of"),
    (lambda: losses.ntxent(X, jnp.zeros(3, int)), ValueError, r"ntxent: embeddings must be \[batch, dim\]"),
    (lambda: losses.triplet_margin_loss(X, ONE_HOT3, X), ValueError, "triplet_margin_loss: anchors shape"),
    (lambda: losses.cosine_similarity(X, ONE_HOT3), ValueError, "cosine_similarity: predictions shape"),
    (lambda: losses.ctc_loss(jnp.zeros((2, 5, 3)), jnp.zeros((2, 4)), jnp.zeros((2, 2), int), jnp.zeros((2, 2))),
     ValueError, r"ctc_loss: logit_paddings must have shape \[B, T\]"),
    (lambda: losses.ctc_loss(jnp.zeros((2, 5, 3)), jnp.zeros((2, 5)), jnp.zeros((3, 2), int), jnp.zeros((3, 2))),
     ValueError, "ctc_loss: labels have batch size 3"),
])
def test_bad_input_errors_name_the_loss(call, error, message):
    with pytest.raises(error, match=message):
        call()
