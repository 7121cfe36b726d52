"""Agreement with Optax, used here only as a test oracle.

Where Optax implements the same algorithm with the same convention, the same
constructor call on ``jaxopt_lite`` and on ``optax`` must give the same
updates for 200 steps, and the same state layout (NamedTuple field names).

Deliberate convention differences are not compared here (their formulas are
checked in ``test_reference.py``):

- ``nadam(momentum_decay=...)`` / ``scale_by_nadam``: Dozat's momentum schedule
  as ``torch.optim.NAdam``; Optax's ``nadam`` is the constant-``b1`` variant
  (``momentum_decay=None``, the default, which is compared).
- ``amsgrad(max_over="raw")``: the maximum over the raw second moment, as the
  paper and PyTorch; Optax takes it over the debiased moment (the default).
- ``add_noise`` / ``noisy_sgd``: same distribution, but the PRNG key is split
  differently, so the draws differ; only their statistics are compared.
- ``adadelta(learning_rate=None)``: here the paper's method (a learning rate of
  1, descent); Optax skips the learning-rate transform and so ascends (its
  ``None`` means no scaling, which also drops the sign flip). ``adadelta(1.0)``
  is compared.
- ``clip_by_norm`` (per-leaf norm clipping) has no Optax counterpart.
- ``adaptive_grad_clip``: for rank-3 leaves Optax reduces over axis 0 only,
  jaxopt_lite over every axis but the last; the leaves here are of rank <= 2.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol

STEPS = 200
NAMES = ("b", "s", "w")
SHAPES = {"b": (5,), "s": (), "w": (3, 4)}
_rng = np.random.default_rng(7)
P0 = {k: _rng.normal(size=SHAPES[k]) for k in NAMES}
TARGET = {k: _rng.normal(size=SHAPES[k]) for k in NAMES}
CURV = {k: _rng.uniform(0.5, 2.0, size=SHAPES[k]) for k in NAMES}
PHASE = {k: _rng.uniform(0.0, 2 * np.pi, size=SHAPES[k]) for k in NAMES}
INDEX = {k: np.arange(int(np.prod(SHAPES[k]))).reshape(SHAPES[k]) for k in NAMES}


def grad_fn(params, t, dtype, nans=False):
    """Gradient of a quadratic plus 0.1 sin(0.7 t + phase); optional NaNs at some coordinates."""
    tt = jnp.asarray(t, dtype)
    out = {}
    for k in NAMES:
        g = CURV[k].astype(dtype) * (params[k] - TARGET[k].astype(dtype))
        g = g + jnp.asarray(0.1, dtype) * jnp.sin(jnp.asarray(0.7, dtype) * tt + PHASE[k].astype(dtype))
        if nans:
            g = jnp.where((INDEX[k] + t) % 4 == 0, jnp.asarray(jnp.nan, dtype), g)
        out[k] = g.astype(dtype)
    return out


def start_params(dtype, nonneg=False):
    return {k: jnp.asarray(np.abs(P0[k]) if nonneg else P0[k], dtype) for k in NAMES}


def _sched(c):
    return 0.1 * 0.98**c


def _neg_sched(c):
    return -0.08 * (1.0 + 0.5 * 0.97**c)


def _wd_sched(c):
    return 0.05 + 0.05 * 0.99**c


MASK = {"b": False, "s": True, "w": True}
LR, ALR = 0.05, 0.01


def _with_lr(make, lr=ALR):
    return lambda m: m.chain(make(m), m.scale_by_learning_rate(lr))


# (id, factory taking the module (jaxopt_lite or optax), options)
CASES = [
    ("scale", lambda m: m.scale(-0.1), {}),
    ("scale_by_learning_rate", lambda m: m.scale_by_learning_rate(0.1), {}),
    ("scale_by_learning_rate_schedule", lambda m: m.scale_by_learning_rate(_sched), {}),
    ("scale_by_schedule", lambda m: m.scale_by_schedule(_neg_sched), {}),
    ("scale_by_sign", _with_lr(lambda m: m.scale_by_sign()), {"sign": True}),
    ("clip", _with_lr(lambda m: m.clip(0.5), 0.2), {}),
    ("clip_by_global_norm", _with_lr(lambda m: m.clip_by_global_norm(2.0), 0.2), {}),
    ("adaptive_grad_clip", _with_lr(lambda m: m.adaptive_grad_clip(0.2), 0.2), {}),
    ("adaptive_grad_clip_big_eps", _with_lr(lambda m: m.adaptive_grad_clip(0.1, eps=2.0), 0.2), {}),
    ("trace", _with_lr(lambda m: m.trace(0.9), LR), {}),
    ("trace_nesterov", _with_lr(lambda m: m.trace(0.9, nesterov=True), LR), {}),
    ("ema", _with_lr(lambda m: m.ema(0.8), LR), {}),
    ("ema_no_debias", _with_lr(lambda m: m.ema(0.8, debias=False), LR), {}),
    ("scale_by_adam", _with_lr(lambda m: m.scale_by_adam()), {}),
    ("scale_by_adam_nesterov", _with_lr(lambda m: m.scale_by_adam(nesterov=True)), {}),
    ("scale_by_adam_eps_root", _with_lr(lambda m: m.scale_by_adam(0.8, 0.99, 1e-6, 1e-4)), {}),
    ("scale_by_amsgrad", _with_lr(lambda m: m.scale_by_amsgrad(b2=0.99)), {}),
    ("scale_by_amsgrad_no_bias_correction",
     _with_lr(lambda m: m.scale_by_amsgrad(b2=0.99, bias_correction_mu=False, bias_correction_nu=False)), {}),
    ("scale_by_adamax", _with_lr(lambda m: m.scale_by_adamax()), {}),
    ("scale_by_rms", _with_lr(lambda m: m.scale_by_rms()), {}),
    ("scale_by_rms_options", _with_lr(lambda m: m.scale_by_rms(0.95, 1e-4, 0.5, eps_in_sqrt=False)), {}),
    ("scale_by_rms_bias_correction", _with_lr(lambda m: m.scale_by_rms(bias_correction=True)), {}),
    ("scale_by_stddev", _with_lr(lambda m: m.scale_by_stddev()), {"rtol32": 1e-3}),
    ("scale_by_stddev_options", _with_lr(lambda m: m.scale_by_stddev(0.8, 1e-3, 0.5, False, True)),
     {"rtol32": 1e-3}),
    ("scale_by_rss", _with_lr(lambda m: m.scale_by_rss(), 0.1), {}),
    ("scale_by_adadelta", _with_lr(lambda m: m.scale_by_adadelta(0.9, 1e-4), 1.0), {}),
    ("scale_by_radam", _with_lr(lambda m: m.scale_by_radam()), {}),
    ("scale_by_radam_nesterov", _with_lr(lambda m: m.scale_by_radam(b2=0.99, threshold=4.0, nesterov=True)), {}),
    ("scale_by_lion", _with_lr(lambda m: m.scale_by_lion()), {"sign": True}),
    ("add_decayed_weights", lambda m: m.chain(m.add_decayed_weights(0.1), m.scale_by_learning_rate(LR)), {}),
    ("add_decayed_weights_schedule",
     lambda m: m.chain(m.add_decayed_weights(_wd_sched), m.scale_by_learning_rate(LR)), {}),
    ("add_decayed_weights_mask", lambda m: m.chain(m.add_decayed_weights(0.1, MASK), m.scale_by_learning_rate(LR)), {}),
    ("keep_params_nonnegative", lambda m: m.chain(m.scale_by_learning_rate(0.2), m.keep_params_nonnegative()),
     {"nonneg": True}),
    ("zero_nans", lambda m: m.chain(m.zero_nans(), m.scale_by_learning_rate(0.1)), {"nans": True}),
    # aliases, with their defaults
    ("sgd", lambda m: m.sgd(0.1), {}),
    ("sgd_momentum", lambda m: m.sgd(LR, momentum=0.9), {}),
    ("sgd_nesterov", lambda m: m.sgd(LR, momentum=0.9, nesterov=True), {}),
    ("sign_sgd", lambda m: m.sign_sgd(ALR), {"sign": True}),
    ("adagrad", lambda m: m.adagrad(0.1), {}),
    ("adadelta", lambda m: m.adadelta(1.0), {}),
    ("adadelta_lr_wd", lambda m: m.adadelta(0.5, 0.95, 1e-4, weight_decay=0.01), {}),
    ("adadelta_wd_mask", lambda m: m.adadelta(0.5, weight_decay=0.1, weight_decay_mask=MASK), {}),
    ("rmsprop", lambda m: m.rmsprop(ALR), {}),
    ("rmsprop_centered", lambda m: m.rmsprop(ALR, centered=True), {"rtol32": 1e-3}),
    ("rmsprop_momentum", lambda m: m.rmsprop(ALR, momentum=0.9), {}),
    ("rmsprop_nesterov", lambda m: m.rmsprop(ALR, momentum=0.9, nesterov=True), {}),
    ("rmsprop_eps_outside", lambda m: m.rmsprop(ALR, eps=1e-6, eps_in_sqrt=False, bias_correction=True), {}),
    ("adam", lambda m: m.adam(ALR), {}),
    ("adam_nesterov", lambda m: m.adam(ALR, nesterov=True), {}),
    ("adamw", lambda m: m.adamw(ALR), {}),
    ("adamw_wd_mask", lambda m: m.adamw(ALR, weight_decay=0.1, mask=MASK), {}),
    ("adamw_wd_mask_fn", lambda m: m.adamw(ALR, weight_decay=0.1, mask=lambda p: {k: k != "b" for k in p}), {}),
    ("amsgrad", lambda m: m.amsgrad(ALR), {}),
    ("adamax", lambda m: m.adamax(ALR), {}),
    ("adamaxw", lambda m: m.adamaxw(ALR, weight_decay=0.1), {}),
    ("nadam", lambda m: m.nadam(ALR), {}),
    ("nadamw", lambda m: m.nadamw(ALR, weight_decay=0.1), {}),
    ("radam", lambda m: m.radam(ALR), {}),
    # documented differences: these must NOT agree with Optax
    ("nadam_torch_vs_optax", lambda m: m.nadam(ALR, momentum_decay=0.004) if m is jol else m.nadam(ALR),
     {"differs": True}),
    ("amsgrad_raw_vs_optax", lambda m: m.amsgrad(ALR, b2=0.99, max_over="raw") if m is jol else m.amsgrad(ALR, b2=0.99),
     {"differs": True}),
    ("lion", lambda m: m.lion(ALR / 3), {"sign": True}),
    ("lion_wd", lambda m: m.lion(ALR / 3, 0.95, 0.98, weight_decay=0.5), {"sign": True}),
]


def _pair_history(case, dtype):
    """jaxopt_lite's trajectory, with Optax's update computed from the same gradient, params and history.

    Optax keeps its own state but is fed jaxopt_lite's inputs at every step, so any
    difference in an update is a difference of the rule, not a drift of trajectories.
    """
    _, make, opts = case
    txj, txo = make(jol), make(optax)
    nans, nonneg = opts.get("nans", False), opts.get("nonneg", False)

    def body(carry, t):
        p, sj, so = carry
        g = grad_fn(p, t, dtype, nans)
        uj, sj = txj.update(g, sj, p)
        uo, so = txo.update(g, so, p)
        return (jol.apply_updates(p, uj), sj, so), (uj, uo, p)

    def run():
        p0 = start_params(dtype, nonneg)
        _, hist = jax.lax.scan(body, (p0, txj.init(p0), txo.init(p0)), jnp.arange(STEPS))
        return hist

    return run


@functools.cache
def parity_runs(dtype):
    """All cases for one dtype in one compiled computation; a case that fails to trace keeps its exception."""
    results, runs = {}, {}
    for case in CASES:
        run = _pair_history(case, dtype)
        try:
            jax.eval_shape(run)
        except Exception as exc:  # noqa: BLE001 - a library error is reported by that case's test only
            results[case[0]] = exc
        else:
            runs[case[0]] = run
    out = jax.jit(lambda: {cid: run() for cid, run in runs.items()})()
    for cid, hist in out.items():
        results[cid] = jax.tree.map(lambda x: np.asarray(x, np.float64), hist)
    return results


def _assert_trees_close(a, b, rtol, atol, what):
    for k in NAMES:
        x, y = a[k], b[k]
        scale = np.maximum(1.0, np.max(np.abs(y), axis=tuple(range(1, y.ndim)), keepdims=True)) if y.ndim > 1 \
            else np.maximum(1.0, np.abs(y))
        bad = ~(np.abs(x - y) <= atol * scale + rtol * np.abs(y))
        if bad.any():
            t = int(np.argwhere(bad)[0][0])
            raise AssertionError(
                f"{what}: first mismatch at step {t}, leaf {k!r}:\n jaxopt_lite {x[t]}\n optax       {y[t]}"
            )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_same_updates_as_optax(case, dtype):
    cid, _, opts = case
    result = parity_runs(dtype)[cid]
    if isinstance(result, Exception):
        raise result
    uj, uo, p = result
    moved = sum(float(np.abs(p[k][-1] - p[k][0]).sum()) for k in NAMES)
    assert moved > 1e-2, f"{cid}: the params did not move, the comparison is vacuous"
    rtol, atol = (1e-11, 1e-14) if dtype == np.float64 else (opts.get("rtol32", 2e-5), 1e-7)
    if opts.get("differs"):
        # A documented convention difference: it must show (else the flag, or the docs, are wrong).
        with pytest.raises(AssertionError):
            _assert_trees_close(uj, uo, 1e-3, 1e-6, cid)
        return
    _assert_trees_close(uj, uo, rtol, atol, f"{cid}: updates from the same inputs")


# ----------------------------------------------------------------------------
# State layout: the same NamedTuple fields, nested the same way, leaves of the same shapes.
# ----------------------------------------------------------------------------


def _layout(state):
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return ("namedtuple", tuple(state._fields), tuple(_layout(x) for x in state))
    if isinstance(state, (tuple, list)):
        return ("seq", tuple(_layout(x) for x in state))
    if isinstance(state, dict):
        return ("dict", tuple((k, _layout(state[k])) for k in sorted(state)))
    if state is None:
        return None
    return ("leaf", tuple(jnp.shape(state)))


SAME_LAYOUT = [c for c in CASES if c[0] != "nadam_torch_vs_optax"]  # Dozat's schedule also keeps mu_product


@pytest.mark.parametrize("case", SAME_LAYOUT, ids=[c[0] for c in SAME_LAYOUT])
def test_state_layout_matches_optax(case):
    _, make, _ = case
    params = start_params(np.float64)
    sj, so = make(jol).init(params), make(optax).init(params)
    assert _layout(sj) == _layout(so)


STATE_CLASSES = [
    ("scale_by_adam", lambda m: m.scale_by_adam(), ("count", "mu", "nu")),
    ("scale_by_adamax", lambda m: m.scale_by_adamax(), ("count", "mu", "nu")),
    ("scale_by_radam", lambda m: m.scale_by_radam(), ("count", "mu", "nu")),
    ("scale_by_amsgrad", lambda m: m.scale_by_amsgrad(), ("count", "mu", "nu", "nu_max")),
    ("scale_by_rms", lambda m: m.scale_by_rms(), ("nu",)),
    ("scale_by_rms_bias_correction", lambda m: m.scale_by_rms(bias_correction=True), ("count", "nu")),
    ("scale_by_stddev", lambda m: m.scale_by_stddev(), ("mu", "nu")),
    ("scale_by_stddev_bias_correction", lambda m: m.scale_by_stddev(bias_correction=True), ("count", "mu", "nu")),
    ("scale_by_rss", lambda m: m.scale_by_rss(), ("sum_of_squares",)),
    ("scale_by_adadelta", lambda m: m.scale_by_adadelta(), ("e_g", "e_x")),
    ("scale_by_lion", lambda m: m.scale_by_lion(), ("count", "mu")),
    ("trace", lambda m: m.trace(0.9), ("trace",)),
    ("ema", lambda m: m.ema(0.9), ("count", "ema")),
    ("scale_by_schedule", lambda m: m.scale_by_schedule(_sched), ("count",)),
    ("add_decayed_weights_schedule", lambda m: m.add_decayed_weights(_wd_sched), ("count",)),
    ("add_noise", lambda m: m.add_noise(0.1, 0.55, 0), ("count", "rng_key")),
    ("zero_nans", lambda m: m.zero_nans(), ("found_nan",)),
    ("clip", lambda m: m.clip(1.0), ()),
    ("clip_by_global_norm", lambda m: m.clip_by_global_norm(1.0), ()),
    ("adaptive_grad_clip", lambda m: m.adaptive_grad_clip(0.1), ()),
    ("add_decayed_weights", lambda m: m.add_decayed_weights(0.1), ()),
    ("keep_params_nonnegative", lambda m: m.keep_params_nonnegative(), ()),
    ("scale", lambda m: m.scale(0.1), ()),
    ("scale_by_sign", lambda m: m.scale_by_sign(), ()),
]


@pytest.mark.parametrize("name,make,fields", STATE_CLASSES, ids=[c[0] for c in STATE_CLASSES])
def test_state_field_names_match_optax(name, make, fields):
    params = start_params(np.float64)
    sj, so = make(jol).init(params), make(optax).init(params)
    assert tuple(sj._fields) == tuple(so._fields) == fields
    # Same-named state classes are interchangeable by field name.
    if hasattr(jol, type(so).__name__):
        assert jol.__dict__[type(so).__name__]._fields == type(so)._fields


@pytest.mark.parametrize("name", ["ScaleByAdamState", "ScaleByAmsgradState", "ScaleByRmsState", "ScaleByRssState",
                                  "ScaleByRStdDevState", "ScaleByAdaDeltaState", "ScaleByLionState", "TraceState",
                                  "EmaState", "ScaleByScheduleState", "AddNoiseState", "ZeroNansState",
                                  "EmptyState"])
def test_exported_state_classes_have_optax_fields(name):
    assert getattr(jol, name)._fields == getattr(optax, name)._fields


# ----------------------------------------------------------------------------
# Signatures: the same defaults; every Optax argument is accepted.
# ----------------------------------------------------------------------------

FUNCTIONS = [
    "scale", "scale_by_learning_rate", "scale_by_schedule", "scale_by_sign", "clip",
    "clip_by_global_norm", "adaptive_grad_clip", "trace", "ema", "scale_by_adam", "scale_by_amsgrad",
    "scale_by_adamax", "scale_by_rms", "scale_by_stddev", "scale_by_rss", "scale_by_adadelta", "scale_by_radam",
    "scale_by_lion", "add_decayed_weights", "add_noise", "keep_params_nonnegative", "zero_nans",
    "sgd", "noisy_sgd", "sign_sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "amsgrad", "adamax",
    "adamaxw", "nadam", "nadamw", "radam", "lion",
]

# Optax arguments jaxopt_lite does not take, by design:
NOT_TAKEN = {
    # the constant-b1 NAdam is momentum_decay=None (the default); a number selects torch's schedule
    "nadam": {"nesterov"},
    "nadamw": {"nesterov"},
    # Optax's 'smooth'/'refined' Lion variants
    "scale_by_lion": {"mode", "smooth_beta"},
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_defaults_match_optax(name):
    pj = inspect.signature(getattr(jol, name)).parameters
    po = inspect.signature(getattr(optax, name)).parameters
    missing = set(po) - set(pj)
    assert missing <= NOT_TAKEN.get(name, set()), f"{name}: Optax arguments not accepted: {missing}"
    empty = inspect.Parameter.empty
    for arg in set(pj) & set(po):
        dj, do = pj[arg].default, po[arg].default
        if name == "scale_by_learning_rate" and arg == "learning_rate":
            continue  # Optax allows None (then a no-op); here it is required
        assert (dj is empty) == (do is empty), f"{name}({arg}): required in one library only"
        if dj is not empty:
            assert dj == do, f"{name}({arg}): default {dj!r} here, {do!r} in Optax"
    # Positional arguments come in Optax's order, so positional calls mean the same thing.
    positional = lambda ps: [a for a, p in ps.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    shared = [a for a in positional(po) if a in pj]
    assert positional(pj)[: len(shared)] == shared


def test_adadelta_default_learning_rate_is_a_descent_step():
    """adadelta() is adadelta(1.0) (Zeiler's method); Optax's adadelta() moves the other way (documented)."""
    params = start_params(np.float64)
    g = grad_fn(params, 0, np.float64)
    default, _ = jol.adadelta().update(g, jol.adadelta().init(params), params)
    one, _ = jol.adadelta(1.0).update(g, jol.adadelta(1.0).init(params), params)
    ox, _ = optax.adadelta().update(g, optax.adadelta().init(params), params)
    for k in NAMES:
        np.testing.assert_array_equal(default[k], one[k])
        assert np.all(np.sign(default[k]) == -np.sign(g[k]))  # a descent step
        np.testing.assert_allclose(default[k], -np.asarray(ox[k]), rtol=1e-13)


# ----------------------------------------------------------------------------
# Noise: the same distribution (the draws differ: keys are split differently).
# ----------------------------------------------------------------------------

N_KEYS = 500


@functools.cache
def _noise_variances():
    eta, gamma, lr = 0.5, 0.55, 0.05
    makers = {
        "add_noise": lambda m, key: m.chain(m.add_noise(eta, gamma, key), m.scale_by_learning_rate(lr)),
        "noisy_sgd": lambda m, key: m.noisy_sgd(lr, eta, gamma, key),
    }

    def one(kind, m, key):
        tx = makers[kind](m, key)
        params = start_params(np.float64)

        def body(carry, t):
            p, s = carry
            g = grad_fn(p, t, np.float64)
            u, s = tx.update(g, s, p)
            n = jnp.concatenate([jnp.ravel(-u[k] / lr - g[k]) for k in NAMES])
            return (jol.apply_updates(p, u), s), n

        return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(STEPS))[1]

    keys = jax.random.split(jax.random.key(5), N_KEYS)  # typed keys: Optax does not take raw ones under vmap
    combos = [(kind, m) for kind in makers for m in (jol, optax)]
    out = jax.jit(lambda ks: [jax.vmap(functools.partial(one, *c))(ks) for c in combos])(keys)
    expected = eta / (1.0 + np.arange(STEPS)) ** gamma
    return {(kind, m.__name__): np.asarray(o) for (kind, m), o in zip(combos, out)}, expected


@pytest.mark.parametrize("kind", ["add_noise", "noisy_sgd"])
def test_noise_distribution_matches_optax(kind):
    runs, expected = _noise_variances()
    nj, no = runs[(kind, "jaxopt_lite")], runs[(kind, "optax")]
    vj, vo = nj.var(axis=(0, 2)), no.var(axis=(0, 2))
    # Both follow eta / (1 + t)^gamma (9000 samples per step: ~1.5% standard error).
    np.testing.assert_allclose(vj, expected, rtol=0.1)
    np.testing.assert_allclose(vo, expected, rtol=0.1)
    np.testing.assert_allclose(vj.mean() / vo.mean(), 1.0, rtol=0.02)
    np.testing.assert_allclose(np.mean(vj / expected), 1.0, rtol=0.01)
    assert abs(nj.mean()) < 0.01 and abs(no.mean()) < 0.01
