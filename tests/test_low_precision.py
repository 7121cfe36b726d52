"""Stochastic rounding and Kahan-compensated updates for bfloat16/float16 parameters (low_precision.py).

References: ``ml_dtypes`` (shipped with JAX) for round-to-nearest casts, a NumPy emulation of the
compensated sum, and float32 runs of the same training loops. Every random draw uses a fixed key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxopt_lite as jol
from jaxopt_lite.transforms import low_precision as lp
from jaxopt_lite.transforms.low_precision import (
    KahanSummationState,
    StochasticRoundingState,
    apply_updates_stochastic,
    kahan_summation,
    round_stochastic,
    stochastic_rounding,
)

LOW = [jnp.bfloat16, jnp.float16]
NP_DTYPE = {jnp.dtype(jnp.bfloat16): ml_dtypes.bfloat16, jnp.dtype(jnp.float16): np.float16}


def _np(dtype):
    return NP_DTYPE[jnp.dtype(dtype)]


def _neighbours(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The two values of ``dtype`` around each float32 ``x`` (equal where ``x`` is one)."""
    d = _np(dtype)
    with np.errstate(over="ignore"):
        near = x.astype(d)
    down = np.nextafter(near, d(-np.inf))
    up = np.nextafter(near, d(np.inf))
    lo = np.where(near.astype(np.float32) <= x, near, down).astype(np.float32)
    hi = np.where(near.astype(np.float32) >= x, near, up).astype(np.float32)
    return lo, hi


def _same(a, b) -> bool:
    """Bitwise equal as float32 (nan equal to nan)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


# ----------------------------------------------------------------------------
# round_stochastic
# ----------------------------------------------------------------------------


def _sub_ulp_points(dtype) -> np.ndarray:
    """Values strictly between two neighbours of ``dtype``, at several fractions of the spacing."""
    eps = float(jnp.finfo(dtype).eps)
    fracs = np.array([0.03, 0.25, 0.5, 0.77, 0.97])
    points = [1.0 + fracs * eps, -(1.0 + fracs * eps), 3.0 * (1.0 + fracs * eps), 0.1 + 0.1 * fracs * eps]
    if jnp.dtype(dtype) == jnp.float16:
        tiny = 2.0**-24
        points += [(5 + fracs) * tiny, fracs * tiny, -fracs * tiny * 0.5]  # subnormals, below the smallest one
    else:
        points += [1e-30 * (1.0 + fracs * eps), 3e37 * (1.0 + fracs * eps)]
    return np.concatenate(points).astype(np.float32)


@pytest.mark.parametrize("dtype", LOW, ids=["bfloat16", "float16"])
def test_round_stochastic_is_unbiased_and_picks_a_neighbour(dtype):
    x = _sub_ulp_points(dtype)
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: round_stochastic(x, dtype, k)))(keys), np.float64)
    lo, hi = _neighbours(x, dtype)
    assert np.all(lo < x) and np.all(x < hi)  # every point is strictly between two neighbours
    assert np.all((draws == lo) | (draws == hi))
    frac = (x.astype(np.float64) - lo) / (hi.astype(np.float64) - lo)
    standard_error = (hi - lo) * np.sqrt(frac * (1 - frac) / n)
    mean = draws.mean(axis=0)
    assert np.all(np.abs(mean - x) < 4.5 * standard_error), np.max(np.abs(mean - x) / standard_error)
    assert 0.2 < (draws == hi).mean(axis=0)[2] / frac[2] < 5  # both neighbours actually occur


@pytest.mark.parametrize("dtype", LOW, ids=["bfloat16", "float16"])
def test_round_stochastic_leaves_representable_and_special_values(dtype):
    d = _np(dtype)
    info = ml_dtypes.finfo(d)
    rng = np.random.default_rng(0)
    exact = np.concatenate(
        [
            rng.normal(size=2000).astype(d),
            np.array([0.0, -0.0, info.max, -info.max, info.smallest_subnormal, info.smallest_normal, np.inf, -np.inf,
                      np.nan], d),
        ]
    ).astype(np.float32)
    rounded = jax.jit(jax.vmap(lambda k: round_stochastic(exact, dtype, k)))(jax.random.split(jax.random.key(0), 3))
    for r in rounded:
        assert _same(r, exact)  # -0.0 included
    # beyond the largest finite value: round to nearest, as a plain cast; just below it: never inf
    top = np.float32(info.max)
    bf16 = d is ml_dtypes.bfloat16
    beyond = np.array([np.nextafter(top, np.float32(np.inf)), 3.4e38 if bf16 else 65519.0,
                       3.4028235e38 if bf16 else 65520.0], np.float32)
    below = np.nextafter(np.full(64, top), np.float32(0))
    keys = jax.random.split(jax.random.key(1), 200)
    points = np.concatenate([beyond, below])
    out = np.asarray(jax.jit(jax.vmap(lambda k: round_stochastic(points, dtype, k)))(keys), np.float32)
    with np.errstate(over="ignore"):
        nearest = beyond.astype(d).astype(np.float32)
    assert _same(out[:, :3], np.broadcast_to(nearest, (200, 3)))
    assert np.all(np.isfinite(out[:, 3:])) and np.all(out[:, 3:] <= top)


def test_round_stochastic_plain_cast_for_wide_dtypes():
    x = jnp.asarray([1.0 + 1e-9, -3.5], jnp.float64)
    assert _same(round_stochastic(x, jnp.float32, jax.random.key(0)), x.astype(jnp.float32))
    np.testing.assert_array_equal(round_stochastic(x, jnp.float64, jax.random.key(0)), x)


@pytest.mark.parametrize("dtype", LOW, ids=["bfloat16", "float16"])
def test_round_nearest_matches_the_cast(dtype):
    """The bit-pattern round-to-nearest (used by Kahan) equals the cast, subnormals, overflow and nan included."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, size=100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([x, np.array([65519.996, 65520.0, 2.0**-25, 3 * 2.0**-26, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8],
                                    np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(_np(dtype)).astype(np.float32)
    assert _same(jax.jit(lambda v: lp._round_nearest(v, dtype))(x), ref)


