"""Tests for jaxopt_lite.training: early stopping and reduce_on_plateau."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_lite.aliases import adam, sgd
from jaxopt_lite.base import apply_updates, chain
from jaxopt_lite.training import (
    EarlyStoppingState,
    ReduceLROnPlateauState,
    early_stopping,
    reduce_on_plateau,
)

# --------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------


def reference_early_stopping(values, patience, min_delta=0.0, mode="min", baseline=None, min_steps=0):
    """Plain-Python early stopping, written from the documented rule; returns the state after each value."""
    if baseline is None:
        best = -math.inf if mode == "max" else math.inf
    else:
        best = baseline
    best_step, since, count, stop = -1, 0, 0, False
    history = []
    for v in values:
        if not stop:
            improved = (v > best + min_delta) if mode == "max" else (v < best - min_delta)
            if improved:
                best, best_step, since = v, count, 0
            else:
                since += 1
            count += 1
            stop = since >= max(patience, 1) and count >= min_steps
        history.append((best, best_step, since, count, stop))
    return history


def _scan_early_stopping(values, patience, min_delta, mode, baseline=None, min_steps=0):
    """Runs early stopping over ``values`` in a jitted lax.scan with traced patience/min_delta."""

    @jax.jit
    def run(values, patience, min_delta):
        es = early_stopping(patience, min_delta, mode=mode, baseline=baseline, min_steps=min_steps)

        def step(state, v):
            state = es.update(v, state)
            return state, state

        return jax.lax.scan(step, es.init(), values)[1]

    return run(jnp.asarray(values, jnp.float64), jnp.asarray(patience), jnp.asarray(min_delta, jnp.float64))


def _assert_matches_reference(history, ref):
    np.testing.assert_array_equal(np.asarray(history.best_value), np.array([r[0] for r in ref]))
    np.testing.assert_array_equal(np.asarray(history.best_step), np.array([r[1] for r in ref]))
    np.testing.assert_array_equal(np.asarray(history.steps_since_improvement), np.array([r[2] for r in ref]))
    np.testing.assert_array_equal(np.asarray(history.count), np.array([r[3] for r in ref]))
    np.testing.assert_array_equal(np.asarray(history.should_stop), np.array([r[4] for r in ref]))


# A small value alphabet makes ties (which must not count as improvements) frequent.
_values = st.lists(
    st.one_of(
        st.sampled_from([0.0, 0.5, 1.0, 1.05, 2.0, 3.0]),
        st.floats(-5, 5, allow_nan=False, allow_subnormal=False),  # XLA:CPU flushes subnormals to zero
    ),
    min_size=20,
    max_size=20,
)


@settings(max_examples=40, deadline=None)
@given(
    values=_values,
    patience=st.integers(0, 5),
    min_delta=st.sampled_from([0.0, 0.04, 0.1, 1.0]),
    mode=st.sampled_from(["min", "max"]),
)
def test_early_stopping_matches_python_reference(values, patience, min_delta, mode):
    history = _scan_early_stopping(values, patience, min_delta, mode)
    _assert_matches_reference(history, reference_early_stopping(values, patience, min_delta, mode))


@settings(max_examples=15, deadline=None)
@given(values=_values, patience=st.integers(1, 4), baseline=st.sampled_from([-1.0, 0.5, 2.0]), min_steps=st.integers(0, 8))
def test_early_stopping_baseline_and_min_steps_match_reference(values, patience, baseline, min_steps):
    history = _scan_early_stopping(values, patience, 0.0, "min", baseline=baseline, min_steps=min_steps)
    ref = reference_early_stopping(values, patience, 0.0, "min", baseline=baseline, min_steps=min_steps)
    _assert_matches_reference(history, ref)


def test_early_stopping_worked_example():
    es = early_stopping(patience=2)
    state = es.init()
    assert isinstance(state, EarlyStoppingState)
    assert state.best_value == np.inf and state.best_step == -1 and not state.should_stop
    stops = []
    for v in [3.0, 2.0, 2.5, 2.0, 1.0, 0.5]:  # the tie 2.0 is not an improvement
        state = es.update(v, state)
        stops.append(bool(state.should_stop))
    assert stops == [False, False, False, True, True, True]
    assert float(state.best_value) == 2.0 and int(state.best_step) == 1
    assert int(state.count) == 4  # frozen once stopped: the later 1.0 and 0.5 are ignored


def test_early_stopping_patience_counts_consecutive_non_improvements():
    values = [5.0, 4.0, 4.5, 4.5, 3.0, 3.5, 3.5, 3.5, 3.5]
    for patience, stop_count in [(0, 3), (1, 3), (2, 4), (3, 8), (4, 9), (5, None)]:
        history = _scan_early_stopping(values, patience, 0.0, "min")
        stopped = np.asarray(history.should_stop)
        first = int(np.argmax(stopped)) + 1 if stopped.any() else None
        assert first == stop_count, patience


def test_early_stopping_min_delta_requires_a_large_enough_improvement():
    values = [1.0, 0.95, 0.92, 0.5]
    loose = _scan_early_stopping(values, 5, 0.0, "min")
    strict = _scan_early_stopping(values, 5, 0.1, "min")
    np.testing.assert_array_equal(loose.best_step, [0, 1, 2, 3])
    np.testing.assert_array_equal(strict.best_step, [0, 0, 0, 3])  # 0.95, 0.92 are within 0.1 of 1.0
    np.testing.assert_array_equal(strict.steps_since_improvement, [0, 1, 2, 0])


def test_early_stopping_max_mode_tracks_the_largest_value():
    history = _scan_early_stopping([0.1, 0.3, 0.2, 0.25, 0.29], 3, 0.0, "max")
    np.testing.assert_allclose(history.best_value, [0.1, 0.3, 0.3, 0.3, 0.3])
    np.testing.assert_array_equal(history.should_stop, [False, False, False, False, True])


def test_early_stopping_nan_never_improves():
    history = _scan_early_stopping([1.0, np.nan, np.nan, 0.5], 3, 0.0, "min")
    np.testing.assert_array_equal(history.best_value, [1.0, 1.0, 1.0, 0.5])
    np.testing.assert_array_equal(history.steps_since_improvement, [0, 1, 2, 0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patience=-1), "patience"),
        (dict(patience=2, mode="avg"), "mode"),
        (dict(patience=2, min_delta=-0.1), "min_delta"),
        (dict(patience=2, min_steps=-3), "min_steps"),
        (dict(patience=2, baseline=float("nan")), "baseline"),
    ],
)
def test_early_stopping_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        early_stopping(**kwargs)


def test_early_stopping_rejects_missing_params_and_non_scalar_values():
    es = early_stopping(2, restore_best=True)
    with pytest.raises(ValueError, match="params"):
        es.init()
    state = es.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="params"):
        es.update(1.0, state)
    with pytest.raises(ValueError, match="scalar"):
        early_stopping(2).update(jnp.ones(3), early_stopping(2).init())


def test_early_stopping_restore_best_keeps_the_params_of_the_best_value():
    values = jnp.array([4.0, 3.0, 1.0, 2.0, 0.5, 0.7, 0.9, 3.0, 4.0, 0.1])
    es = early_stopping(patience=3, restore_best=True)
    params0 = {"w": jnp.zeros(3), "b": jnp.zeros([], jnp.float32)}

    def step(carry, t):
        params, state = carry
        params = {"w": params["w"] + 1.0, "b": params["b"] + jnp.float32(1.0)}  # params at update t is t + 1
        state = es.update(values[t], state, params)
        return (params, state), None

    (_, state), _ = jax.jit(lambda: jax.lax.scan(step, (params0, es.init(params0)), jnp.arange(10)))()
    assert int(state.best_step) == 4 and float(state.best_value) == 0.5
    assert bool(state.should_stop) and int(state.count) == 8  # 0.1 at update 9 comes after the stop
    np.testing.assert_array_equal(state.best_params["w"], np.full(3, 5.0))
    assert state.best_params["b"].dtype == jnp.float32 and float(state.best_params["b"]) == 5.0


def _train_with_early_stopping(loop: str, n_steps: int = 200):
    """GD on a training loss (w - 2)^2 while monitoring a validation loss (w - 1)^2.

    Starting at w = 0, the validation loss falls until w passes 1 and rises after:
    early stopping must stop soon after and restore the w closest to 1.
    """
    opt = sgd(learning_rate=0.05)
    es = early_stopping(patience=5, restore_best=True)
    params = jnp.zeros([])
    init = (params, opt.init(params), es.init(params))

    def body(carry):
        params, opt_state, es_state = carry
        grads = jax.grad(lambda w: (w - 2.0) ** 2)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        new_params = apply_updates(params, updates)
        new_params = jnp.where(es_state.should_stop, params, new_params)  # no training after a stop
        es_state = es.update((new_params - 1.0) ** 2, es_state, new_params)
        return new_params, opt_state, es_state

    if loop == "while":
        return jax.jit(lambda c: jax.lax.while_loop(lambda c: ~c[2].should_stop, body, c))(init)
    return jax.jit(lambda c: jax.lax.scan(lambda c, _: (body(c), None), c, None, length=n_steps)[0])(init)


def test_early_stopping_in_while_loop_and_scan_agree():
    w_while, _, es_while = _train_with_early_stopping("while")
    w_scan, _, es_scan = _train_with_early_stopping("scan")
    # The plain-Python trajectory: w_{t+1} = w_t - 0.05 * 2 (w_t - 2) = 0.9 w_t + 0.2.
    ws, w = [], 0.0
    for _ in range(200):
        w = 0.9 * w + 0.2
        ws.append(w)
    ref = reference_early_stopping([(x - 1.0) ** 2 for x in ws], 5)
    stop_at = next(i for i, r in enumerate(ref) if r[4])
    best_step = ref[stop_at][1]
    assert int(es_while.count) == stop_at + 1 and int(es_while.best_step) == best_step
    np.testing.assert_allclose(es_while.best_params, ws[best_step], rtol=1e-12)
    assert abs(ws[best_step] - 1.0) == min(abs(x - 1.0) for x in ws[: stop_at + 1])
    np.testing.assert_allclose(w_while, ws[stop_at], rtol=1e-12)
    # A fixed-length scan ends in exactly the same place because a stopped state is frozen.
    for a, b in zip(jax.tree.leaves((w_while, es_while)), jax.tree.leaves((w_scan, es_scan))):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_vmaps_over_patience_and_min_delta():
    values = jnp.asarray(np.random.default_rng(1).normal(size=30).cumsum())
    patiences = jnp.array([0, 1, 2, 4, 7])
    deltas = jnp.array([0.0, 0.1, 0.0, 0.5, 0.2])

    def run(p, d):
        es = early_stopping(p, d)
        return jax.lax.scan(lambda s, v: (es.update(v, s), None), es.init(), values)[0]

    batched = jax.jit(jax.vmap(run))(patiences, deltas)
    for i in range(5):
        ref = reference_early_stopping(np.asarray(values).tolist(), int(patiences[i]), float(deltas[i]))[-1]
        assert (float(batched.best_value[i]), int(batched.best_step[i]), int(batched.count[i])) == (
            ref[0],
            ref[1],
            ref[3],
        )
        assert bool(batched.should_stop[i]) == ref[4]


# --------------------------------------------------------------------------------------
# reduce_on_plateau
# --------------------------------------------------------------------------------------

_FIELDS = ("scale", "best_value", "plateau_count", "cooldown_count", "count", "avg_value")


def _compare_with_optax(values, params, **kwargs):
    ours, theirs = reduce_on_plateau(**kwargs), optax.contrib.reduce_on_plateau(**kwargs)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert isinstance(s_ours, ReduceLROnPlateauState) and s_ours._fields == _FIELDS
    for a, b in zip(s_ours, s_theirs):
        assert a.dtype == b.dtype
    up_ours, up_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    grads = jax.tree.map(jnp.ones_like, params)
    scales = []
    for v in values:
        u_ours, s_ours = up_ours(grads, s_ours, params, value=v)
        u_theirs, s_theirs = up_theirs(grads, s_theirs, params, value=v)
        for name, a, b in zip(_FIELDS, s_ours, s_theirs):
            np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs)):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-6)
        scales.append(float(s_ours.scale))
    return scales


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    factor=st.sampled_from([0.1, 0.5, 0.9]),
    patience=st.integers(1, 4),
    cooldown=st.integers(0, 3),
    accumulation_size=st.integers(1, 3),
    rtol=st.sampled_from([0.0, 1e-2, 0.1]),
    atol=st.sampled_from([0.0, 1e-3, 0.05]),
    min_scale=st.sampled_from([0.0, 0.01]),
)
def test_reduce_on_plateau_matches_optax(seed, factor, patience, cooldown, accumulation_size, rtol, atol, min_scale):
    if rtol == 0.0 and atol == 0.0:
        atol = 1e-3
    rng = np.random.default_rng(seed)
    # A positive, slowly decreasing noisy loss: a mix of improvements and plateaus.
    values = 1.0 + np.abs(rng.normal(size=60)) * 0.3 + np.linspace(1.0, 0.0, 60) ** 2
    params = {"w": jnp.ones(3, jnp.float32), "b": jnp.zeros([], jnp.float64)}
    scales = _compare_with_optax(
        values,
        params,
        factor=factor,
        patience=patience,
        rtol=rtol,
        atol=atol,
        cooldown=cooldown,
        accumulation_size=accumulation_size,
        min_scale=min_scale,
    )
    assert all(s >= min_scale - 1e-7 for s in scales) and scales == sorted(scales, reverse=True)


def test_reduce_on_plateau_reduces_after_patience_and_respects_cooldown():
    tx = reduce_on_plateau(factor=0.5, patience=2, cooldown=1, rtol=0.0, atol=1e-6)
    state = tx.init(jnp.zeros(2))
    scales = []
    for v in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]:
        updates, state = tx.update(jnp.ones(2), state, value=v)
        scales.append(float(state.scale))
        np.testing.assert_allclose(updates, np.full(2, scales[-1]))
    # improve, plateau 1, plateau 2 -> x0.5 (cooldown 1), cooldown, plateau 1, plateau 2 -> x0.5, improve.
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert float(state.best_value) == 0.5


def test_reduce_on_plateau_accumulates_values_before_evaluating():
    tx = reduce_on_plateau(accumulation_size=3)
    state = tx.init(jnp.zeros(1))
    for v in [1.0, 2.0]:
        _, state = tx.update(jnp.ones(1), state, value=v)
    assert int(state.count) == 2 and float(state.avg_value) == 1.5 and state.best_value == np.inf
    _, state = tx.update(jnp.ones(1), state, value=6.0)
    assert int(state.count) == 0 and float(state.best_value) == 3.0


def test_reduce_on_plateau_relative_tolerance_is_correct_for_negative_losses():
    # With best = -1, a worse value -0.99995 must not count as an improvement (Optax's
    # (1 - rtol) * best threshold would accept it and raise the best value).
    tx = reduce_on_plateau(factor=0.5, patience=1, rtol=1e-4)
    state = tx.init(jnp.zeros(1))
    _, state = tx.update(jnp.ones(1), state, value=-1.0)
    _, state = tx.update(jnp.ones(1), state, value=-0.99995)
    assert float(state.best_value) == -1.0 and float(state.scale) == 0.5
    _, state = tx.update(jnp.ones(1), state, value=-1.2)
    assert float(state.best_value) == -1.2 and float(state.scale) == 0.5


def test_reduce_on_plateau_patience_zero_reduces_on_every_non_improvement():
    tx = reduce_on_plateau(factor=0.5, patience=0)
    state = tx.init(jnp.zeros(1))
    scales = []
    for v in [1.0, 0.5, 0.6, 0.4, 0.7]:
        _, state = tx.update(jnp.ones(1), state, value=v)
        scales.append(float(state.scale))
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_reduce_on_plateau_in_a_chain_receives_the_value_and_keeps_dtypes():
    params = {"w": jnp.ones(4, jnp.bfloat16), "v": jnp.ones(2, jnp.float32)}
    tx = chain(adam(1e-2), reduce_on_plateau(factor=0.5, patience=1))
    state = tx.init(params)
    assert state[1].scale.dtype == jnp.bfloat16 and state[1].best_value.dtype == jnp.float32
    grads = jax.tree.map(jnp.ones_like, params)
    for v in [1.0, 1.0, 1.0]:
        updates, state = tx.update(grads, state, params, value=v)
    assert float(state[1].scale) == 0.25
    assert updates["w"].dtype == jnp.bfloat16 and updates["v"].dtype == jnp.float32
    plain_tx = adam(1e-2)
    plain_state = plain_tx.init(params)
    for _ in range(3):
        plain, plain_state = plain_tx.update(grads, plain_state, params)
    np.testing.assert_allclose(np.asarray(updates["v"]), 0.25 * np.asarray(plain["v"]), rtol=1e-6)


def test_reduce_on_plateau_traced_hyperparameters_under_vmap():
    values = jnp.array([1.0, 1.0, 1.0, 0.2, 0.3, 0.3, 0.3, 0.3])

    def run(factor, min_scale):
        tx = reduce_on_plateau(factor=factor, patience=1, min_scale=min_scale)
        state = tx.init(jnp.zeros(1))
        return jax.lax.scan(lambda s, v: (tx.update(jnp.ones(1), s, value=v)[1], None), state, values)[0].scale

    factors, mins = jnp.array([0.1, 0.5, 0.5]), jnp.array([0.0, 0.0, 0.1])
    batched = jax.jit(jax.vmap(run))(factors, mins)
    for i in range(3):
        np.testing.assert_allclose(batched[i], run(float(factors[i]), float(mins[i])), rtol=1e-12)
    np.testing.assert_allclose(batched, [1e-6, 1 / 64, 0.1], rtol=1e-6)


def test_reduce_on_plateau_errors():
    tx = reduce_on_plateau()
    with pytest.raises(TypeError, match="value"):
        tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
    for kwargs, match in [
        (dict(factor=1.0), "factor"),
        (dict(factor=0.0), "factor"),
        (dict(rtol=-1e-3), "rtol"),
        (dict(rtol=1.5), "rtol"),
        (dict(atol=-1.0), "atol"),
        (dict(rtol=0.0, atol=0.0), "rtol and atol"),
        (dict(patience=-1), "patience"),
        (dict(cooldown=-1), "cooldown"),
        (dict(accumulation_size=0), "accumulation_size"),
        (dict(min_scale=-0.1), "min_scale"),
    ]:
        with pytest.raises(ValueError, match=match):
            reduce_on_plateau(**kwargs)
