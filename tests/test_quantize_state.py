"""Blockwise-quantized optimizer state (``wrappers/quantize_state.py``): 8-bit and 4-bit moments for any optimizer.

References written here, independent of the module: the dynamic maps enumerated bit pattern by bit pattern from
the definition in Dettmers et al. (2022, arXiv:2110.02861), a few published values of
``bitsandbytes.functional.create_dynamic_map``, a NumPy blockwise quantizer (``searchsorted`` on the midpoints of
the sorted map) and Adam from the paper's formula in NumPy. ``bitsandbytes``, when installed, is an extra oracle.
The sharding checks that need devices run in one subprocess with 8 simulated CPU devices (as
``test_state_shardings.py``), in JAX's default 32-bit mode.
"""

from __future__ import annotations

import functools
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_report_script
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_lite as jol
from jaxopt_lite.wrappers.quantize_state import (
    QuantizedArray,
    QuantizedState,
    dequantize_blockwise,
    dynamic_codebook,
    max_rounding_error,
    quantize_blockwise,
    quantize_state,
)

KINDS = [(8, True), (8, False), (4, True), (4, False)]  # (bits, signed)


# ----------------------------------------------------------------------------
# NumPy references.
# ----------------------------------------------------------------------------


@functools.cache
def paper_codebook(bits: int, signed: bool) -> np.ndarray:
    """Every ``bits``-bit pattern decoded as the paper defines it: an optional sign bit; then ``e`` zero bits, an
    indicator one bit, and ``f`` fraction bits indexing ``2**f`` equal bins of [0.1, 1] (the value is the bin's
    centre times ``10**-e``). The unsigned map uses the sign bit as one more fraction bit, so the decades are the
    same (``e <= bits - 2``). The two spare patterns (the signed map's negative zero, the unsigned map's
    ``00000001``) hold 1; all zeros is 0."""
    n = bits - 1 if signed else bits  # bits after the sign
    out = []
    for pattern in range(2**bits):
        negative = signed and (pattern >> n) & 1
        field = pattern & ((1 << n) - 1)
        e = n - field.bit_length()
        if field == 0 or e > bits - 2:
            out.append(1.0 if (negative or field) else 0.0)
            continue
        f = n - e - 1
        value = 10.0**-e * (0.1 + 0.9 * ((field & ((1 << f) - 1)) + 0.5) / 2**f)
        out.append(-value if negative else value)
    return np.sort(np.asarray(out, np.float64)).astype(np.float32)