# ----------------------------------------------------------------------------
# apply_updates_stochastic and the stochastic_rounding transform
# ----------------------------------------------------------------------------


def test_wide_parameters_take_the_plain_sum():
    params = {"a": jnp.asarray([1.0, 2.0], jnp.float32), "b": jnp.asarray(3.0, jnp.float64), "n": None,
              "c": jnp.asarray([1 + 2j], jnp.complex64)}
    updates = {"a": jnp.asarray([1e-9, -0.5], jnp.float32), "b": jnp.asarray(1e-12, jnp.float64), "n": None,
               "c": jnp.asarray([0.5j], jnp.complex64)}
    out = apply_updates_stochastic(params, updates, jax.random.key(0))
    ref = jol.apply_updates(params, updates)
    assert jax.tree.structure(out, is_leaf=lambda x: x is None) == jax.tree.structure(ref, is_leaf=lambda x: x is None)
    for k in ("a", "b", "c"):
        assert out[k].dtype == ref[k].dtype
        np.testing.assert_array_equal(out[k], ref[k])
    tx = stochastic_rounding(0)
    f32 = {"a": params["a"], "b": params["b"]}
    u = {"a": updates["a"], "b": updates["b"]}
    new_u, _ = tx.update(u, tx.init(f32), f32)
    assert new_u["a"] is u["a"] and new_u["b"] is u["b"]


