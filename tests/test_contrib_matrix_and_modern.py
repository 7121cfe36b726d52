"""ADOPT, AdEMAMix (both forms), Muon, SAM and GaLore against NumPy references written
from the papers and against ``optax.contrib`` (Optax 0.2.8), step by step over 200 float64 steps.

Gradients are a fixed random sequence (not fed back from the parameters) unless a test says so:
then every step's update is a function of the gradients only, and comparisons test the rule, not
the conditioning of a trajectory. Each case runs both optimizers in one jitted ``lax.scan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol
from jaxopt_lite import contrib

optax = pytest.importorskip("optax")

STEPS = 200


def _tree(rng, shapes, dtype=np.float64):
    return {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}


def _grads(rng, shapes, steps=STEPS, dtype=np.float64):
    return {k: rng.normal(size=(steps, *s)).astype(dtype) for k, s in shapes.items()}


def run_both(ours, theirs, params, grads, extra=None):
    """Stacked updates of ``ours`` and ``theirs`` fed the same gradients and parameters
    (the parameters follow ``ours``)."""
    extra = extra or {}

    @jax.jit
    def run(params, grads):
        def body(carry, g):
            p, s1, s2 = carry
            u1, s1 = ours.update(g, s1, p, **extra)
            u2, s2 = theirs.update(g, s2, p, **extra)
            return (jol.apply_updates(p, u1), s1, s2), (u1, u2)

        return jax.lax.scan(body, (params, ours.init(params), theirs.init(params)), grads)[1]

    return jax.tree.map(np.asarray, run(jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads)))


def assert_close(actual, expected, rtol, atol=0.0):
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=k)


SHAPES = {"v": (3,), "m": (2, 3)}


# --------------------------------------------------------------------------- #
# ADOPT (Taniguchi et al., 2024, Algorithm 1, with Optax's clip t**0.25)
# --------------------------------------------------------------------------- #


def adopt_reference(grads, lr, b1, b2, eps, clip, nesterov):
    out = {}
    for k, gs in grads.items():
        m, v, ups = np.zeros_like(gs[0]), np.zeros_like(gs[0]), []
        for t, g in enumerate(gs):
            if t == 0:
                v = g * g
                ups.append(np.zeros_like(g))
                continue
            n = g / np.maximum(np.sqrt(v), eps)
            if clip:
                n = np.clip(n, -(t**0.25), t**0.25)
            m = b1 * m + (1 - b1) * n
            d = b1 * m + (1 - b1) * n if nesterov else m
            v = b2 * v + (1 - b2) * g * g
            ups.append(-lr * d)
        out[k] = np.stack(ups)
    return out


@pytest.mark.parametrize("clip,nesterov", [(True, False), (False, True)])
def test_adopt(clip, nesterov):
    rng = np.random.default_rng(0)
    params, grads = _tree(rng, SHAPES), _grads(rng, SHAPES)
    kw = dict(b1=0.8, b2=0.99, eps=1e-6, nesterov=nesterov, use_clipping=clip)
    ours, theirs = run_both(contrib.adopt(0.05, **kw), optax.contrib.adopt(0.05, **kw), params, grads)
    assert_close(ours, theirs, 1e-12, 1e-300)
    assert_close(ours, adopt_reference(grads, 0.05, 0.8, 0.99, 1e-6, clip, nesterov), 1e-10, 1e-300)
    assert jol.adopt is contrib.adopt


# --------------------------------------------------------------------------- #
# AdEMAMix (Pagliardini et al., 2024, Algorithm 1) and the simplified form (Morwani et al., 2025)
# --------------------------------------------------------------------------- #


def ademamix_reference(params, grads, lr, b1, b2, b3, alpha, eps, wd):
    out = {}
    for k, gs in grads.items():
        p = params[k].copy()
        m1, m2, nu, ups = 0 * p, 0 * p, 0 * p, []
        for t, g in enumerate(gs, start=1):
            m1 = b1 * m1 + (1 - b1) * g
            m2 = b3 * m2 + (1 - b3) * g
            nu = b2 * nu + (1 - b2) * g * g
            u = -lr * ((m1 / (1 - b1**t) + alpha * m2) / (np.sqrt(nu / (1 - b2**t)) + eps) + wd * p)
            ups.append(u)
            p = p + u
        out[k] = np.stack(ups)
    return out


def simplified_ademamix_reference(params, grads, lr, b1, b2, alpha, eps, wd):
    out = {}
    for k, gs in grads.items():
        p = params[k].copy()
        m, n, ups = 0 * p, 0 * p, []
        for t, g in enumerate(gs, start=1):
            m = b1 * m + g
            n = b2 * n + (1 - b2) * g * g
            u = -lr * ((m + alpha * g) / (np.sqrt(n / (1 - b2**t)) + eps) + wd * p)
            ups.append(u)
            p = p + u
        out[k] = np.stack(ups)
    return out


def test_ademamix():
    rng = np.random.default_rng(1)
    params, grads = _tree(rng, SHAPES), _grads(rng, SHAPES)
    kw = dict(b1=0.9, b2=0.99, b3=0.995, alpha=4.0, eps=1e-8, weight_decay=0.01)
    ours, theirs = run_both(contrib.ademamix(0.01, **kw), optax.contrib.ademamix(0.01, **kw), params, grads)
    assert_close(ours, theirs, 1e-12)
    assert_close(ours, ademamix_reference(params, grads, 0.01, 0.9, 0.99, 0.995, 4.0, 1e-8, 0.01), 1e-10)


def test_ademamix_schedules_of_b3_and_alpha_follow_count_m2():
    rng = np.random.default_rng(2)
    params, grads = _tree(rng, SHAPES), _grads(rng, SHAPES, steps=20)
    b3 = lambda c: 0.9 + 0.09 * jnp.minimum(c, 10) / 10  # noqa: E731
    alpha = lambda c: 5.0 * jnp.minimum(c, 10) / 10  # noqa: E731
    ours, theirs = run_both(
        contrib.ademamix(0.01, b3=b3, alpha=alpha), optax.contrib.ademamix(0.01, b3=b3, alpha=alpha), params, grads
    )
    assert_close(ours, theirs, 1e-12)


def test_simplified_ademamix():
    rng = np.random.default_rng(3)
    params, grads = _tree(rng, SHAPES), _grads(rng, SHAPES)
    kw = dict(b1=0.95, b2=0.9, alpha=2.0, eps=1e-8, weight_decay=0.01)
    ours, theirs = run_both(
        contrib.simplified_ademamix(0.01, **kw), optax.contrib.simplified_ademamix(0.01, **kw), params, grads
    )
    assert_close(ours, theirs, 1e-12)
    assert_close(ours, simplified_ademamix_reference(params, grads, 0.01, 0.95, 0.9, 2.0, 1e-8, 0.01), 1e-10)


def test_ademamix_state_names_match_optax():
    p = {"a": jnp.zeros(3)}
    assert contrib.scale_by_ademamix().init(p)._fields == optax.contrib.scale_by_ademamix().init(p)._fields
    s = contrib.scale_by_simplified_ademamix().init(p)
    assert s._fields == optax.contrib.scale_by_simplified_ademamix().init(p)._fields == ("t", "m", "n")
    assert type(s).__name__ == "ScaleBySimplifiedAdEMAMixState"


# --------------------------------------------------------------------------- #
# Muon (Jordan, 2024): NumPy Newton-Schulz + Nesterov momentum, AdamW on the other leaves
# --------------------------------------------------------------------------- #

JORDAN = (3.4445, -4.7750, 2.0315)


def np_newton_schulz(m, coeffs, steps, eps=1e-8):
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / (np.linalg.norm(x) + eps)
    rows = [coeffs] * steps if np.ndim(coeffs) == 1 else list(coeffs)
    for a, b, c in rows:
        g = x @ x.T
        x = a * x + (b * g + c * g @ g) @ x
    return x.T if m.shape[0] > m.shape[1] else x


def muon_reference(params, grads, lr, beta, wd, adam_b1=0.9, adam_b2=0.999, eps=1e-8, debias=True):
    out = {}
    for k, gs in grads.items():
        p = params[k].copy()
        m, v, ups = 0 * p, 0 * p, []
        for t, g in enumerate(gs, start=1):
            if p.ndim == 2:  # Nesterov look-ahead of the debiased momentum, orthogonalised, width-scaled
                m = beta * m + (1 - beta) * g
                look = beta * m / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
                if not debias:  # Jordan's and torch's form
                    look = beta * m + (1 - beta) * g
                o = np_newton_schulz(look, JORDAN, 5) * np.sqrt(max(1.0, p.shape[1] / p.shape[0]))
                u = -lr * (o + wd * p)
            else:  # AdamW with Nesterov (Optax's nadamw form), no weight decay
                m = adam_b1 * m + (1 - adam_b1) * g
                v = adam_b2 * v + (1 - adam_b2) * g * g
                look = adam_b1 * m / (1 - adam_b1 ** (t + 1)) + (1 - adam_b1) * g / (1 - adam_b1**t)
                u = -lr * look / (np.sqrt(v / (1 - adam_b2**t)) + eps)
            ups.append(u)
            p = p + u
        out[k] = np.stack(ups)
    return out


MUON_SHAPES = {"v": (3,), "m": (2, 3), "tall": (4, 3), "same": (3, 2), "stack": (2, 3, 4)}


def test_muon_against_numpy_and_optax():
    rng = np.random.default_rng(4)
    shapes = {k: s for k, s in MUON_SHAPES.items() if len(s) <= 2}
    params, grads = _tree(rng, shapes), _grads(rng, shapes)
    ours, theirs = run_both(
        contrib.muon(0.02, weight_decay=0.01), optax.contrib.muon(0.02, weight_decay=0.01), params, grads
    )
    assert_close(ours, theirs, 1e-12, 1e-15)
    assert_close(ours, muon_reference(params, grads, 0.02, 0.95, 0.01), 1e-10, 1e-14)
    assert jol.muon is contrib.muon
    plain, _ = run_both(contrib.muon(0.02, weight_decay=0.01, bias_correction=False), jol.identity(), params, grads)
    assert_close(plain, muon_reference(params, grads, 0.02, 0.95, 0.01, debias=False), 1e-10, 1e-14)


@pytest.mark.parametrize(
    "kw",
    [
        dict(preconditioning="aol", ns_coeffs="dion", adaptive=True, nesterov=False),
        dict(preconditioning="schatten", consistent_rms=0.2, beta=0.9),
        dict(preconditioning="spectral", ns_coeffs=((3.0, -3.2, 1.2), (2.0, -1.5, 0.5)), ns_steps=3),
    ],
)
def test_muon_options_and_dimension_numbers_against_optax(kw):
    rng = np.random.default_rng(5)
    params, grads = _tree(rng, MUON_SHAPES), _grads(rng, MUON_SHAPES, steps=50)

    def dims(mod):
        d = mod.MuonDimensionNumbers
        return {"v": None, "m": d(), "tall": d(), "same": d(1, 0), "stack": d(reduction_axis=(0, 1), output_axis=2)}

    ours, theirs = run_both(
        contrib.muon(0.02, muon_weight_dimension_numbers=dims(contrib), **kw),
        optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims(optax.contrib), **kw),
        params,
        grads,
    )
    assert_close(ours, theirs, 1e-11, 1e-14)


def test_muon_batch_axes_and_callable_dimension_numbers():
    rng = np.random.default_rng(6)
    params, grads = _tree(rng, MUON_SHAPES), _grads(rng, MUON_SHAPES, steps=20)

    def dims(mod):  # the stacked leaf: axis 0 a batch of (3, 4) matrices
        d = mod.MuonDimensionNumbers
        return lambda p: {"v": None, "m": d(), "tall": d(), "same": d(), "stack": d(1, 2)}

    ours, theirs = run_both(
        contrib.muon(0.02, muon_weight_dimension_numbers=dims(contrib)),
        optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims(optax.contrib)),
        params,
        grads,
    )
    assert_close(ours, theirs, 1e-11, 1e-14)


def test_muon_float32_newton_schulz_matches_optax_loosely():
    rng = np.random.default_rng(7)
    shapes = {"v": (3,), "m": (4, 6)}
    params, grads = _tree(rng, shapes, np.float32), _grads(rng, shapes, steps=50, dtype=np.float32)
    ours, theirs = run_both(contrib.muon(0.02), optax.contrib.muon(0.02), params, grads)
    assert_close(ours, theirs, 2e-4, 1e-6)


def test_muon_stacks_leaves_of_one_shape_into_one_newton_schulz_call():
    params = {f"w{i}": jnp.ones((3, 4)) * (i + 1) for i in range(5)} | {"t": jnp.ones((4, 3))}
    opt = contrib.scale_by_muon()
    state = opt.init(params)
    jaxpr = jax.make_jaxpr(lambda g, s: opt.update(g, s))(params, state)
    # One Newton-Schulz call: 5 steps x 3 matmuls (X X^T, A A, B X), whatever the number of leaves.
    n_dots = str(jaxpr).count("dot_general")
    assert n_dots == 15, n_dots


def _singular_values(x):
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


@pytest.mark.parametrize(
    "coeffs,steps,lo,hi",
    [
        ("cubic", 40, 1 - 1e-6, 1 + 1e-6),  # the classical iteration converges to U V^T
        ("polar_express", 8, 0.95, 1.05),
        ("standard", 5, 0.6, 1.25),  # Jordan's quintic: singular values land in about [0.7, 1.2]
    ],
)
@pytest.mark.parametrize("ns_dtype", [None, jnp.float32])
def test_newton_schulz_presets_give_singular_values_near_one(coeffs, steps, lo, hi, ns_dtype):
    from jaxopt_lite.optimizers.muon import NS_COEFFS_PRESETS, _resolve_coeffs, newton_schulz

    assert NS_COEFFS_PRESETS["standard"] == JORDAN
    m = np.random.default_rng(8).normal(size=(2, 6, 10)) * np.array([1.0, 1e-2])[:, None, None]
    m[:, 0] *= 30.0  # a spread of singular values
    coeffs_arr = _resolve_coeffs("test", coeffs, steps)
    x = newton_schulz(jnp.asarray(m), coeffs_arr, steps, ns_dtype=ns_dtype)
    assert x.dtype == jnp.float64
    if ns_dtype == jnp.float32:
        lo, hi = min(lo, 1 - 1e-4), max(hi, 1 + 1e-4)
    for sv in map(_singular_values, x):
        assert lo < sv.min() and sv.max() < hi, sv
    if coeffs == "standard" and ns_dtype is None:
        np.testing.assert_allclose(x[0], np_newton_schulz(m[0], JORDAN, 5), rtol=1e-12, atol=1e-14)


def test_newton_schulz_in_bfloat16():
    from jaxopt_lite.optimizers.muon import newton_schulz

    m = jnp.asarray(np.random.default_rng(9).normal(size=(4, 8)), jnp.float32)
    x = newton_schulz(m, (3.4445, -4.7750, 2.0315), 5, ns_dtype=jnp.bfloat16)
    assert x.dtype == jnp.float32
    sv = _singular_values(x)
    assert 0.5 < sv.min() and sv.max() < 1.4, sv


def test_muon_shape_scaling_conventions():
    g = {"w": jnp.asarray(np.random.default_rng(10).normal(size=(2, 8)))}
    base = contrib.muon(1.0, shape_scaling="none")
    u0, _ = base.update(g, base.init(g), g)
    for kw, factor in [({}, 2.0), ({"consistent_rms": 0.2}, 0.2 * np.sqrt(8))]:
        opt = contrib.muon(1.0, **kw)
        u, _ = opt.update(g, opt.init(g), g)
        np.testing.assert_allclose(u["w"], factor * u0["w"], rtol=1e-12)


def test_muon_errors():
    with pytest.raises(ValueError, match="scale_by_muon: unknown ns_coeffs preset 'nope'"):
        contrib.scale_by_muon(ns_coeffs="nope")
    with pytest.raises(ValueError, match=r"ns_coeffs must have shape \(3,\) or \(k, 3\)"):
        contrib.scale_by_muon(ns_coeffs=(1.0, 2.0))
    with pytest.raises(ValueError, match="scale_by_muon: beta must be in"):
        contrib.scale_by_muon(beta=1.5)
    with pytest.raises(ValueError, match="muon: shape_scaling must be"):
        contrib.muon(0.1, shape_scaling="sqrt")
    opt = contrib.scale_by_muon()
    p = {"b": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"scale_by_muon: the leaf at \['b'\] has shape \(3,\); Muon orthogonalises"):
        opt.update(p, opt.init(p))


# --------------------------------------------------------------------------- #
# SAM (Foret et al., 2021): w <- w - lr grad f(w + rho grad f(w) / ||grad f(w)||)
# --------------------------------------------------------------------------- #


def _sam_problem():
    rng = np.random.default_rng(13)
    a = rng.normal(size=(4, 4))
    q = a @ a.T / 4 + np.eye(4)
    loss = lambda w: 0.5 * w @ q @ w + jnp.sum(jnp.cos(w))  # noqa: E731
    return q, loss, rng.normal(size=4)


def test_sam_transparent_mode_is_sam():
    q, loss, w0 = _sam_problem()
    lr, rho = 0.05, 0.1

    def make(mod, opt_mod):
        return opt_mod.sam(mod.sgd(lr), mod.chain(opt_mod.normalize(), mod.sgd(rho)), sync_period=2)

    @jax.jit
    def run(w):
        ours, theirs = make(jol, contrib), make(optax, optax.contrib)

        def body(carry, _):
            w, s1, w2, s2 = carry
            u1, s1 = ours.update(jax.grad(loss)(w), s1, w)
            u2, s2 = theirs.update(jax.grad(loss)(w2), s2, w2)
            return (w + u1, s1, w2 + u2, s2), (w + u1, w2 + u2)

        return jax.lax.scan(body, (w, ours.init(w), w, theirs.init(w)), None, length=STEPS)[1]

    ours, theirs = map(np.asarray, run(jnp.asarray(w0)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)

    grad = lambda w: q @ w - np.sin(w)  # noqa: E731
    w, ref = w0.copy(), []
    for _ in range(STEPS // 2):
        g = grad(w)
        adv = w + rho * g / np.linalg.norm(g)
        ref += [adv, w - lr * grad(adv)]
        w = ref[-1]
    np.testing.assert_allclose(ours, np.stack(ref), rtol=1e-10, atol=1e-13)


def test_sam_opaque_mode_matches_optax():
    _, loss, w0 = _sam_problem()

    def make(mod, opt_mod):
        return opt_mod.sam(mod.sgd(0.05), mod.chain(opt_mod.normalize(), mod.sgd(0.1)), 3, opaque_mode=True)

    grad_fn = lambda w, i: jax.grad(loss)(w)  # noqa: E731

    @jax.jit
    def run(w):
        ours, theirs = make(jol, contrib), make(optax, optax.contrib)

        def body(carry, _):
            w, s1, s2 = carry
            u1, s1 = ours.update(jax.grad(loss)(w), s1, w, grad_fn=grad_fn)
            u2, s2 = theirs.update(jax.grad(loss)(w), s2, w, grad_fn=grad_fn)
            return (w + u1, s1, s2), (u1, u2)

        return jax.lax.scan(body, (w, ours.init(w), theirs.init(w)), None, length=STEPS)[1]

    ours, theirs = map(np.asarray, run(jnp.asarray(w0)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="sam: opaque_mode=True needs the keyword argument grad_fn"):
        make(jol, contrib).update(w0, make(jol, contrib).init(w0), w0)
    with pytest.raises(ValueError, match="sam: sync_period must be an int >= 1, got 0"):
        contrib.sam(jol.sgd(0.1), jol.sgd(0.1), sync_period=0)


# --------------------------------------------------------------------------- #
# GaLore (Zhao et al., 2024, Algorithm 2): Adam on P^T G, projected back
# --------------------------------------------------------------------------- #


def galore_reference(grads, lr, rank, gap, scale, b1=0.9, b2=0.999, eps=1e-8):
    out = {}
    for k, gs in grads.items():
        m = v = proj = None
        ups = []
        for t, g in enumerate(gs, start=1):
            left = g.ndim == 2 and g.shape[0] >= g.shape[1]
            if g.ndim == 2 and (t - 1) % gap == 0:
                u_, _, vt = np.linalg.svd(g, full_matrices=False)
                proj = u_[:, :rank] if left else vt[:rank].T
            r = (proj.T @ g if left else g @ proj) if g.ndim == 2 else g
            m = (1 - b1) * r if m is None else b1 * m + (1 - b1) * r
            v = (1 - b2) * r * r if v is None else b2 * v + (1 - b2) * r * r
            n = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
            full = (proj @ n if left else n @ proj.T) * scale if g.ndim == 2 else n
            ups.append(-lr * full)
        out[k] = np.stack(ups)
    return out


GALORE_SHAPES = {"v": (3,), "tall": (5, 3), "wide": (3, 6)}


def test_galore_against_numpy():
    rng = np.random.default_rng(14)
    params, grads = _tree(rng, GALORE_SHAPES), _grads(rng, GALORE_SHAPES)
    opt = contrib.galore(0.01, rank=2, update_proj_gap=50, scale=0.5)
    ours, _ = run_both(opt, opt, params, grads)
    ref = galore_reference(grads, 0.01, 2, 50, 0.5)
    assert_close(ours, ref, 1e-8, 1e-12)


def test_galore_against_optax_in_float32():
    rng = np.random.default_rng(15)
    shapes = GALORE_SHAPES | {"conv": (2, 3, 4)}
    params, grads = _tree(rng, shapes, np.float32), _grads(rng, shapes, steps=60, dtype=np.float32)

    def dims(mod):
        d = mod.GaLoreDimensionNumbers
        return {"v": None, "tall": d(), "wide": d(), "conv": d((0, 1), 2)}

    ours, theirs = run_both(
        contrib.galore(0.01, rank=2, update_proj_gap=25, weight_decay=0.01, weight_dimension_numbers=dims(contrib)),
        optax.contrib.galore(
            0.01, rank=2, update_proj_gap=25, weight_decay=0.01, weight_dimension_numbers=dims(optax.contrib)
        ),
        params,
        grads,
    )
    assert_close(ours, theirs, 1e-4, 1e-6)
    state = contrib.scale_by_galore(rank=2, weight_dimension_numbers=dims(contrib)).init(params)
    assert state._fields == ("count", "base_optimizer_state", "projector")
    shapes = {k: v.shape for k, v in state.projector.items()}
    assert shapes == {"v": (0, 0), "tall": (5, 2), "wide": (6, 2), "conv": (6, 2)}


def test_galore_errors():
    with pytest.raises(TypeError, match="scale_by_galore: rank must be an int"):
        contrib.scale_by_galore(rank=2.0)
    with pytest.raises(ValueError, match="scale_by_galore: rank must be positive, got 0"):
        contrib.scale_by_galore(rank=0)


@pytest.mark.parametrize("adjust_lr_fn,kw", [(None, {}), ("match_rms_adamw", {"consistent_rms": 0.2})])
def test_muon_matches_torch_optim_muon_in_float64(adjust_lr_fn, kw):
    """``torch.optim.Muon`` (torch >= 2.9) on 2-D weights, 200 steps, its Newton-Schulz run in float64.

    Torch stores a weight as ``(out, in)``; it matches ours with ``reduction_axis=1, output_axis=0``
    (``sqrt(max(1, out/in))``, or ``0.2 sqrt(max(out, in))`` for ``match_rms_adamw``). Torch's
    Newton-Schulz casts to bfloat16; here ``Tensor.bfloat16`` is the identity while it runs, so the
    oracle is the same algorithm in float64. Torch floors the norm at ``eps`` where we add ``eps``:
    ``eps=1e-30`` makes both the plain normalisation. Torch does not debias the momentum (Jordan's
    convention): ``bias_correction=False``; with Optax's default ``True`` the direction differs from
    the second step on, which the last lines check.
    """
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    rng = np.random.default_rng(11)
    shapes = {"wide": (3, 5), "tall": (6, 2), "square": (4, 4)}
    x0 = {k: rng.standard_normal(s) for k, s in shapes.items()}
    target = {k: rng.standard_normal(s) for k, s in shapes.items()}
    lr, wd, beta, n_steps = 0.02, 0.1, 0.95, 200

    def grad(x, t, k):  # a fresh random term each step keeps the matrices well conditioned
        return 0.5 * (x - t) + np.random.default_rng(k).standard_normal(x.shape)

    tparams = {k: torch.tensor(v, dtype=torch.float64) for k, v in x0.items()}
    topt = torch.optim.Muon(
        list(tparams.values()), lr=lr, weight_decay=wd, momentum=beta, eps=1e-30, adjust_lr_fn=adjust_lr_fn
    )
    dims = jol.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=0)
    opt = jol.contrib.muon(
        lr,
        beta=beta,
        eps=1e-30,
        weight_decay=wd,
        muon_weight_dimension_numbers={k: dims for k in shapes},
        bias_correction=False,
        **kw,
    )
    params = jax.tree.map(jnp.asarray, x0)
    state = opt.init(params)
    step = jax.jit(lambda g, s, p: opt.update(g, s, p))
    real_bfloat16 = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self
    try:
        for k in range(n_steps):
            for name, p in tparams.items():
                p.grad = torch.tensor(grad(p.numpy(), target[name], k))
            topt.step()
            grads = {name: grad(np.asarray(params[name]), target[name], k) for name in shapes}
            updates, state = step(grads, state, params)
            params = jol.apply_updates(params, updates)
            for name in shapes:
                np.testing.assert_allclose(
                    np.asarray(params[name]), tparams[name].numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{name}, step {k}"
                )
    finally:
        torch.Tensor.bfloat16 = real_bfloat16
    assert not np.allclose(np.asarray(params["wide"]), x0["wide"], atol=0.1)  # it moved
    debiased = jol.contrib.muon(lr, beta=beta, eps=1e-30, weight_decay=wd, muon_weight_dimension_numbers=dims, **kw)
    p, s = jax.tree.map(jnp.asarray, x0), None
    s = debiased.init(p)
    for k in range(2):
        u, s = debiased.update({n: grad(np.asarray(p[n]), target[n], k) for n in shapes}, s, p)
        p = jol.apply_updates(p, u)
    first_two = jax.tree.map(jnp.asarray, x0)
    s2 = opt.init(first_two)
    for k in range(2):
        u, s2 = opt.update({n: grad(np.asarray(first_two[n]), target[n], k) for n in shapes}, s2, first_two)
        first_two = jol.apply_updates(first_two, u)
    assert not np.allclose(np.asarray(p["wide"]), np.asarray(first_two["wide"]), rtol=1e-6)


def test_muon_dimension_numbers_function_of_the_params_sees_no_masked_nodes():
    """A function written for the params (``leaf.ndim``) works: where AdamW acts it sees a 0-d stand-in."""
    rng = np.random.default_rng(5)
    params = {"embed": rng.standard_normal((5, 3)), "hidden": rng.standard_normal((3, 4)), "bias": np.zeros(4)}

    def dims(tree):
        return {
            k: jol.contrib.MuonDimensionNumbers() if k == "hidden" and v.ndim == 2 else None for k, v in tree.items()
        }

    opt = jol.contrib.muon(0.02, muon_weight_dimension_numbers=dims)
    grads = {k: rng.standard_normal((3,) + np.shape(v)) for k, v in params.items()}
    ours, _ = run_both(opt, jol.identity(), params, grads)
    plain_adam, _ = run_both(jol.adamw(0.02, weight_decay=0.0, nesterov=True), jol.identity(), params, grads)
    assert_close({k: ours[k] for k in ("embed", "bias")}, {k: plain_adam[k] for k in ("embed", "bias")}, 1e-12)
    assert not np.allclose(ours["hidden"], plain_adam["hidden"])  # orthogonalised, not AdamW's