def np_geometry(shape, block):
    j = max(len(shape) - 1, 0)
    while j > 0 and math.prod(shape[j:]) < block:
        j -= 1
    m = math.prod(shape[j:])
    return j, m, -(-m // block)


def np_quantize_dequantize(x: np.ndarray, bits: int, block: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(dequantized x, block absmax per entry)``: blocks along the trailing axes, nearest value of the map (ties to
    the larger magnitude), unsigned: negatives to 0 and positives never to 0."""
    cd = np.float64 if x.dtype == np.float64 else np.float32
    shape = x.shape
    j, m, nb = np_geometry(shape, block)
    rows = x.astype(cd).reshape(shape[:j] + (m,))
    rows = np.pad(rows, [(0, 0)] * j + [(0, nb * block - m)])
    blocks = rows.reshape(shape[:j] + (nb, block))
    s = np.max(np.abs(blocks), axis=-1, keepdims=True)
    usable = s >= np.finfo(cd).tiny
    c = np.where(s >= 2.0 ** (np.finfo(cd).maxexp // 2), 2.0 ** -(np.finfo(cd).maxexp // 2), 1).astype(cd)
    y = np.where(usable, (blocks * c) * (cd(1) / np.where(usable, s * c, 1)), 0).astype(cd)  # x / s, as the module
    codes = paper_codebook(bits, signed)
    c64 = codes.astype(np.float64)
    mids = ((c64[:-1] + c64[1:]) / 2).astype(cd)
    idx = np.where(y >= 0, np.searchsorted(mids, y, side="right"), np.searchsorted(mids, y, side="left"))
    if not signed:
        idx = np.where((idx == 0) & (y > 0), 1, idx)
    out = (codes.astype(cd)[idx] * s).reshape(shape[:j] + (nb * block,))[..., :m].reshape(shape)
    scale = np.broadcast_to(s, blocks.shape).reshape(shape[:j] + (nb * block,))[..., :m].reshape(shape)
    return out.astype(x.dtype), scale


def np_adam_step(p, m, v, g, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba (2015), Algorithm 1."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


# ----------------------------------------------------------------------------
# Codebooks.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "signed"), KINDS)
def test_codebook_is_the_papers_dynamic_map(bits, signed):
    c = dynamic_codebook(bits, signed)
    assert c.dtype == np.float32 and c.shape == (2**bits,)
    np.testing.assert_array_equal(c, paper_codebook(bits, signed))
    assert np.all(np.diff(c) > 0) and c[-1] == 1.0 and 0.0 in c
    if signed:  # symmetric but for +1
        np.testing.assert_array_equal(np.sort(-c[c < 0]), c[(c > 0) & (c < 1)])
    else:
        assert c[0] == 0.0


def test_codebook_published_values():
    """Values of bitsandbytes' ``create_dynamic_map`` (0.50), the paper's reference code."""
    s8, u8 = dynamic_codebook(8, True), dynamic_codebook(8, False)
    np.testing.assert_allclose(
        s8[[0, 1, 2, -2, -1]], [-0.99296875, -0.97890625, -0.96484375, 0.99296875, 1.0], rtol=1e-6
    )
    np.testing.assert_allclose(np.min(np.abs(s8[s8 != 0])), 5.5e-7, rtol=1e-6)
    np.testing.assert_allclose(u8[[1, 2, 3, -2, -1]], [3.25e-7, 7.75e-7, 2.125e-6, 0.9964844, 1.0], rtol=1e-6)
    np.testing.assert_allclose(
        dynamic_codebook(4, True)[8:], [0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875, 1.0], rtol=1e-6
    )
    # Half the largest gap (the gap to -1 counted whole): the documented error bounds.
    np.testing.assert_allclose(
        [max_rounding_error(b, s) for b, s in KINDS], [0.9 / 128, 0.9 / 256, 0.225 / 2, 0.1125 / 2], rtol=1e-5
    )


def test_codebook_and_blockwise_quantization_match_bitsandbytes():
    functional = pytest.importorskip("bitsandbytes.functional")
    torch = pytest.importorskip("torch")
    for bits, signed in KINDS:
        theirs = functional.create_dynamic_map(signed=signed, max_exponent_bits=bits - 1, total_bits=bits)
        np.testing.assert_allclose(np.unique(theirs.numpy()), dynamic_codebook(bits, signed), rtol=2e-7, atol=0)
    # 8-bit blockwise quantization of a 1-D array (one layout in both): the same codes but for a few entries near a
    # midpoint, which bitsandbytes' CPU kernel sends to the farther neighbour (ours is never farther). Its map is
    # built in float32 arithmetic: values may differ from ours in the last bit.
    x = np.random.default_rng(0).standard_normal(4000).astype(np.float32) * np.logspace(-3, 2, 4000, dtype=np.float32)
    for signed, data in ((True, x), (False, np.abs(x))):
        code = functional.create_dynamic_map(signed=signed)
        q, state = functional.quantize_blockwise(torch.from_numpy(data), code=code, blocksize=256)
        theirs = functional.dequantize_blockwise(q, state).numpy().astype(np.float64)
        ours = np.asarray(quantize_blockwise(data, 8, 256, signed=signed).dequantize()).astype(np.float64)
        scale = np.repeat(state.absmax.numpy(), 256)[: data.size]
        assert np.mean(np.isclose(theirs, ours, rtol=1e-6, atol=0)) > 0.99
        assert np.all(np.abs(ours - data) <= np.abs(theirs - data) * (1 + 1e-6) + 1e-7 * scale)
        assert np.all(np.abs(theirs - ours) <= 2 * max_rounding_error(8, signed) * scale * 1.0001)


# ----------------------------------------------------------------------------
# Round trip.
# ----------------------------------------------------------------------------

_ROUND_TRIP = {}


def _round_trip(bits, block, signed):
    key = (bits, block, signed)
    if key not in _ROUND_TRIP:

        def f(x):
            q = quantize_blockwise(x, bits, block, signed=signed)
            return q.codes, q.scales, q.dequantize()

        _ROUND_TRIP[key] = jax.jit(f)
    return _ROUND_TRIP[key]


@st.composite
def _arrays(draw):
    shape = tuple(draw(st.lists(st.integers(1, 13), min_size=1, max_size=3)))
    n = math.prod(shape)
    magnitude = draw(st.sampled_from([1.0, 1e30, 1e-30, 1e-3]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 0, n)
    x[rng.random(n) < 0.2] = 0.0
    x[rng.random(n) < 0.02] = rng.choice([-1.0, 1.0])  # entries of the largest magnitude
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (x.reshape(shape) * magnitude).astype(dtype)


@settings(max_examples=25)
@given(x=_arrays(), kind=st.sampled_from(KINDS), block=st.sampled_from([4, 6, 10, 16]))
def test_round_trip_error_is_within_half_the_largest_gap_of_the_block_scale(x, kind, block):
    bits, signed = kind
    if not signed:
        x = np.abs(x)
    codes, scales, y = (np.asarray(a) for a in _round_trip(bits, block, signed)(x))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.any(np.isnan(y)) and np.all(np.isfinite(y))
    assert np.all(y[x == 0] == 0)
    assert np.all(np.sign(y[y != 0]) == np.sign(x[y != 0]))
    ref, block_absmax = np_quantize_dequantize(x, bits, block, signed)
    scale = block_absmax.astype(np.float64)
    eps, tiny = np.finfo(x.dtype).eps, np.finfo(x.dtype).tiny  # float rounding; a subnormal block is stored as 0
    bound = max_rounding_error(bits, signed) * scale * (1 + 1e-6) + eps * scale + tiny
    assert np.all(np.abs(x.astype(np.float64) - y) <= bound)
    # The NumPy quantizer: the same values, but where XLA on CPU flushes a subnormal input or output to zero.
    normal = (np.abs(x) >= np.finfo(x.dtype).tiny) & (np.abs(ref) >= np.finfo(x.dtype).tiny)
    np.testing.assert_array_equal(y[normal], ref[normal])
    j, m, nb = np_geometry(x.shape, block)
    assert scales.shape == x.shape[:j] + (nb,) and scales.dtype == (np.float64 if x.dtype == np.float64 else np.float32)
    assert codes.shape == (x.shape if bits == 8 else x.shape[:j] + (-(-m // 2),))
    assert codes.dtype == (np.int8 if bits == 8 else np.uint8)


@pytest.mark.parametrize(("bits", "signed"), KINDS)
def test_round_trip_edge_cases(bits, signed):
    rt = _round_trip(bits, 8, signed)
    zeros = np.zeros((3, 20), np.float32)
    _, scales, y = rt(zeros)
    assert np.all(np.asarray(y) == 0) and np.all(np.asarray(scales) == 0)
    # A block's largest positive entry is exact (the map holds 1); the unsigned map keeps tiny positives.
    x = np.array([3.0, 1e-12, 0.0, 2.5, -0.5, 1.0, 0.25, 1e-30] * 2, np.float32)
    _, _, y = rt(x if signed else np.abs(x))
    y = np.asarray(y)
    assert y[0] == 3.0 and y[2] == 0.0
    if not signed:
        assert y[1] > 0 and y[7] > 0  # never 0 for a positive entry
    # inf saturates at float32's largest value, NaN spreads over its block only, nothing else.
    x = np.array([np.inf] + [1.0] * 7 + [np.nan] + [1.0] * 7 + [2.0] * 8, np.float32)
    _, _, y = rt(x)
    y = np.asarray(y)
    assert y[0] == np.finfo(np.float32).max and np.all(np.isfinite(y[:8]))
    assert np.all(np.isnan(y[8:16])) and np.all(y[16:] == 2.0)
    # Subnormal blocks are stored as zeros; other dtypes round trip in their own dtype.
    _, _, y = rt(np.full(8, 1e-40, np.float32))
    assert np.all(np.asarray(y) == 0)
    for dtype in (jnp.bfloat16, jnp.float16):
        x = jnp.linspace(0.1, 2.0, 40, dtype=dtype)
        y = rt(x)[2]
        assert y.dtype == dtype and y.shape == (40,)
        assert np.all(
            np.abs(np.asarray(y, np.float32) - np.asarray(x, np.float32)) <= 2 * max_rounding_error(bits, signed) * 2.0
        )


def test_layout_keeps_leading_axes_and_merges_short_trailing_axes():
    quantize = jax.jit(quantize_blockwise, static_argnums=(1, 2, 3))
    q = quantize(jnp.ones((3, 5, 4, 7)), 4, 16)
    assert q.block_axis == 2 and q.scales.shape == (3, 5, 2) and q.codes.shape == (3, 5, 14)
    q = quantize(jnp.ones((6, 40)), 8, 16)
    assert q.block_axis == 1 and q.scales.shape == (6, 3) and q.codes.shape == (6, 40)
    q = quantize(jnp.ones((9, 1)), 8, 4)
    assert q.block_axis == 0 and q.scales.shape == (3,)
    q = quantize(jnp.float32(2.5), 4, 4)
    assert q.scales.shape == (1,) and q.codes.shape == (1,) and float(q.dequantize()) == 2.5
    assert "bits=4" in repr(q)


# ----------------------------------------------------------------------------
# 8-bit and 4-bit Adam against the NumPy reference, step by step.
# ----------------------------------------------------------------------------

SHAPES = {"w": (6, 100), "b": (37,)}  # neither a multiple of the block size (64): a partial block per row
_RNG = np.random.default_rng(1)
TARGETS = {k: _RNG.standard_normal(s) for k, s in SHAPES.items()}
CURVATURE = {k: _RNG.uniform(0.2, 3.0, s) for k, s in SHAPES.items()}


def _grad(params, t):
    """A noisy separable quadratic, computed in NumPy: the same gradients for every run."""
    rng = np.random.default_rng(1000 + t)
    return {k: CURVATURE[k] * (params[k] - TARGETS[k]) + 0.3 * rng.standard_normal(SHAPES[k]) for k in SHAPES}


def _quadratic(params):
    return sum(float(np.sum(0.5 * CURVATURE[k] * (params[k] - TARGETS[k]) ** 2)) for k in SHAPES)


def _train(tx, n_steps=200):
    """``(params after each step, final state)`` of ``tx`` on the quadratic, from zeros, float64."""
    params = {k: np.zeros(s) for k, s in SHAPES.items()}
    state, step, trace = tx.init(params), jax.jit(tx.update), []
    for t in range(1, n_steps + 1):
        updates, state = step(_grad(params, t), state, params)
        params = {k: np.asarray(params[k] + updates[k]) for k in SHAPES}
        trace.append(params)
    return trace, state


_TRACES = {}


def _adam_run(bits=None, key=None):
    """``_train`` of Adam (lr 1e-2): full precision (``bits=None``) or quantized in blocks of 64, once per session."""
    if (bits, key) not in _TRACES:
        tx = jol.adam(1e-2)
        if bits is not None:
            tx = quantize_state(tx, bits=bits, block_size=64, min_size=0, key=key)
        _TRACES[bits, key] = _train(tx)
    return _TRACES[bits, key]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_adam_equals_numpy_reference_step_by_step(bits):
    lr, block = 1e-2, 64
    trace, state = _adam_run(bits)
    p = {k: np.zeros(s) for k, s in SHAPES.items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    worst = 0.0
    for t, got in enumerate(trace, start=1):
        g = _grad(p, t)
        for k in SHAPES:
            p[k], m_new, v_new = np_adam_step(p[k], m[k], v[k], g[k], t, lr)
            m[k] = np_quantize_dequantize(m_new, bits, block, True)[0]
            v[k] = np_quantize_dequantize(v_new, bits, block, False)[0]
            worst = max(worst, float(np.max(np.abs(got[k] - p[k]))))
    assert worst < 1e-12, worst  # agreement to rounding, at every one of the 200 steps
    inner = state.inner_state[0]
    for k in SHAPES:
        assert inner.mu[k].signed and not inner.nu[k].signed
        np.testing.assert_allclose(np.asarray(inner.mu[k].dequantize()), m[k], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.asarray(inner.nu[k].dequantize()), v[k], rtol=1e-12, atol=1e-15)
    # Loosely, the quantized run tracks full-precision Adam (8-bit closely; 4-bit rounding to nearest is slower:
    # see test_stochastic_rounding_4_bit_adam_tracks_better).
    plain = _adam_run()[0]
    start = _quadratic({k: np.zeros(s) for k, s in SHAPES.items()})
    # Measured: loss 1.09x (8-bit), 2.55x (4-bit) full precision's; parameters 2% and 30% of their norm away.
    assert _quadratic(trace[-1]) < (1.15 if bits == 8 else 3.0) * _quadratic(plain[-1])
    assert _quadratic(trace[-1]) < 0.2 * start
    for k in SHAPES:
        gap = np.linalg.norm(trace[-1][k] - plain[-1][k]) / np.linalg.norm(plain[-1][k])
        assert gap < (0.04 if bits == 8 else 0.4), (k, gap)


def test_stochastic_rounding_is_unbiased_between_neighbours_and_matches_its_definition():
    x = np.linspace(-1.0, 1.0, 50)
    x[0], x[1] = 1.0, 0.0  # the scale, and an exact zero
    keys = jax.random.split(jax.random.key(0), 400)
    for bits, signed in KINDS:
        data = x if signed else np.abs(x)
        draw = jax.jit(
            jax.vmap(lambda k, d=data, b=bits, s=signed: quantize_blockwise(d, b, 64, s, key=k).dequantize())
        )
        draws = np.asarray(draw(keys))
        codes = dynamic_codebook(bits, signed).astype(np.float64)
        below = codes[np.clip(np.searchsorted(codes, data, side="right") - 1, 0, codes.size - 1)]
        above = codes[np.clip(np.searchsorted(codes, data, side="left"), 0, codes.size - 1)]
        assert np.all((draws == below) | (draws == above))  # one of the two values around each entry
        assert np.all(draws[:, 1] == 0)
        inside = data >= codes[0]  # the signed map has no -1: below its lowest value, that value
        sd = (above - below)[inside] / 2 / np.sqrt(len(keys))
        assert np.all(np.abs(draws.mean(0)[inside] - data[inside]) <= 5 * sd + 1e-12)  # unbiased
    # The rounding of one call, exactly: seed from the key, MurmurHash3's finalizer of (index * golden + seed).
    key = jax.random.key(7)
    data = np.random.default_rng(4).standard_normal((3, 20))
    ours = np.asarray(quantize_blockwise(data, 4, 8, key=key).dequantize())
    seed = np.uint32(jax.random.bits(key, (), jnp.uint32))
    with np.errstate(over="ignore"):
        h = np.arange(3 * 24, dtype=np.uint32).reshape(3, 24) * np.uint32(0x9E3779B9) + seed
        h = (h ^ (h >> 16)) * np.uint32(0x85EBCA6B)
        h = (h ^ (h >> 13)) * np.uint32(0xC2B2AE35)
        h = h ^ (h >> 16)
    u = (h >> 8).astype(np.float64) * 2.0**-24
    blocks = np.pad(data, [(0, 0), (0, 4)]).reshape(3, 3, 8)
    s = np.max(np.abs(blocks), -1, keepdims=True)
    y = (blocks / s).reshape(3, 24)
    mags = dynamic_codebook(4, True).astype(np.float64)
    mags = mags[mags >= 0]
    low = np.minimum(np.searchsorted(mags, np.abs(y), side="right") - 1, mags.size - 2)
    rank = low + (u < (np.abs(y) - mags[low]) / (mags[low + 1] - mags[low]))
    rank = np.where(y < 0, np.minimum(rank, 7), rank)
    ref = (np.sign(y) * mags[rank]).reshape(3, 3, 8) * s
    np.testing.assert_allclose(ours, ref.reshape(3, 24)[:, :20], rtol=1e-12)


def test_stochastic_rounding_4_bit_adam_tracks_better():
    plain, nearest = _adam_run()[0], _adam_run(4)[0]
    trace, state = _adam_run(4, key=0)
    assert state.rng_key is not None
    assert _quadratic(trace[-1]) < 0.7 * _quadratic(nearest[-1])  # measured 0.56
    assert _quadratic(trace[-1]) < 1.6 * _quadratic(plain[-1])  # measured 1.43


# ----------------------------------------------------------------------------
# Any inner optimizer; jit, eval_shape, vmap, scan; memory.
# ----------------------------------------------------------------------------


def _params(dtype=jnp.float64):
    rng = np.random.default_rng(2)
    return {
        "w": jnp.asarray(rng.standard_normal((8, 40)), dtype),
        "b": jnp.asarray(rng.standard_normal(40), dtype),
        "s": jnp.asarray(0.5, dtype),
    }


def _loss(p):
    return sum(jnp.sum((x - 0.3) ** 2 + 0.1 * jnp.sin(3.0 * x)) for x in jax.tree.leaves(p))


INNER = {
    "adam": lambda: jol.adam(1e-2),
    "lion": lambda: jol.lion(1e-3),
    "sgd_momentum": lambda: jol.sgd(1e-2, momentum=0.9),
    "multisteps_adam": lambda: jol.MultiSteps(jol.adam(1e-2), every_k_schedule=2).gradient_transformation(),
    "chain_clip_adamw": lambda: jol.chain(
        jol.clip_by_global_norm(1.0), jol.adamw(jol.linear_schedule(1e-2, 1e-3, 10), weight_decay=1e-2)
    ),
}
# The quantized leaves of each, and whether they take the unsigned map.
QUANTIZED = {
    "adam": {
        ".inner_state[0].mu['w']": True,
        ".inner_state[0].mu['b']": True,
        ".inner_state[0].nu['w']": False,
        ".inner_state[0].nu['b']": False,
    },
    "lion": {".inner_state[0].mu['w']": True, ".inner_state[0].mu['b']": True},
    "sgd_momentum": {".inner_state[0].trace['w']": True, ".inner_state[0].trace['b']": True},
    "multisteps_adam": {
        ".inner_state.inner_opt_state[0].mu['w']": True,
        ".inner_state.inner_opt_state[0].mu['b']": True,
        ".inner_state.inner_opt_state[0].nu['w']": False,
        ".inner_state.inner_opt_state[0].nu['b']": False,
        ".inner_state.acc_grads['w']": True,
        ".inner_state.acc_grads['b']": True,
    },
}


def _quantized_leaves(state):
    flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, QuantizedArray))[0]
    return {jax.tree_util.keystr(p): x.signed for p, x in flat if isinstance(x, QuantizedArray)}


_loss_grad = jax.jit(jax.grad(_loss))


def _run(tx, params, n, jit=True):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for _ in range(n):
        updates, state = update(_loss_grad(params), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, state


@pytest.mark.parametrize("name", list(INNER))
def test_any_inner_optimizer_quantized_tracks_full_precision_and_jit_equals_eager(name):
    params = _params()
    tx = quantize_state(INNER[name](), min_size=40, block_size=16)
    state = tx.init(params)
    assert isinstance(state, QuantizedState)
    if name in QUANTIZED:
        assert _quantized_leaves(state) == QUANTIZED[name]
    else:
        assert len(_quantized_leaves(state)) == 4
    # Small leaves and counters stay as they are.
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if "['s']" in jax.tree_util.keystr(path) or "count" in jax.tree_util.keystr(path):
            assert leaf.shape == () and not jax.tree_util.keystr(path).endswith(("codes", "scales"))
    # eval_shape of init: the same tree, shapes and dtypes.
    abstract = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    assert all(
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(state))
    )
    jitted, jitted_state = _run(tx, params, 2)
    eager, eager_state = _run(tx, params, 2, jit=False)  # (init runs eagerly in both)
    for a, b in zip(jax.tree.leaves((jitted, jitted_state)), jax.tree.leaves((eager, eager_state))):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-12, atol=1e-14)
    quantized, _ = _run(tx, params, 6)
    full, _ = _run(INNER[name](), params, 6)
    start = jax.tree.leaves(params)
    for q, f, p in zip(jax.tree.leaves(quantized), jax.tree.leaves(full), start):
        assert np.linalg.norm(q - f) <= 0.05 * np.linalg.norm(f - p) + 1e-12


def test_vmap_over_inner_learning_rate_equals_a_loop_and_runs_in_scan():
    params = _params()

    def train(lr):
        tx = quantize_state(jol.adam(lr), bits=8, block_size=16, min_size=0)

        def body(carry, _):
            p, state = carry
            updates, state = tx.update(jax.grad(_loss)(p), state, p)
            return (jol.apply_updates(p, updates), state), None

        (p, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=15)
        return p, state

    lrs = jnp.array([1e-3, 1e-2, 3e-2])
    batched_params, batched_state = jax.jit(jax.vmap(train))(lrs)
    single = jax.jit(train)
    for i, lr in enumerate(lrs):
        p, state = single(lr)
        for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves((batched_params, batched_state))):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b[i], np.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("bits", "limit"), [(8, 2.1), (4, 1.1)])
def test_adam_state_bytes_per_parameter(bits, limit):
    tx = quantize_state(jol.adam(1e-3), bits=bits)
    for shape in [(512, 512), (1024, 4096), (50257, 768)]:
        state = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct(shape, jnp.float32)})
        per_param = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / math.prod(shape)
        assert 2 * bits / 8 < per_param <= limit, (shape, per_param)
        assert per_param == pytest.approx(2 * (bits / 8 + 4 / 256), rel=1e-4)


def test_fused_layout():
    params = {
        "w": jnp.asarray(np.random.default_rng(3).standard_normal((8, 40)), jnp.float32),
        "b": jnp.linspace(-1.0, 1.0, 40, dtype=jnp.float32),
    }
    fused = jol.fuse(params)
    tx = quantize_state(jol.adam(1e-2), bits=8, block_size=32, min_size=0)
    state = jax.jit(tx.init)(fused)
    mu = state.inner_state[0].mu
    assert isinstance(mu, jol.Fused) and isinstance(mu.buffers[0], QuantizedArray)
    assert mu.buffers[0].shape == (360,) and mu.buffers[0].scales.shape == (12,)
    assert quantize_state(jol.adam(1e-2), bits=4, block_size=32, min_size=0).init(fused).inner_state[0].mu.buffers[
        0
    ].codes.shape == (180,)

    @jax.jit
    def step(f, state):
        grads = jax.grad(lambda f: _loss(f.tree()))(f)
        updates, state = tx.update(grads, state, f)
        return jol.apply_updates(f, updates), state

    plain_tx = jol.adam(1e-2)

    @jax.jit
    def plain_step(f, state):
        updates, state = plain_tx.update(jax.grad(lambda f: _loss(f.tree()))(f), state, f)
        return jol.apply_updates(f, updates), state

    plain, plain_state = fused, plain_tx.init(fused)
    for _ in range(10):
        fused, state = step(fused, state)
        plain, plain_state = plain_step(plain, plain_state)
    moved = np.linalg.norm(np.asarray(plain.buffers[0]) - np.asarray(jol.fuse(params).buffers[0]))
    assert np.linalg.norm(np.asarray(fused.buffers[0]) - np.asarray(plain.buffers[0])) < 0.1 * moved


def test_unsigned_map_choice_default_and_override():
    params = {"w": jnp.ones((4, 8))}
    # SM3's nu is a momentum (signed), Adafactor's unfactored v a second moment.
    sm3 = jax.eval_shape(quantize_state(jol.sm3(0.1), min_size=0, block_size=8).init, params)
    assert _quantized_leaves(sm3) == {".inner_state[0].nu['w']": True}
    factored = quantize_state(jol.adafactor(1e-2, factored=False, momentum=0.9), min_size=0, block_size=8)
    leaves = _quantized_leaves(jax.eval_shape(factored.init, params))
    assert [v for k, v in leaves.items() if ".v['w']" in k] == [False]
    assert all(v for k, v in leaves.items() if ".v['w']" not in k)
    # A function of the key path replaces the rule.
    seen = []

    def all_unsigned(path):
        seen.append(jax.tree_util.keystr(path))
        return "nu" in seen[-1] or "mu" in seen[-1]

    tx = quantize_state(jol.adam(1e-3), min_size=0, block_size=8, unsigned=all_unsigned)
    assert set(_quantized_leaves(jax.eval_shape(tx.init, params)).values()) == {False}
    assert sorted(seen) == ["[0].mu['w']", "[0].nu['w']"]


def test_min_size_and_leaf_kinds():
    params = {"big": jnp.ones((64,)), "small": jnp.ones((8,)), "c": jnp.ones((64,), jnp.complex64)}
    state = jax.eval_shape(quantize_state(jol.sgd(0.1, momentum=0.9), min_size=64, block_size=16).init, params)
    trace = state.inner_state[0].trace
    assert isinstance(trace["big"], QuantizedArray)
    assert not isinstance(trace["small"], QuantizedArray) and not isinstance(trace["c"], QuantizedArray)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 3}, "bits must be 4 or 8, got 3"),
        ({"bits": 16}, "bits must be 4 or 8"),
        ({"bits": True}, "bits must be 4 or 8"),
        ({"block_size": 0}, "block_size must be a positive integer, got 0"),
        ({"block_size": -8}, "block_size must be a positive integer"),
        ({"block_size": 2.5}, "block_size must be a positive integer"),
        ({"bits": 4, "block_size": 7}, "block_size must be even for bits=4"),
        ({"min_size": -1}, "min_size must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=f"^quantize_state: {message}"):
        quantize_state(jol.adam(1e-3), **kwargs)


def test_other_errors_name_quantize_state():
    with pytest.raises(TypeError, match="^quantize_state: inner must be a GradientTransformation"):
        quantize_state(lambda x: x)
    with pytest.raises(TypeError, match="^quantize_state: unsigned must be None or a function"):
        quantize_state(jol.adam(1e-3), unsigned={"nu"})
    with pytest.raises(ValueError, match="^quantize_blockwise: bits must be 4 or 8"):
        quantize_blockwise(jnp.ones(4), bits=2)
    with pytest.raises(TypeError, match="^quantize_blockwise: x must be a real floating-point array"):
        quantize_blockwise(jnp.ones(4, jnp.int32))
    with pytest.raises(TypeError, match="^dequantize_blockwise: expected a QuantizedArray"):
        dequantize_blockwise(jnp.ones(4))
    params = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32)}
    tx = quantize_state(jol.adam(1e-3), min_size=0, block_size=8)
    state = jax.eval_shape(tx.init, params)
    with pytest.raises(ValueError, match="^quantize_state: .*state"):  # adam's own state, not the wrapper's
        jax.eval_shape(tx.update, params, jax.eval_shape(jol.adam(1e-3).init, params), params)
    with pytest.raises(ValueError, match="^quantize_state: "):  # updates shaped unlike the params
        jax.eval_shape(tx.update, {"w": jax.ShapeDtypeStruct((4, 9), jnp.float32)}, state, params)


# ----------------------------------------------------------------------------
# Shardings: the rules on an abstract mesh, then on 8 simulated devices.
# ----------------------------------------------------------------------------


def _specs(tree):
    return {jax.tree_util.keystr(p): tuple(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_state_shardings_of_quantized_leaves_follow_the_params():
    mesh = AbstractMesh((4, 2), ("data", "model"))
    params = {
        "w": jax.ShapeDtypeStruct((8, 32), jnp.float32),
        "v": jax.ShapeDtypeStruct((8, 12), jnp.float32),
        "k": jax.ShapeDtypeStruct((8, 2, 4), jnp.float32),
    }
    shardings = {
        "w": NamedSharding(mesh, P("data", "model")),
        "v": NamedSharding(mesh, P(None, "model")),
        "k": NamedSharding(mesh, P("data", None, None)),
    }
    specs8 = _specs(
        jol.sharding.state_shardings(quantize_state(jol.adam(1e-3), block_size=8, min_size=0), params, shardings)
    )
    assert specs8[".inner_state[0].mu['w'].codes"] == ("data", "model")  # the parameter's shape: its sharding
    assert specs8[".inner_state[0].mu['w'].scales"] == ("data", "model")  # (8, 4): each device holds 2 whole blocks
    assert specs8[".inner_state[0].nu['v'].codes"] == (None, "model")
    assert specs8[".inner_state[0].nu['v'].scales"] == ()  # 6 entries per device: not whole blocks of 8
    assert specs8[".inner_state[0].mu['k'].scales"] == ("data",)  # blocks over the merged (2, 4): (8, 1)
    assert specs8[".inner_state[0].count"] == ()
    specs4 = _specs(
        jol.sharding.state_shardings(
            quantize_state(jol.adam(1e-3), bits=4, block_size=8, min_size=0), params, shardings
        )
    )
    assert specs4[".inner_state[0].mu['w'].codes"] == ("data", "model")  # (8, 16): 8 bytes per device
    assert specs4[".inner_state[0].nu['v'].codes"] == (None, "model")  # (8, 6): 3 whole bytes per device
    assert specs4[".inner_state[0].mu['k'].codes"] == ("data",)  # (8, 4)
    zero = _specs(
        jol.sharding.state_shardings(
            quantize_state(jol.adam(1e-3), bits=4, block_size=8, min_size=0), params, shardings, zero_axis="data"
        )
    )
    assert zero[".inner_state[0].nu['v'].codes"] == ("data", "model") and zero[".inner_state[0].nu['v'].scales"] == (
        "data",
    )


SCRIPT = textwrap.dedent(
    r"""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxopt_lite as jol
    from jaxopt_lite.sharding import init_sharded, state_shardings

    rng = np.random.default_rng(0)
    SHAPES = {"w": (8, 64), "v": (64, 16), "b": (64,)}
    HOST = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    TARGET = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}

    def loss(p):
        return sum(jnp.sum((p[k] - TARGET[k]) ** 2 + 0.1 * jnp.sin(3.0 * p[k])) for k in p)

    def make_step(tx, **kw):
        def step(p, s):
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return jol.apply_updates(p, u), s
        return jax.jit(step, **kw)

    def mismatches(tree, shardings):
        return [jax.tree_util.keystr(p) for (p, x), s in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                                                              jax.tree.leaves(shardings)) if x.sharding != s]

    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(4, 2), ("data", "model"))
    report = {"n_devices": len(devices)}
    # 8-bit state following the params (sharded over both axes); 4-bit state with ZeRO-1 over data (the params
    # replicated over data).
    for name, bits, specs, zero in [
        ("follow8", 8, {"w": P("data", "model"), "v": P("model", None), "b": P("data")}, None),
        ("zero4", 4, {"w": P(None, "model"), "v": P(), "b": P()}, "data"),
    ]:
        tx = jol.quantize_state(jol.adam(1e-2), bits=bits, block_size=8, min_size=0)
        ref_p = {k: jnp.asarray(v) for k, v in HOST.items()}
        ref_s = jax.jit(tx.init)(ref_p)
        one = make_step(tx)
        for _ in range(3):
            ref_p, ref_s = one(ref_p, ref_s)
        p_shard = {k: NamedSharding(mesh, s) for k, s in specs.items()}
        params = jax.device_put(HOST, p_shard)
        shardings = state_shardings(tx, params, p_shard, zero_axis=zero)
        state = init_sharded(tx, params, p_shard, zero_axis=zero)
        entry = {"init": mismatches(state, shardings)}
        step = make_step(tx, in_shardings=(p_shard, shardings), out_shardings=(p_shard, shardings))
        for _ in range(3):
            params, state = step(params, state)
        entry["step"] = mismatches(state, shardings)
        entry["max_diff"] = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                                for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ref_p, ref_s))))
        mu = state.inner_state[0].mu
        entry["bytes"] = {k: [mu[k].codes.addressable_shards[0].data.nbytes, mu[k].codes.nbytes,
                              mu[k].scales.addressable_shards[0].data.nbytes, mu[k].scales.nbytes]
                          for k in SHAPES}
        entry["specs"] = {jax.tree_util.keystr(p): str(s.spec)
                          for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
        report[name] = entry
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def device_report():
    return run_report_script(SCRIPT)


@pytest.mark.parametrize("name", ["follow8", "zero4"])
def test_sharded_quantized_state_on_8_devices(device_report, name):
    assert device_report["n_devices"] == 8
    entry = device_report[name]
    assert entry["init"] == [] and entry["step"] == []  # the shardings state_shardings gives, kept by 3 steps
    assert entry["max_diff"] < 1e-6  # equals the one-device run
    if name == "follow8":
        # w is split 8 ways, and so are its codes (its shape) and scales ((8, 8): whole blocks per device).
        codes, codes_full, scales, scales_full = entry["bytes"]["w"]
        assert codes * 8 == codes_full and scales * 8 == scales_full
        assert "'data', 'model'" in entry["specs"][".inner_state[0].mu['w'].codes"]
    else:
        # ZeRO-1 over data (4 devices): every code buffer and its scales hold a quarter per device, on top of the
        # params' own sharding (w's over model).
        for k, parts in (("w", 8), ("v", 4), ("b", 4)):
            codes, codes_full, scales, scales_full = entry["bytes"][k]
            assert codes * parts == codes_full and scales * parts == scales_full, k