@pytest.mark.parametrize("dtype", LOW, ids=["bfloat16", "float16"])
def test_transform_lands_exactly_on_the_pure_function(dtype):
    """apply_updates(p, u') equals apply_updates_stochastic(p, u, k) bit for bit, cancelling steps included."""
    rng = np.random.default_rng(2)
    n = 10000
    lo_e, hi_e = (-100, 100) if jnp.dtype(dtype) == jnp.bfloat16 else (-20, 14)
    e = rng.integers(lo_e, hi_e, n)
    p = jnp.asarray(np.ldexp(rng.uniform(1, 2, n) * rng.choice([-1, 1], n), e).astype(np.float32)).astype(dtype)
    p32 = np.asarray(p, np.float64)
    kind = rng.integers(0, 4, n)
    u = np.choose(kind, [
        -p32 * (1 + np.ldexp(rng.uniform(-1, 1, n), -rng.integers(0, 30, n))),  # cancels p
        np.ldexp(rng.uniform(-2, 2, n), e + rng.integers(0, 12, n)),  # dwarfs p
        np.ldexp(rng.uniform(-2, 2, n), e - rng.integers(0, 30, n)),  # far below p's spacing
        rng.normal(size=n) * np.abs(p32),
    ]).astype(np.float32)
    u = jnp.asarray(u)
    params, updates = {"w": p}, {"w": u}
    tx = stochastic_rounding(jax.random.key(7))
    state = tx.init(params)
    new_u, new_state = jax.jit(tx.update)(updates, state, params)
    assert new_u["w"].dtype == jnp.float32
    _, step_key = jax.random.split(state.rng_key)
    expected = jax.jit(apply_updates_stochastic)(params, updates, step_key)
    landed = jax.jit(jol.apply_updates)(params, new_u)
    a, b = np.asarray(landed["w"], np.float32), np.asarray(expected["w"], np.float32)
    assert np.all((a == b) | (np.isnan(a) & np.isnan(b)))  # equal up to the sign of a zero (p + (-p) is +0)
    lo, hi = _neighbours(np.asarray(p.astype(jnp.float32) + u), dtype)
    got = np.asarray(expected["w"], np.float32)
    assert np.all((got == lo) | (got == hi))
    assert not np.array_equal(jax.random.key_data(new_state.rng_key), jax.random.key_data(state.rng_key))


def test_typed_and_raw_keys_agree_and_steps_draw_fresh_bits():
    p = {"w": jnp.full((256,), 1.0, jnp.bfloat16)}
    u = {"w": jnp.full((256,), 1e-3, jnp.float32)}
    pure = jax.jit(apply_updates_stochastic)
    np.testing.assert_array_equal(pure(p, u, jax.random.key(3))["w"], pure(p, u, jax.random.PRNGKey(3))["w"])
    outputs = []
    for key in (jax.random.key(3), jax.random.PRNGKey(3)):
        tx = stochastic_rounding(key)
        state = tx.init(p)
        step = jax.jit(tx.update)
        u1, state = step(u, state, p)
        u2, _ = step(u, state, p)
        assert not np.array_equal(u1["w"], u2["w"])  # the key advanced: fresh bits at every step
        outputs.append(u1["w"])
    np.testing.assert_array_equal(*outputs)
    assert jax.dtypes.issubdtype(stochastic_rounding(3).init(p).rng_key.dtype, jax.dtypes.prng_key)  # int seed
    assert stochastic_rounding(jax.random.PRNGKey(3)).init(p).rng_key.dtype == jnp.uint32  # a raw key stays raw


# ----------------------------------------------------------------------------
# Training: tiny steps on a bfloat16 parameter
# ----------------------------------------------------------------------------

STEPS = 2000
TARGET = jnp.linspace(0.6, 1.8, 64)
P0 = (TARGET / 0.9).astype(jnp.bfloat16)  # start 11% above the target


def _grad(p):
    return {"w": p["w"].astype(jnp.float32) - TARGET.astype(jnp.float32)}  # of 0.5 |p - target|^2


def _train(tx, params, apply=jol.apply_updates, key=None):
    """``STEPS`` steps of ``tx`` in one jitted scan; ``apply(params, updates[, key])`` lands each step."""

    def body(carry, _):
        p, s, k = carry
        u, s = tx.update(_grad(p), s, p)
        if key is None:
            return (apply(p, u), s, k), None
        k, sub = jax.random.split(k)
        return (apply(p, u, sub), s, k), None

    run = jax.jit(lambda p, s, k: jax.lax.scan(body, (p, s, k), None, length=STEPS)[0][0])
    return run(params, tx.init(params), key if key is not None else jnp.zeros(()))


