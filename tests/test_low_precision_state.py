"""bfloat16/float16 optimizer state: moments computed in float32 and rounded once (``mu_dtype``/``nu_dtype``), and
the ``low_precision_state`` wrapper (rounded to nearest or stochastically).

References: NumPy in float64 with ``ml_dtypes`` casts (round to nearest even), written from Adam's formula; for the
stochastic rounding, the two bfloat16 neighbours of that value, one of which each entry must take; hypothesis over
random pytrees for structure, dtypes, ``eval_shape`` and jit against eager.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import assert_same_avals, assert_trees_close, make_tree, tree_specs

import jaxopt_lite as jol

BF16 = ml_dtypes.bfloat16
B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-2
SHAPES = {"w": (6, 5), "b": (5,)}


def _grads(t: int) -> dict:
    """A fixed gradient sequence (independent of the params), with a spread of magnitudes."""
    rng = np.random.default_rng(t)
    return {k: (rng.standard_normal(s) * np.logspace(-3, 0, s[-1])).astype(np.float32) for k, s in SHAPES.items()}


def _params() -> dict:
    return {k: jnp.ones(s, jnp.float32) for k, s in SHAPES.items()}


def _f32(x) -> np.ndarray:
    return np.asarray(x).astype(np.float32)


def _moment(m, g, decay, order):
    """One moment update from the stored ``m``, in float64 (not yet rounded)."""
    return decay * np.asarray(m).astype(np.float64) + (1 - decay) * np.asarray(g, np.float64) ** order


def _assert_rounded_once(got, exact, what):
    """``got`` (bfloat16) is ``exact`` rounded to nearest, but where ``exact`` lies within 4 float32 spacings of a
    tie: the library computes in float32 (in float64 when a hyperparameter is a float64 array), and XLA may fuse
    ``a * b + c``, which moves a float32 result by an ulp."""
    near = exact.astype(BF16).astype(np.float64)
    got = np.asarray(got).astype(np.float64)
    toward = np.where(exact > near, BF16(np.inf), BF16(-np.inf))
    other = np.nextafter(near.astype(BF16), toward).astype(np.float64)
    ulp32 = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    near_tie = np.abs(np.abs(exact - near) - np.abs(other - near) / 2) <= 4 * ulp32
    bad = (got != near) & ~(near_tie & (got == other))
    assert not bad.any(), (what, got[bad], exact[bad])


def test_bfloat16_moments_are_updated_in_float32_and_rounded_once():
    """100 steps, each checked from the stored state: the moments are the EMA rounded once to bfloat16, not
    bfloat16 arithmetic (every product and sum rounded), which differs; the step comes from the unrounded EMA."""
    opt = jol.adam(LR, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    step = jax.jit(opt.update)
    state = opt.init(_params())
    differs = 0
    for t in range(1, 101):
        g = _grads(t)
        old = state[0]
        updates, state = step(jax.tree.map(jnp.asarray, g), state)
        for k in SHAPES:
            m64, v64 = _moment(old.mu[k], g[k], B1, 1), _moment(old.nu[k], g[k], B2, 2)
            assert state[0].mu[k].dtype == state[0].nu[k].dtype == jnp.bfloat16
            _assert_rounded_once(state[0].mu[k], m64, f"mu {k} step {t}")
            _assert_rounded_once(state[0].nu[k], v64, f"nu {k} step {t}")
            m_bf16_arithmetic = BF16(B1) * np.asarray(old.mu[k]) + BF16(1 - B1) * g[k].astype(BF16)
            differs += int(np.sum(m_bf16_arithmetic != np.asarray(state[0].mu[k])))
            # The step from the new moments before they are rounded (float32 against this float64 reference).
            expected = -LR * (m64 / (1 - B1**t)) / (np.sqrt(v64 / (1 - B2**t)) + EPS)
            np.testing.assert_allclose(updates[k], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert differs > 50, differs


def test_rounded_to_nearest_a_bfloat16_second_moment_sticks_stochastic_rounding_follows_it():
    """Why ``key``: at ``v = 1.5`` the bfloat16 spacing is 2**-7, so ``0.999 v`` (a change of 1.5e-3, below half a
    spacing) rounds back to ``v`` at every step, even computed in float32; stochastic rounding follows the float32
    EMA in expectation (1.5 * 0.999**100 = 1.357)."""
    n = 4096
    results = {}
    for key in (None, 0):
        opt = jol.low_precision_state(jol.scale_by_adam(b2=B2), key=key)
        state = opt.init(jnp.zeros(n, jnp.float32))
        state = state._replace(inner_state=state.inner_state._replace(nu=jnp.full(n, 1.5, jnp.bfloat16)))
        step = jax.jit(opt.update)
        for _ in range(100):
            _, state = step(jnp.zeros(n, jnp.float32), state)
        results[key] = _f32(state.inner_state.nu)
    np.testing.assert_array_equal(results[None], 1.5)
    assert abs(float(np.mean(results[0])) - 1.5 * B2**100) < 2e-3, float(np.mean(results[0]))


def _wrapped_adam_reference_check(key):
    """low_precision_state(adam) step by step against float32 NumPy Adam from the stored (widened) state: to
    nearest, the state is exactly the rounded float32 value; stochastically, one of its two bfloat16 neighbours.
    The step comes from the unrounded float32 moments."""
    opt = jol.low_precision_state(jol.adam(LR), key=key)
    step = jax.jit(opt.update)
    state = opt.init(_params())
    moved_up = moved_down = 0
    for t in range(1, 61):
        g = _grads(t)
        old = state.inner_state[0]
        updates, state = step(jax.tree.map(jnp.asarray, g), state)
        new = state.inner_state[0]
        assert int(new.count) == t
        for k in SHAPES:
            m64 = _moment(old.mu[k], g[k], B1, 1)
            v64 = _moment(old.nu[k], g[k], B2, 2)
            expected = -LR * (m64 / (1 - B1**t)) / (np.sqrt(v64 / (1 - B2**t)) + EPS)
            # float32 against float64: m is an EMA of signed gradients, whose cancellation magnifies rounding.
            np.testing.assert_allclose(updates[k], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
            for got, exact in ((new.mu[k], m64), (new.nu[k], v64)):
                assert got.dtype == jnp.bfloat16
                if key is None:
                    _assert_rounded_once(got, exact, (k, t))
                    continue
                got = np.asarray(got).astype(np.float64)
                near = exact.astype(BF16).astype(np.float64)
                lo = np.where(near <= exact, near, np.nextafter(near.astype(BF16), BF16(-np.inf)).astype(np.float64))
                hi = np.where(near >= exact, near, np.nextafter(near.astype(BF16), BF16(np.inf)).astype(np.float64))
                assert np.all((got == lo) | (got == hi)), (k, t)
                moved_up += int(np.sum((got == hi) & (hi != lo)))
                moved_down += int(np.sum((got == lo) & (hi != lo)))
    return moved_up, moved_down


def test_wrapped_adam_rounded_to_nearest_matches_numpy():
    _wrapped_adam_reference_check(None)


def test_wrapped_adam_rounded_stochastically_takes_a_neighbour_both_ways():
    up, down = _wrapped_adam_reference_check(jax.random.key(3))
    assert up > 100 and down > 100, (up, down)


def test_wrapper_equals_mu_dtype_on_a_fixed_gradient_sequence():
    """Rounded to nearest, the wrapper and ``mu_dtype``/``nu_dtype`` keep bit-identical moments and steps."""
    direct = jol.adam(LR, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    wrapped = jol.low_precision_state(jol.adam(LR))
    s1, s2 = direct.init(_params()), wrapped.init(_params())
    for t in range(1, 31):
        g = jax.tree.map(jnp.asarray, _grads(t))
        u1, s1 = direct.update(g, s1)
        u2, s2 = wrapped.update(g, s2)
        jax.tree.map(np.testing.assert_array_equal, s1[0], s2.inner_state[0])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12), u1, u2)


INNER = {
    "adam": lambda lr=LR: jol.adam(lr),
    "lion": lambda lr=LR: jol.lion(lr),
    "sgd_momentum": lambda lr=LR: jol.sgd(lr, momentum=0.9),
    "multisteps_adamw": lambda lr=LR: jol.MultiSteps(jol.adamw(lr, weight_decay=0.1), every_k_schedule=2),
    "clip_adafactor": lambda lr=LR: jol.chain(jol.clip_by_global_norm(1.0), jol.adafactor(lr)),
}


def _loss(p):
    return jnp.sum((p["w"] - 0.3) ** 2) + jnp.sum(jnp.sin(p["b"]))


@pytest.mark.parametrize("name", list(INNER))
def test_any_inner_keeps_structure_and_dtypes_tracks_float32_and_jit_equals_eager(name):
    params = _params()
    opt = jol.low_precision_state(INNER[name](), key=1)
    ref = INNER[name]()
    abstract = jax.eval_shape(opt.init, params)
    state, ref_state = opt.init(params), ref.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    stored = [x for x in jax.tree.leaves(state.inner_state) if x.dtype == jnp.bfloat16]
    assert stored, "no state leaf is stored in bfloat16"
    assert all(x.shape in {(6, 5), (5,)} for x in stored)

    def run(step, p, s, n):
        for _ in range(n):
            u, s = step(jax.grad(_loss)(p), s, p)
            p = jol.apply_updates(p, u)
        return p, s

    p_jit, s_jit = run(jax.jit(opt.update), params, state, 20)
    p_eager, s_eager = run(opt.update, params, state, 20)
    # Fused (jit) and unfused float32 arithmetic may differ by an ulp, and a bfloat16 rounding by one spacing.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_jit, p_eager)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(_f32(a), _f32(b), rtol=2**-7, atol=1e-7),
        s_jit.inner_state, s_eager.inner_state,
    )
    assert jax.tree.map(lambda x: x.dtype, s_jit) == jax.tree.map(lambda x: x.dtype, state)
    p_ref, _ = run(jax.jit(ref.update), params, ref_state, 20)
    assert abs(float(_loss(p_jit)) - float(_loss(p_ref))) < 0.02 * abs(float(_loss(p_ref))) + 1e-3


def test_vmap_over_learning_rate_equals_a_loop_and_scan_runs():
    params = _params()
    lrs = jnp.asarray([1e-3, 1e-2, 3e-2])

    def train(lr):
        opt = jol.low_precision_state(jol.adam(lr), key=0)

        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(_loss)(p), s, p)
            return (jol.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=10)
        return p

    batched = jax.jit(jax.vmap(train))(lrs)
    for i, lr in enumerate(lrs):
        one = jax.jit(train)(lr)
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-7), batched, one)


def test_bfloat16_params_state_is_widened_too_and_bytes_per_parameter():
    params = {k: jnp.ones(s, jnp.bfloat16) for k, s in SHAPES.items()}
    opt = jol.low_precision_state(jol.adam(LR), key=0)
    state = opt.init(params)
    u, state = jax.jit(opt.update)(jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params), state, params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((u, state.inner_state[0].mu, state.inner_state[0].nu)))
    big = {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32)}
    shapes = jax.eval_shape(jol.low_precision_state(jol.adam(LR)).init, big)
    n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    assert n_bytes / (256 * 512) < 4.01  # float32 Adam: 8


def test_min_size_keeps_small_leaves_and_float16():
    opt = jol.low_precision_state(jol.adam(LR), jnp.float16, min_size=10)
    state = opt.init(_params())
    assert state.inner_state[0].mu["w"].dtype == jnp.float16  # 30 entries
    assert state.inner_state[0].mu["b"].dtype == jnp.float32  # 5 entries
    u, state = opt.update(jax.tree.map(jnp.asarray, _grads(1)), state)
    assert state.inner_state[0].mu["w"].dtype == jnp.float16 and u["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dtype": jnp.float32}, ValueError, "low_precision_state: dtype must be jnp.bfloat16 or jnp.float16"),
        ({"dtype": "int8"}, ValueError, "low_precision_state: dtype must be"),
        ({"min_size": -1}, ValueError, "low_precision_state: min_size must be a non-negative integer"),
        ({"key": "seed"}, TypeError, "low_precision_state: key must be"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        jol.low_precision_state(jol.adam(LR), **kwargs)


def test_bad_inner_and_foreign_state_are_refused_by_name():
    with pytest.raises(TypeError, match="low_precision_state: inner must be a GradientTransformation"):
        jol.low_precision_state(jol.adam)
    opt = jol.low_precision_state(jol.adam(LR))
    with pytest.raises(ValueError, match="low_precision_state: the state passed to update is not one low_precision_state's init"):
        opt.update(_params(), jol.adam(LR).init(_params()))


def test_fused_layout_equals_mu_dtype_on_the_fused_tree():
    params = {"w": jnp.linspace(-1.0, 1.0, 30).reshape(6, 5), "b": jnp.linspace(0.5, 1.0, 5)}
    fused = jol.fuse(jax.tree.map(lambda x: x.astype(jnp.float32), params))
    wrapped, direct = jol.low_precision_state(jol.adam(LR)), jol.adam(LR, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    s1, s2 = jax.jit(wrapped.init)(fused), direct.init(fused)
    assert isinstance(s1.inner_state[0].mu, jol.Fused) and s1.inner_state[0].mu.buffers[0].dtype == jnp.bfloat16
    grad = jax.jit(jax.grad(lambda f: _loss(f.tree())))
    p1 = p2 = fused
    for _ in range(10):
        u1, s1 = jax.jit(wrapped.update)(grad(p1), s1, p1)
        u2, s2 = jax.jit(direct.update)(grad(p2), s2, p2)
        p1, p2 = jol.apply_updates(p1, u1), jol.apply_updates(p2, u2)
    jax.tree.map(np.testing.assert_array_equal, s1.inner_state[0], s2[0])
    np.testing.assert_allclose(p1.buffers[0], p2.buffers[0], rtol=1e-6)


def test_scalars_of_the_state_stay_float32_even_with_a_scalar_parameter():
    """A 0-d parameter has the shape of every scalar of the state: the injected learning rate must not be rounded
    to bfloat16 (1e-3 would become 0.00099945)."""
    params = {"w": jnp.ones((6, 5), jnp.float32), "scale": jnp.asarray(1.0, jnp.float32)}
    opt = jol.low_precision_state(jol.inject_hyperparams(jol.adam)(learning_rate=1e-3), key=0)
    state = opt.init(params)
    inner = state.inner_state
    assert inner.hyperparams["learning_rate"].dtype != jnp.bfloat16
    assert inner.inner_state[0].mu["w"].dtype == jnp.bfloat16 and inner.inner_state[0].mu["scale"].dtype == jnp.float32
    grads = jax.tree.map(jnp.ones_like, params)
    u, state = jax.jit(opt.update)(grads, state, params)
    lr = state.inner_state.hyperparams["learning_rate"]
    assert lr == np.asarray(1e-3, lr.dtype)  # as stored by inject_hyperparams, not rounded to bfloat16
    np.testing.assert_allclose(u["scale"], -1e-3, rtol=1e-6)


def test_wraps_kahan_summation_on_bfloat16_params():
    """bfloat16 params, moments and Kahan buffer: the wrapper widens the compensation too, and Kahan accepts it."""
    params = {"w": jnp.linspace(0.5, 1.5, 30, dtype=jnp.float32).reshape(6, 5).astype(jnp.bfloat16),
              "b": jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32).astype(jnp.bfloat16)}
    opt = jol.low_precision_state(jol.chain(jol.adam(1e-3), jol.kahan_summation()), key=0)
    ref = jol.adam(1e-3)
    state, p = opt.init(params), params
    p_ref = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    s_ref = ref.init(p_ref)
    step = jax.jit(opt.update)
    for _ in range(50):
        u, state = step(jax.grad(_loss)(p), state, p)
        p = jol.apply_updates(p, u)
        u_ref, s_ref = ref.update(jax.grad(_loss)(p_ref), s_ref, p_ref)
        p_ref = jol.apply_updates(p_ref, u_ref)
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(lambda x: x.dtype, opt.init(params))
    assert state.inner_state[1].compensation["w"].dtype == jnp.bfloat16
    moved = np.abs(np.asarray(p_ref["w"], np.float64) - np.asarray(params["w"], np.float64))
    assert np.all(moved > 0.04)  # 50 steps of about 1e-3 each
    # Kahan keeps the bfloat16 params within about one spacing of the float32 run (plain bfloat16 would not move:
    # a step of 1e-3 is below half the spacing 2**-8 near 1).
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k], np.float64), np.asarray(p_ref[k]), rtol=2**-7, atol=2**-9)


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=tree_specs, seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([jnp.bfloat16, jnp.float16]))
def test_random_trees_keep_structure_and_dtypes_and_jit_equals_eager(spec, seed, dtype):
    """Random pytrees (scalars, empty leaves, float32/bfloat16/float64 params): eval_shape matches init, every step
    keeps the state's structure and dtypes, and a jitted scan equals the eager loop (to a bfloat16 rounding)."""
    rng = np.random.default_rng(seed)
    params = make_tree(spec, rng)
    grads = [make_tree(spec, rng) for _ in range(3)]
    opt = jol.low_precision_state(jol.adamw(LR, weight_decay=0.1), dtype, key=seed)
    state0 = opt.init(params)
    abstract = jax.eval_shape(opt.init, params)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(abstract)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(state0)]
    for leaf, p in zip(jax.tree.leaves(state0.inner_state[0].mu), jax.tree.leaves(params)):
        assert leaf.dtype == (dtype if p.ndim else p.dtype)  # scalars stay as adam keeps them
    p, s = params, state0
    for g in grads:
        u, s = opt.update(g, s, p)
        assert_same_avals(s, state0, "state after an eager step")
        assert [x.dtype for x in jax.tree.leaves(u)] == [x.dtype for x in jax.tree.leaves(params)]
        p = jol.apply_updates(p, u)

    def body(carry, g):
        q, st = carry
        upd, st = opt.update(g, st, q)
        return (jol.apply_updates(q, upd), st), None

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
    (q, st), _ = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))((params, state0), stacked)
    assert_same_avals(st, state0, "state after the jitted scan")
    tol = (5e-2, 1e-2)  # a bfloat16 rounding of the state may go the other way under jit
    assert_trees_close(q, p, "params, jitted scan vs eager loop", tol=tol)
    assert_trees_close(st.inner_state, s.inner_state, "state, jitted scan vs eager loop", tol=tol)