def test_tiny_sgd_steps_are_lost_in_bfloat16_but_not_with_stochastic_rounding_or_kahan():
    lr = 1e-3  # steps of lr * 0.1 * p: about 1/20 of bfloat16's spacing near p
    params = {"w": P0}
    reference = _train(jol.sgd(lr), {"w": P0.astype(jnp.float32)})["w"]
    moved = np.asarray(P0, np.float64) - np.asarray(reference, np.float64)
    assert np.all(moved > 0.07 * np.asarray(P0, np.float64))  # the float32 run moves about 8.6%
    plain = _train(jol.sgd(lr), params)["w"]
    np.testing.assert_array_equal(plain, P0)  # not a single step lands

    ref = np.asarray(reference, np.float64)
    runs = {
        "apply_updates_stochastic": _train(jol.sgd(lr), params, apply_updates_stochastic, jax.random.key(0))["w"],
        "stochastic_rounding": _train(jol.chain(jol.sgd(lr), stochastic_rounding(jax.random.key(1))), params)["w"],
        "kahan_summation": _train(jol.chain(jol.sgd(lr), kahan_summation()), params)["w"],
    }
    for name, w in runs.items():
        assert w.dtype == jnp.bfloat16
        rel = (np.asarray(w, np.float64) - ref) / ref
        assert np.sqrt(np.mean(rel**2)) < 0.03, (name, np.sqrt(np.mean(rel**2)))
        assert abs(np.mean(rel)) < 0.01, (name, np.mean(rel))  # unbiased: errors average out
    kahan_rel = np.abs(np.asarray(runs["kahan_summation"], np.float64) - ref) / ref
    assert np.max(kahan_rel) < 2 * 2.0**-8  # within about one spacing of the float32 run


# ----------------------------------------------------------------------------
# Kahan summation against a NumPy emulation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=["bfloat16", "float16"])
def test_kahan_matches_numpy_reference(dtype):
    d = _np(dtype)
    rng = np.random.default_rng(3)
    steps, size = 400, 32
    p0 = rng.uniform(0.5, 4.0, size).astype(d)
    us = (rng.normal(size=(steps, size)) * np.exp(rng.uniform(-11, -3, (steps, size)))).astype(np.float32)
    us[::50] *= 3000  # a few large steps too

    p, c = p0.copy(), np.zeros(size, d)
    for u in us:  # the rule as written: y = u + c; t = rd(p + y); c = rd(y - (t - p)); p = t (float32 arithmetic)
        p32 = p.astype(np.float32)
        y = u + c.astype(np.float32)
        t = (p32 + y).astype(d).astype(np.float32)
        c = (y - (t - p32)).astype(d)
        p = t.astype(d)

    tx = kahan_summation()
    params = {"w": jnp.asarray(p0)}

    def body(carry, u):
        q, s = carry
        upd, s = tx.update({"w": u}, s, q)
        return (jol.apply_updates(q, upd), s), None

    (q, s), _ = jax.jit(lambda q, s, us: jax.lax.scan(body, (q, s), us))(params, tx.init(params), jnp.asarray(us))
    assert q["w"].dtype == dtype and s.compensation["w"].dtype == dtype
    assert _same(q["w"], p.astype(np.float32))
    assert _same(s.compensation["w"], c.astype(np.float32))

    # and it tracks the exact sum, where plain low-precision steps drift
    exact = p0.astype(np.float64) + us.astype(np.float64).sum(axis=0)
    spacing = np.abs(exact) * float(jnp.finfo(dtype).eps)
    assert np.all(np.abs(np.asarray(q["w"], np.float64) - exact) <= spacing)
    plain = p0.copy()
    for u in us:
        plain = (plain.astype(np.float32) + u).astype(d)
    assert np.max(np.abs(plain.astype(np.float64) - exact) / spacing) > 4


def test_kahan_agrees_with_torch_optimi():
    """torch-optimi's ``kahan_sum`` (SGD, lr 1, the steps as negative gradients) on the same bfloat16 steps: both
    stay within one spacing of the exact sum, so within two of each other. optimi rounds ``y = u + c`` to bfloat16
    before adding it; this library keeps ``y`` in float32 (the docstring's one difference)."""
    torch = pytest.importorskip("torch")
    optimi = pytest.importorskip("optimi")
    rng = np.random.default_rng(5)
    steps, size = 400, 64
    p0 = rng.uniform(0.5, 4.0, size).astype(ml_dtypes.bfloat16)
    us = (rng.normal(size=(steps, size)) * np.exp(rng.uniform(-11, -4, (steps, size)))).astype(ml_dtypes.bfloat16)

    param = torch.nn.Parameter(torch.from_numpy(p0.astype(np.float32)).to(torch.bfloat16))
    opt = optimi.SGD([param], lr=1.0, kahan_sum=True)
    for u in us:
        param.grad = -torch.from_numpy(u.astype(np.float32)).to(torch.bfloat16)
        opt.step()
    theirs = param.detach().to(torch.float32).numpy().astype(np.float64)

    tx = kahan_summation()

    def body(carry, u):
        q, st = carry
        upd, st = tx.update({"w": u}, st, q)
        return (jol.apply_updates(q, upd), st), None

    params = {"w": jnp.asarray(p0)}
    (q, _), _ = jax.jit(lambda q, st, us: jax.lax.scan(body, (q, st), us))(params, tx.init(params), jnp.asarray(us))
    ours = np.asarray(q["w"], np.float64)

    exact = p0.astype(np.float64) + us.astype(np.float64).sum(axis=0)
    spacing = np.abs(exact) * 2.0**-7
    assert np.all(np.abs(theirs - exact) <= spacing) and np.all(np.abs(ours - exact) <= spacing)
    assert np.all(np.abs(ours - theirs) <= 2 * spacing)
    plain = p0.copy()
    for u in us:
        plain = (plain.astype(np.float32) + u.astype(np.float32)).astype(ml_dtypes.bfloat16)
    assert np.max(np.abs(plain.astype(np.float64) - exact) / spacing) > 4  # what both correct


def test_kahan_state_and_nonfinite_steps():
    params = {"lo": jnp.ones((3,), jnp.bfloat16), "hi": jnp.ones((2,), jnp.float32)}
    tx = kahan_summation()
    state = tx.init(params)
    assert isinstance(state.compensation["hi"], jol.MaskedNode)
    assert state.compensation["lo"].dtype == jnp.bfloat16
    u = {"lo": jnp.asarray([1e-3, jnp.nan, jnp.inf], jnp.float32), "hi": jnp.full((2,), 1e-3, jnp.float32)}
    new_u, state = jax.jit(tx.update)(u, state, params)
    np.testing.assert_array_equal(new_u["hi"], u["hi"])
    kept = float(jnp.asarray(1e-3, jnp.bfloat16).astype(jnp.float32))  # 1e-3 < half a spacing at 1: all carried
    np.testing.assert_array_equal(state.compensation["lo"].astype(jnp.float32), [kept, 0.0, 0.0])
    landed = jol.apply_updates(params, new_u)["lo"].astype(jnp.float32)
    assert landed[0] == 1.0 and jnp.isnan(landed[1]) and landed[2] == jnp.inf


# ----------------------------------------------------------------------------
# Composition, jit, vmap, eval_shape
# ----------------------------------------------------------------------------


def _bf16_params():
    rng = np.random.default_rng(4)
    return {
        "w": jnp.asarray(rng.normal(size=(64, 16)), jnp.bfloat16),
        "b": jnp.asarray(rng.normal(size=(16,)), jnp.float32),
    }


@pytest.mark.parametrize(
    ("inner", "tail"),
    [
        (lambda: jol.adamw(1e-4), kahan_summation),
        (lambda: jol.lion(1e-4), lambda: stochastic_rounding(jax.random.key(5))),
    ],
    ids=["adamw+kahan", "lion+sr"],
)
def test_composes_with_optimizers_and_jit_equals_eager(inner, tail):
    """``chain(optimizer, tail)`` is the optimizer's update fed to ``tail``; ``tail`` gives the same bits jitted."""
    inner, tail = inner(), tail()
    tx = jol.chain(inner, tail)
    params = _bf16_params()
    grads = [jax.tree.map(lambda p, i=i: jnp.cos(jnp.arange(p.size, dtype=jnp.float32) + i).reshape(p.shape), params)
             for i in range(2)]
    unwrap = jol.tree_utils.tree_unwrap_random_key_data
    p, s_chain, s_inner = params, tx.init(params), inner.init(params)
    s_eager = s_jit = tail.init(params)
    tail_jit = jax.jit(tail.update)
    for g in grads:
        u, s_inner = inner.update(g, s_inner, p)
        u_eager, s_eager = tail.update(u, s_eager, p)
        u_jit, s_jit = tail_jit(u, s_jit, p)
        u_chain, s_chain = tx.update(g, s_chain, p)
        for a, b, c in zip(jax.tree.leaves(u_eager), jax.tree.leaves(u_jit), jax.tree.leaves(u_chain)):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        for a, b in zip(jax.tree.leaves(unwrap(s_eager)), jax.tree.leaves(unwrap(s_jit))):
            np.testing.assert_array_equal(a, b)
        p = jol.apply_updates(p, u_eager)
    assert p["w"].dtype == jnp.bfloat16 and p["b"].dtype == jnp.float32
    # the whole chain jitted: the optimizer's own arithmetic may differ by an ulp under jit
    q, s = params, tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
        u, s = step(g, s, q)
        q = jol.apply_updates(q, u)
    np.testing.assert_allclose(np.asarray(q["w"], np.float32), np.asarray(p["w"], np.float32), rtol=2.0**-7)
    np.testing.assert_allclose(q["b"], p["b"], rtol=1e-6)
    # lr = 1e-4 is far below bfloat16's spacing near 1, where plain steps are lost: stochastic rounding moves
    # some entries, Kahan carries the steps in its compensation
    if isinstance(s_eager, KahanSummationState):
        assert np.any(np.asarray(s_eager.compensation["w"], np.float32) != 0)
        assert isinstance(s_eager.compensation["b"], jol.MaskedNode)
    else:
        assert not np.array_equal(p["w"], params["w"])


def test_plain_lion_in_bfloat16_does_not_move():
    params = {"w": jnp.linspace(1.0, 1.9, 32).astype(jnp.bfloat16)}  # spacing 2**-7 there, steps of 1e-4
    tx = jol.lion(1e-4)
    s = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    u, s = tx.update(g, s, params)
    np.testing.assert_array_equal(jol.apply_updates(params, u)["w"], params["w"])


@pytest.mark.parametrize("which", ["kahan", "sr"])
def test_vmap_over_learning_rate_equals_a_loop(which):
    params = {"w": jnp.linspace(0.5, 2.0, 16).astype(jnp.bfloat16)}

    def run(lr):
        tail = kahan_summation() if which == "kahan" else stochastic_rounding(jax.random.key(2))
        tx = jol.chain(jol.sgd(lr), tail)

        def body(carry, _):
            p, s = carry
            u, s = tx.update(_grad_small(p), s, p)
            return (jol.apply_updates(p, u), s), None

        return jax.lax.scan(body, (params, tx.init(params)), None, length=20)[0][0]["w"]

    lrs = jnp.asarray([1e-4, 3e-4, 1e-3], jnp.float32)
    batched = jax.jit(jax.vmap(run))(lrs)
    single = jax.jit(run)
    looped = jnp.stack([single(lr) for lr in lrs])
    np.testing.assert_array_equal(batched, looped)
    assert not np.array_equal(batched[0], batched[2])


def _grad_small(p):
    return {"w": p["w"].astype(jnp.float32) - 0.25}


def test_init_under_eval_shape_and_jit():
    params = _bf16_params()
    for tx in (stochastic_rounding(jax.random.key(0)), stochastic_rounding(jax.random.PRNGKey(0)), kahan_summation()):
        shapes = jax.eval_shape(tx.init, params)
        real = tx.init(params)
        jitted = jax.jit(tx.init)(params)
        assert jax.tree.structure(shapes) == jax.tree.structure(real) == jax.tree.structure(jitted)
        for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)):
            assert a.shape == b.shape and a.dtype == b.dtype
    shapes = jax.eval_shape(kahan_summation().init, params)
    assert isinstance(shapes, KahanSummationState) and shapes.compensation["w"].dtype == jnp.bfloat16
    assert isinstance(jax.eval_shape(stochastic_rounding(0).init, params), StochasticRoundingState)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert jax.eval_shape(kahan_summation().init, abstract).compensation["w"].shape == (64, 16)


def test_kahan_buffer_follows_param_sharding():
    params = _bf16_params()
    state = kahan_summation().init(params)
    assert state.compensation["w"].sharding == params["w"].sharding


# ----------------------------------------------------------------------------
# Errors name the function
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["seed", 1.5, jnp.zeros((2,), jnp.float32), jnp.zeros((3,), jnp.uint32), jax.random.split(jax.random.key(0), 2)],
    ids=["str", "float", "float-array", "wrong-shape", "key-batch"],
)
def test_non_key_is_refused(bad):
    p, u = {"w": jnp.ones((2,), jnp.bfloat16)}, {"w": jnp.ones((2,), jnp.float32)}
    with pytest.raises(TypeError, match=r"^apply_updates_stochastic: key must be"):
        apply_updates_stochastic(p, u, bad)
    with pytest.raises(TypeError, match=r"^stochastic_rounding: key must be"):
        stochastic_rounding(bad)
    with pytest.raises(TypeError, match=r"^round_stochastic: key must be"):
        round_stochastic(u["w"], jnp.bfloat16, bad)


def test_int_seed_only_for_the_transform():
    p, u = {"w": jnp.ones((2,), jnp.bfloat16)}, {"w": jnp.ones((2,), jnp.float32)}
    with pytest.raises(TypeError, match=r"^apply_updates_stochastic: key must be a PRNG key"):
        apply_updates_stochastic(p, u, 0)
    with pytest.raises(TypeError, match=r"^stochastic_rounding: key must be"):
        stochastic_rounding(True)
    stochastic_rounding(0)


def test_mismatched_trees_and_bad_inputs_name_the_function():
    p = {"w": jnp.ones((2,), jnp.bfloat16)}
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"^apply_updates_stochastic: updates and params must have the same tree"):
        apply_updates_stochastic(p, {"v": jnp.ones((2,))}, key)
    with pytest.raises(ValueError, match=r"^apply_updates_stochastic: the update of \['w'\] has shape"):
        apply_updates_stochastic(p, {"w": jnp.ones((3,))}, key)
    with pytest.raises(TypeError, match=r"^apply_updates_stochastic: cannot update parameter \['i'\]"):
        apply_updates_stochastic({"i": jnp.ones((2,), jnp.int32)}, {"i": jnp.ones((2,))}, key)
    with pytest.raises(TypeError, match=r"^round_stochastic: dtype must be bfloat16 or float16"):
        round_stochastic(jnp.ones(2), jnp.int8, key)
    for name, tx in (("stochastic_rounding", stochastic_rounding(0)), ("kahan_summation", kahan_summation())):
        state = tx.init(p)
        with pytest.raises(ValueError, match=rf"^{name}: updates and params must have the same tree"):
            tx.update({"v": jnp.ones((2,))}, state, p)
        with pytest.raises(ValueError, match=rf"^{name}: updates and params must have the same leaf shapes"):
            tx.update({"w": jnp.ones((3,))}, state, p)
        with pytest.raises(ValueError, match=rf"^{name}: params must be passed to update"):
            tx.update({"w": jnp.ones((2,))}, state)
        with pytest.raises(ValueError, match=rf"^{name}: the state passed to update must be of type"):
            tx.update({"w": jnp.ones((2,))}, jol.EmptyState(), p)
        with pytest.raises(TypeError, match=rf"^{name}: cannot update parameter \['i'\] of dtype int32"):
            tx.init({"i": jnp.ones((2,), jnp.int32)})
        with pytest.raises(TypeError, match=rf"^{name}: parameter \['f8'\] has dtype float8_e4m3fn"):
            tx.init({"f8": jnp.ones((2,), jnp.float8_e4m3fn)})
    other = kahan_summation().init({"w": jnp.ones((5,), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"^kahan_summation: the state's compensation for a bfloat16 parameter"):
        kahan_summation().update({"w": jnp.ones((2,))}, other, p)
    other = kahan_summation().init({"a": jnp.ones((2,), jnp.bfloat16), "b": jnp.ones((2,), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"^kahan_summation: the state's compensation does not have the structure"):
        kahan_summation().update({"w": jnp.ones((2,))}, other, p)
