"""Schedules: NumPy references written from the formulas, Optax as an oracle,
and traceability of every numeric hyperparameter (jit, vmap, grad)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_lite import schedules as S

COUNTS = np.arange(0, 301)  # the steps every schedule is checked at
SPARSE_COUNTS = np.arange(0, 301, 7)  # fewer steps for the (slower) per-argument checks


# --------------------------------------------------------------------------- #
# NumPy references, written from the formulas (t is a float64 array of steps)
# --------------------------------------------------------------------------- #


def np_constant(t, value):
    return np.full(t.shape, float(value))


def np_polynomial(t, init_value, end_value, power, transition_steps, transition_begin=0):
    if transition_steps <= 0:
        return np.full(t.shape, float(init_value))
    s = np.clip(t - transition_begin, 0, transition_steps)
    return (init_value - end_value) * (1 - s / transition_steps) ** power + end_value


def np_linear(t, init_value, end_value, transition_steps, transition_begin=0):
    return np_polynomial(t, init_value, end_value, 1.0, transition_steps, transition_begin)


def _np_decay(t, init_value, transition_steps, transition_begin, staircase, factor):
    if transition_steps <= 0:
        return np.full(t.shape, float(init_value))
    p = np.maximum(t - transition_begin, 0) / transition_steps
    if staircase:
        p = np.floor(p)
    return init_value * factor(p)


def np_exponential(t, init_value, transition_steps, decay_rate, transition_begin=0, staircase=False, end_value=None):
    if decay_rate == 0 or transition_steps <= 0:
        return np.full(t.shape, float(init_value))
    v = _np_decay(t, init_value, transition_steps, transition_begin, staircase, lambda p: decay_rate**p)
    if end_value is not None:
        v = np.maximum(v, end_value) if decay_rate < 1 else np.minimum(v, end_value)
    return v


def np_natural_exp(t, init_value, transition_steps, decay_rate, transition_begin=0, staircase=False, end_value=None):
    # TensorFlow: decayed = lr * exp(-decay_rate * global_step / decay_steps)
    v = _np_decay(t, init_value, transition_steps, transition_begin, staircase, lambda p: np.exp(-decay_rate * p))
    return v if end_value is None or transition_steps <= 0 else np.maximum(v, end_value)


def np_inverse_time(t, init_value, transition_steps, decay_rate, transition_begin=0, staircase=False, end_value=None):
    # TensorFlow: decayed = lr / (1 + decay_rate * global_step / decay_steps)
    v = _np_decay(t, init_value, transition_steps, transition_begin, staircase, lambda p: 1 / (1 + decay_rate * p))
    return v if end_value is None or transition_steps <= 0 else np.maximum(v, end_value)


def np_piecewise_constant(t, init_value, boundaries_and_scales):
    v = np.full(t.shape, float(init_value))
    for b, s in boundaries_and_scales.items():
        v = np.where(t >= b, v * s, v)
    return v


def np_interp_points(t, kind, bounds, values):
    """Interpolates through (bounds[i], values[i]); constant after the last point."""
    out = np.empty(t.shape)
    for k, ti in enumerate(t):
        if ti >= bounds[-1]:
            out[k] = values[-1]
            continue
        i = max(j for j in range(len(bounds) - 1) if bounds[j] <= ti)
        x = (ti - bounds[i]) / max(bounds[i + 1] - bounds[i], 1)
        a, b = values[i], values[i + 1]
        out[k] = a + (b - a) * x if kind == "linear" else b + (a - b) / 2 * (math.cos(math.pi * x) + 1)
    return out


def np_piecewise_interpolate(t, interpolate_type, init_value, boundaries_and_scales):
    items = sorted(boundaries_and_scales.items())
    bounds, values = [0], [init_value]
    for b, s in items:
        bounds.append(b)
        values.append(values[-1] * s)
    return np_interp_points(t, interpolate_type, bounds, values)


def np_cosine(t, init_value, decay_steps, alpha=0.0, exponent=1.0):
    c = 0.5 * (1 + np.cos(np.pi * np.minimum(t, decay_steps) / decay_steps))
    return init_value * ((1 - alpha) * c**exponent + alpha)


def np_warmup_constant(t, init_value, peak_value, warmup_steps):
    if warmup_steps == 0:
        return np.full(t.shape, float(peak_value))
    return np.where(t < warmup_steps, init_value + (peak_value - init_value) * t / warmup_steps, peak_value)


def np_wsd(t, peak_value, warmup_steps, stable_steps, decay_steps, init_value=0.0, end_value=0.0,
           decay_type="linear"):
    """Warmup-stable-decay from its definition (Hu et al., 2024; Haegele et al., 2024 for 1-sqrt)."""
    t = np.asarray(t, np.float64)
    start = warmup_steps + stable_steps
    x = np.clip((t - start) / decay_steps, 0, 1) if decay_steps > 0 else np.ones_like(t)
    shape = {"linear": 1 - x, "cosine": 0.5 * (1 + np.cos(np.pi * x)), "1-sqrt": 1 - np.sqrt(x)}[decay_type]
    return np.where(t < start, np_warmup_constant(t, init_value, peak_value, warmup_steps),
                    end_value + (peak_value - end_value) * shape)


def np_warmup_cosine(t, init_value, peak_value, warmup_steps, decay_steps, end_value=0.0, exponent=1.0):
    d = decay_steps - warmup_steps
    c = 0.5 * (1 + np.cos(np.pi * np.clip(t - warmup_steps, 0, d) / d))
    cosine = end_value + (peak_value - end_value) * c**exponent
    if peak_value == 0:  # alpha = end_value / peak_value is taken as 0 (as in Optax)
        cosine = np.zeros_like(c)
    warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
    return np.where(t < warmup_steps, warm, cosine)


def np_warmup_exponential(t, init_value, peak_value, warmup_steps, transition_steps, decay_rate, transition_begin=0,
                          staircase=False, end_value=None):
    warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
    decay = np_exponential(t - warmup_steps, peak_value, transition_steps, decay_rate, transition_begin, staircase,
                           end_value)
    return np.where(t < warmup_steps, warm, decay)


def np_linear_onecycle(t, transition_steps, peak_value, pct_start=0.3, pct_final=0.85, div_factor=25.0,
                       final_div_factor=1e4):
    init = peak_value / div_factor
    bounds = [0, int(pct_start * transition_steps), int(pct_final * transition_steps), transition_steps]
    return np_interp_points(t, "linear", bounds, [init, peak_value, init, init / final_div_factor])


def np_cosine_onecycle(t, transition_steps, peak_value, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    init = peak_value / div_factor
    bounds = [0, int(pct_start * transition_steps), transition_steps]
    return np_interp_points(t, "cosine", bounds, [init, peak_value, init / final_div_factor])


def np_sgdr(t, cosine_kwargs):
    out = np.empty(t.shape)
    start = 0
    for k, kw in enumerate(cosine_kwargs):
        last = k == len(cosine_kwargs) - 1
        stop = np.inf if last else start + kw["decay_steps"]
        sel = (t >= start) & (t < stop)
        out[sel] = np_warmup_cosine(t[sel] - start, **kw)
        start += kw["decay_steps"]
    return out


# --------------------------------------------------------------------------- #
# The cases: a flat-keyword builder, defaults, sweeps of every numeric argument
# --------------------------------------------------------------------------- #


def _sgdr_kwargs(peak_value, warmup_steps, decay_steps, end_value, exponent):
    return [
        dict(init_value=0.0, peak_value=peak_value, warmup_steps=warmup_steps, decay_steps=decay_steps,
             end_value=end_value, exponent=exponent),
        dict(init_value=0.01, peak_value=0.5 * peak_value, warmup_steps=warmup_steps, decay_steps=decay_steps + 20,
             end_value=end_value, exponent=exponent),
    ]


PIECEWISE_KWARGS = dict(init_value=1.0, s1=0.5, s2=0.1)
PIECEWISE_SWEEPS = dict(init_value=[1.0, 2.0, 0.0], s1=[0.5, 2.0, 0.0], s2=[0.1, 1.0, 3.0])


class Case:
    """``make(**kw)`` builds our schedule; ``ref(t, **kw)`` is the NumPy formula;
    ``oracle(**kw)`` the Optax schedule (or None); ``sweeps`` alternative values
    of every numeric argument (ints: step counts, floats: differentiable)."""

    def __init__(self, name, make, ref, oracle, kwargs, sweeps):
        self.name, self.make, self.ref, self.oracle, self.kwargs, self.sweeps = name, make, ref, oracle, kwargs, sweeps
        assert set(sweeps) == {k for k, v in kwargs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert all(values[0] == kwargs[k] for k, values in sweeps.items())

    def float_args(self):
        return [k for k, v in self.kwargs.items() if isinstance(v, float)]

    def __repr__(self):
        return self.name


CASES = [
    Case("constant", S.constant_schedule, np_constant, optax.constant_schedule,
         dict(value=0.3), dict(value=[0.3, 1.5, -2.0])),
    Case("linear", S.linear_schedule, np_linear, optax.linear_schedule,
         dict(init_value=1.0, end_value=0.1, transition_steps=100, transition_begin=20),
         dict(init_value=[1.0, 0.2, 3.0], end_value=[0.1, 0.0, 2.0], transition_steps=[100, 0, 37],
              transition_begin=[20, 0, 250])),
    Case("polynomial", S.polynomial_schedule, np_polynomial, optax.polynomial_schedule,
         dict(init_value=1.0, end_value=0.1, power=2.5, transition_steps=100, transition_begin=20),
         dict(init_value=[1.0, 0.2, 3.0], end_value=[0.1, 0.0, 2.0], power=[2.5, 0.5, 1.0],
              transition_steps=[100, 0, 37], transition_begin=[20, 0, 250])),
    Case("exponential", S.exponential_decay, np_exponential, optax.exponential_decay,
         dict(init_value=1.0, transition_steps=30, decay_rate=0.7, transition_begin=15, end_value=0.05),
         dict(init_value=[1.0, 0.5, 2.0], transition_steps=[30, 0, 7], decay_rate=[0.7, 0.0, 1.2],
              transition_begin=[15, 0, 100], end_value=[0.05, 0.3, 4.0])),
    Case("exponential_staircase", lambda **kw: S.exponential_decay(staircase=True, **kw),
         lambda t, **kw: np_exponential(t, staircase=True, **kw),
         lambda **kw: optax.exponential_decay(staircase=True, **kw),
         dict(init_value=1.0, transition_steps=30, decay_rate=0.5, transition_begin=15),
         dict(init_value=[1.0, 0.5, 2.0], transition_steps=[30, 0, 7], decay_rate=[0.5, 0.0, 1.1],
              transition_begin=[15, 0, 100])),
    Case("natural_exp", S.natural_exp_decay, np_natural_exp, None,
         dict(init_value=1.0, transition_steps=40, decay_rate=0.6, transition_begin=10, end_value=0.02),
         dict(init_value=[1.0, 0.5, 2.0], transition_steps=[40, 0, 9], decay_rate=[0.6, 0.0, 3.0],
              transition_begin=[10, 0, 100], end_value=[0.02, 0.0, 0.5])),
    Case("natural_exp_staircase", lambda **kw: S.natural_exp_decay(staircase=True, **kw),
         lambda t, **kw: np_natural_exp(t, staircase=True, **kw), None,
         dict(init_value=1.0, transition_steps=40, decay_rate=0.6),
         dict(init_value=[1.0, 0.5, 2.0], transition_steps=[40, 0, 9], decay_rate=[0.6, 0.0, 3.0])),
    Case("inverse_time", S.inverse_time_decay, np_inverse_time, None,
         dict(init_value=1.0, transition_steps=40, decay_rate=0.6, transition_begin=10, end_value=0.2),
         dict(init_value=[1.0, 0.5, 2.0], transition_steps=[40, 0, 9], decay_rate=[0.6, 0.0, 3.0],
              transition_begin=[10, 0, 100], end_value=[0.2, 0.0, 0.5])),
    Case("inverse_time_staircase", lambda **kw: S.inverse_time_decay(staircase=True, **kw),
         lambda t, **kw: np_inverse_time(t, staircase=True, **kw), None,
         dict(init_value=1.0, transition_steps=40, decay_rate=0.6),
         dict(init_value=[1.0, 0.5, 2.0], transition_steps=[40, 0, 9], decay_rate=[0.6, 0.0, 3.0])),
    Case("piecewise_constant",
         lambda init_value, s1, s2: S.piecewise_constant_schedule(init_value, {150: s2, 60: s1}),
         lambda t, init_value, s1, s2: np_piecewise_constant(t, init_value, {150: s2, 60: s1}),
         lambda init_value, s1, s2: optax.piecewise_constant_schedule(init_value, {150: s2, 60: s1}),
         PIECEWISE_KWARGS, PIECEWISE_SWEEPS),
    Case("piecewise_linear",
         lambda init_value, s1, s2: S.piecewise_interpolate_schedule("linear", init_value, {150: s2, 60: s1}),
         lambda t, init_value, s1, s2: np_piecewise_interpolate(t, "linear", init_value, {150: s2, 60: s1}),
         lambda init_value, s1, s2: optax.piecewise_interpolate_schedule("linear", init_value, {150: s2, 60: s1}),
         PIECEWISE_KWARGS, PIECEWISE_SWEEPS),
    Case("piecewise_cosine",
         lambda init_value, s1, s2: S.piecewise_interpolate_schedule("cosine", init_value, {0: 2.0, 150: s2, 60: s1}),
         lambda t, init_value, s1, s2: np_piecewise_interpolate(t, "cosine", init_value, {0: 2.0, 150: s2, 60: s1}),
         lambda init_value, s1, s2: optax.piecewise_interpolate_schedule(
             "cosine", init_value, {0: 2.0, 150: s2, 60: s1}),
         PIECEWISE_KWARGS, PIECEWISE_SWEEPS),
    Case("cosine_decay", S.cosine_decay_schedule, np_cosine, optax.cosine_decay_schedule,
         dict(init_value=1.0, decay_steps=200, alpha=0.1, exponent=2.0),
         dict(init_value=[1.0, 0.5, -1.0], decay_steps=[200, 1, 77], alpha=[0.1, 0.0, 1.5], exponent=[2.0, 1.0, 0.5])),
    Case("warmup_constant", S.warmup_constant_schedule, np_warmup_constant, optax.warmup_constant_schedule,
         dict(init_value=0.0, peak_value=1.0, warmup_steps=50),
         dict(init_value=[0.0, 0.5, 2.0], peak_value=[1.0, 0.0, 3.0], warmup_steps=[50, 0, 333])),
    Case("warmup_cosine", S.warmup_cosine_decay_schedule, np_warmup_cosine, optax.warmup_cosine_decay_schedule,
         dict(init_value=0.01, peak_value=1.0, warmup_steps=50, decay_steps=250, end_value=0.1, exponent=1.5),
         dict(init_value=[0.01, 0.0, 2.0], peak_value=[1.0, 0.0, 0.3], warmup_steps=[50, 0, 149],
              decay_steps=[250, 150, 400], end_value=[0.1, 0.0, 0.7], exponent=[1.5, 1.0, 0.0])),
    Case("warmup_exponential", S.warmup_exponential_decay_schedule, np_warmup_exponential,
         optax.warmup_exponential_decay_schedule,
         dict(init_value=0.0, peak_value=1.0, warmup_steps=50, transition_steps=20, decay_rate=0.8, transition_begin=10,
              end_value=0.2),
         dict(init_value=[0.0, 0.5, 2.0], peak_value=[1.0, 0.0, 3.0], warmup_steps=[50, 0, 120],
              transition_steps=[20, 0, 3], decay_rate=[0.8, 0.0, 1.01], transition_begin=[10, 0, 200],
              end_value=[0.2, 0.0, 5.0])),
    Case("wsd_linear", lambda **kw: S.warmup_stable_decay_schedule(decay_type="linear", **kw),
         lambda t, **kw: np_wsd(t, decay_type="linear", **kw), None,
         dict(peak_value=1.0, warmup_steps=30, stable_steps=100, decay_steps=60, init_value=0.05, end_value=0.01),
         dict(peak_value=[1.0, 0.3, 2.0], warmup_steps=[30, 0, 7], stable_steps=[100, 0, 250],
              decay_steps=[60, 0, 13], init_value=[0.05, 0.0, 3.0], end_value=[0.01, 0.0, 0.5])),
    Case("wsd_cosine", lambda **kw: S.warmup_stable_decay_schedule(decay_type="cosine", **kw),
         lambda t, **kw: np_wsd(t, decay_type="cosine", **kw), None,
         dict(peak_value=1.0, warmup_steps=30, stable_steps=100, decay_steps=60, init_value=0.05, end_value=0.01),
         dict(peak_value=[1.0, 0.3, 2.0], warmup_steps=[30, 0, 7], stable_steps=[100, 0, 250],
              decay_steps=[60, 0, 13], init_value=[0.05, 0.0, 3.0], end_value=[0.01, 0.0, 0.5])),
    Case("wsd_1-sqrt", lambda **kw: S.warmup_stable_decay_schedule(decay_type="1-sqrt", **kw),
         lambda t, **kw: np_wsd(t, decay_type="1-sqrt", **kw), None,
         dict(peak_value=1.0, warmup_steps=30, stable_steps=100, decay_steps=60, init_value=0.05, end_value=0.01),
         dict(peak_value=[1.0, 0.3, 2.0], warmup_steps=[30, 0, 7], stable_steps=[100, 0, 250],
              decay_steps=[60, 0, 13], init_value=[0.05, 0.0, 3.0], end_value=[0.01, 0.0, 0.5])),
    Case("linear_onecycle", S.linear_onecycle_schedule, np_linear_onecycle, optax.linear_onecycle_schedule,
         dict(transition_steps=230, peak_value=1.0, pct_start=0.31, pct_final=0.85, div_factor=25.0,
              final_div_factor=1e4),
         dict(transition_steps=[230, 10, 1000], peak_value=[1.0, 0.1, 4.0], pct_start=[0.31, 0.05, 0.61],
              pct_final=[0.85, 0.7, 1.0], div_factor=[25.0, 2.0, 100.0], final_div_factor=[1e4, 1.0, 0.5])),
    Case("cosine_onecycle", S.cosine_onecycle_schedule, np_cosine_onecycle, optax.cosine_onecycle_schedule,
         dict(transition_steps=230, peak_value=1.0, pct_start=0.31, div_factor=25.0, final_div_factor=1e4),
         dict(transition_steps=[230, 10, 1000], peak_value=[1.0, 0.1, 4.0], pct_start=[0.31, 0.05, 0.61],
              div_factor=[25.0, 2.0, 100.0], final_div_factor=[1e4, 1.0, 0.5])),
    Case("sgdr", lambda **kw: S.sgdr_schedule(_sgdr_kwargs(**kw)),
         lambda t, **kw: np_sgdr(t, _sgdr_kwargs(**kw)),
         lambda **kw: optax.sgdr_schedule(_sgdr_kwargs(**kw)),
         dict(peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.05, exponent=1.0),
         dict(peak_value=[1.0, 0.0, 2.0], warmup_steps=[10, 0, 60], decay_steps=[100, 61, 140],
              end_value=[0.05, 0.0, 1.0], exponent=[1.0, 2.0, 0.5])),
    Case("join",
         lambda init_value, peak_value, b1, b2: S.join_schedules(
             [S.linear_schedule(init_value, peak_value, b1), S.constant_schedule(peak_value),
              S.cosine_decay_schedule(peak_value, 100)], [b1, b2]),
         lambda t, init_value, peak_value, b1, b2: np.where(
             t < b1, np_linear(t, init_value, peak_value, b1),
             np.where(t < b2, peak_value, np_cosine(t - b2, peak_value, 100))),
         lambda init_value, peak_value, b1, b2: optax.join_schedules(
             [optax.linear_schedule(init_value, peak_value, b1), optax.constant_schedule(peak_value),
              optax.cosine_decay_schedule(peak_value, 100)], [b1, b2]),
         dict(init_value=0.1, peak_value=1.0, b1=40, b2=90),
         dict(init_value=[0.1, 0.0, 2.0], peak_value=[1.0, 0.5, 0.0], b1=[40, 0, 90], b2=[90, 90, 250])),
]


def _kwargs_with(case, **overrides):
    kw = dict(case.kwargs)
    kw.update(overrides)
    return kw


def _eval(schedule, counts=COUNTS):
    """Evaluates one of our schedules at an int32 array of step counts (they are
    elementwise in the count, so no vmap is needed; scalar counts are tested below)."""
    counts = jnp.asarray(counts, jnp.int32)
    return np.broadcast_to(np.asarray(schedule(counts)), counts.shape)


def _rows(case):
    """The base arguments, then the base with one argument replaced by each of
    its alternative values."""
    rows = [dict(case.kwargs)]
    for name, values in case.sweeps.items():
        rows += [_kwargs_with(case, **{name: v}) for v in values[1:]]
    return rows


BATCH = 16  # every batch is padded to this many rows (fewer distinct shapes to compile)


def _batch(rows):
    """Stacks rows of arguments (step counts as int32 arrays, the rest as float64),
    padded to ``BATCH`` rows by repeating the first one."""
    assert len(rows) <= BATCH
    rows = rows + [rows[0]] * (BATCH - len(rows))
    return {
        k: jnp.asarray([r[k] for r in rows], jnp.int32 if isinstance(v, int) else jnp.float64)
        for k, v in rows[0].items()
    }


# --------------------------------------------------------------------------- #
# Values, vmap and jit
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_matches_numpy_reference_and_vmap_over_hyperparameters_equals_loop(case):
    rows = _rows(case)
    looped = []
    for kw in rows:  # concrete (Python) hyperparameters
        got = _eval(case.make(**kw))
        want = case.ref(COUNTS.astype(np.float64), **kw)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=f"{case.name} with {kw}")
        looped.append(got)
    # vmap over every numeric argument, step counts included: each row of the
    # batch differs from the base in one argument, so every swept value of every
    # argument is traced through the batched path.
    counts = jnp.asarray(COUNTS, jnp.int32)
    batched = np.asarray(jax.jit(jax.vmap(lambda kw: case.make(**kw)(counts)))(_batch(rows)))
    np.testing.assert_allclose(batched[: len(rows)], np.stack(looped), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", [c for c in CASES if c.oracle is not None], ids=repr)
def test_matches_optax(case):
    # Optax computes in float32 when handed int32 counts; int64 counts keep it in float64.
    got = _eval(case.make(**case.kwargs))
    want = np.asarray(jax.vmap(case.oracle(**case.kwargs))(jnp.asarray(COUNTS, jnp.int64)))
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_python_int_count_and_output_dtype(case):
    schedule = case.make(**case.kwargs)
    from_int = schedule(123)
    from_array = schedule(jnp.asarray(123, jnp.int32))
    assert from_int.shape == () and from_array.shape == ()
    assert from_int.dtype == jnp.result_type(float) == from_array.dtype
    np.testing.assert_allclose(from_int, from_array, rtol=1e-14)
    np.testing.assert_allclose(from_int, case.ref(np.array([123.0]), **case.kwargs)[0], rtol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_jit_equals_eager_and_traced_hyperparameters_do_not_recompile(case):
    traces = []

    @jax.jit
    def evaluate(kwargs, counts):
        traces.append(1)  # runs only while tracing
        return jax.vmap(case.make(**kwargs))(counts)

    first = dict(case.kwargs)
    second = {k: vs[-1] for k, vs in case.sweeps.items()}
    for kw, counts in ((first, COUNTS), (second, COUNTS[::-1])):
        got = np.asarray(evaluate({k: jnp.asarray(v) for k, v in kw.items()}, jnp.asarray(counts, jnp.int32)))
        eager = _eval(case.make(**kw), counts)
        np.testing.assert_allclose(got, np.broadcast_to(eager, got.shape), rtol=1e-12, atol=1e-15)
    assert len(traces) == 1, f"{case.name}: recompiled for new hyperparameter values or step counts"


# --------------------------------------------------------------------------- #
# grad with respect to the floating-point hyperparameters
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("case", [c for c in CASES if c.float_args()], ids=repr)
def test_grad_is_finite_and_matches_finite_difference(case):
    names = case.float_args()
    counts = jnp.asarray(COUNTS, jnp.int32)

    def total(floats, others):
        """The schedule summed over all steps."""
        return jnp.sum(case.make(**floats, **others)(counts))

    def split(kw):
        return {k: kw[k] for k in names}, {k: v for k, v in kw.items() if k not in names}

    # Gradients at every row of the sweeps, which include the special points
    # (zero rates, zero peak, zero steps, zero scales, 0 ** p at the end of a
    # transition), computed under vmap with every argument traced; and the
    # totals at base +- h for central differences.
    floats, _ = split(case.kwargs)
    steps = {name: 1e-6 * max(1.0, abs(x)) for name, x in floats.items()}
    fd_rows = []
    for name, x in floats.items():
        fd_rows += [_kwargs_with(case, **{name: x + steps[name]}), _kwargs_with(case, **{name: x - steps[name]})]

    @jax.jit
    def grads_and_totals(rows, fd_rows):
        return jax.vmap(jax.grad(total))(*split(rows)), jax.vmap(total)(*split(fd_rows))

    grads, totals = grads_and_totals(_batch(_rows(case)), _batch(fd_rows))
    for i, name in enumerate(names):
        assert np.all(np.isfinite(grads[name])), f"{case.name}: d/d{name} = {grads[name]}"
        fd = (totals[2 * i] - totals[2 * i + 1]) / (2 * steps[name])
        np.testing.assert_allclose(grads[name][0], fd, rtol=1e-5, atol=1e-6, err_msg=f"{case.name}: d/d{name}")
    # A plain grad (no vmap, no jit, step counts concrete Python ints) agrees.
    plain = jax.grad(total)({k: float(v) for k, v in floats.items()}, split(case.kwargs)[1])
    for name in names:
        np.testing.assert_allclose(plain[name], grads[name][0], rtol=1e-12, atol=1e-12)


def test_grad_wrt_pct_start_is_zero_and_steps_as_floats_are_differentiable():
    # Phase boundaries floor(pct * T) are piecewise constant in pct.
    g = jax.grad(lambda p: S.linear_onecycle_schedule(230, 1.0, pct_start=p)(100))(0.3)
    assert g == 0.0
    # A float number of steps is allowed, and exponential decay is smooth in it.
    f = lambda T: S.exponential_decay(1.0, T, 0.5)(90)  # noqa: E731
    g = jax.grad(f)(30.0)
    np.testing.assert_allclose(g, (f(30.0 + 1e-5) - f(30.0 - 1e-5)) / 2e-5, rtol=1e-6)
    np.testing.assert_allclose(g, 0.5**3 * math.log(0.5) * -90 / 30.0**2, rtol=1e-9)


# --------------------------------------------------------------------------- #
# Specific behaviours
# --------------------------------------------------------------------------- #


def test_seed_article_decay_rules():
    t = np.arange(0.0, 301.0)
    lr0, k, T = 0.1, 0.5, 25
    nat = _eval(S.natural_exp_decay(lr0, T, k))
    np.testing.assert_allclose(nat, lr0 * np.exp(-k * t / T), rtol=1e-12)
    np.testing.assert_allclose(_eval(S.natural_exp_decay(lr0, T, k, staircase=True)),
                               lr0 * np.exp(-k * np.floor(t / T)), rtol=1e-12)
    inv = _eval(S.inverse_time_decay(lr0, T, k))
    np.testing.assert_allclose(inv, lr0 / (1 + k * t / T), rtol=1e-12)
    np.testing.assert_allclose(_eval(S.inverse_time_decay(lr0, T, k, staircase=True)),
                               lr0 / (1 + k * np.floor(t / T)), rtol=1e-12)
    # natural_exp_decay(k) is exponential_decay(exp(-k)), and does not underflow for a large k.
    np.testing.assert_allclose(nat, _eval(S.exponential_decay(lr0, T, math.exp(-k))), rtol=1e-12)
    big = _eval(S.natural_exp_decay(1.0, 1, 800.0, end_value=1e-300), [0, 1])
    np.testing.assert_allclose(big, [1.0, 1e-300], rtol=1e-12)


def test_special_cases_match_optax():
    counts = jnp.arange(0, 301)
    pairs = [
        (S.linear_schedule(1.0, 0.0, 0), optax.linear_schedule(1.0, 0.0, 0)),
        (S.exponential_decay(1.0, 0, 0.5), optax.exponential_decay(1.0, 0, 0.5)),
        (S.exponential_decay(1.0, 10, 0.0, end_value=2.0), optax.exponential_decay(1.0, 10, 0.0, end_value=2.0)),
        (S.exponential_decay(1.0, 10, 2.0, end_value=3.0), optax.exponential_decay(1.0, 10, 2.0, end_value=3.0)),
        (S.exponential_decay(1.0, 10, 0.5, end_value=2.0), optax.exponential_decay(1.0, 10, 0.5, end_value=2.0)),
        (S.warmup_cosine_decay_schedule(0.0, 0.0, 10, 100, end_value=0.5),
         optax.warmup_cosine_decay_schedule(0.0, 0.0, 10, 100, end_value=0.5)),
        (S.piecewise_interpolate_schedule("linear", 2.0), optax.piecewise_interpolate_schedule("linear", 2.0)),
        (S.piecewise_constant_schedule(2.0), optax.piecewise_constant_schedule(2.0)),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(_eval(ours), np.broadcast_to(jax.vmap(theirs)(counts), COUNTS.shape), rtol=1e-12)


def test_traced_special_cases_follow_the_concrete_rules():
    # A traced transition_steps of 0 (or a negative one, unvalidated under a
    # trace) holds init_value, exactly like a concrete 0.
    steps = jnp.array([0, -5, 10])
    out = jax.vmap(lambda T: S.polynomial_schedule(1.0, 0.0, 2.0, T)(20))(steps)
    np.testing.assert_allclose(out, [1.0, 1.0, 0.0])
    out = jax.vmap(lambda T: S.cosine_decay_schedule(2.0, T, alpha=0.25)(5))(steps)
    np.testing.assert_allclose(out, [0.5, 0.5, 2.0 * (0.25 + 0.75 * 0.5)])
    # end_value is a floor when decaying and a ceiling when growing, per batch element.
    rates = jnp.array([0.5, 2.0])
    out = jax.vmap(lambda r: S.exponential_decay(1.0, 1, r, end_value=1.5)(3))(rates)
    np.testing.assert_allclose(out, [1.5, 1.5])
    out = jax.vmap(lambda r: S.exponential_decay(1.0, 1, r, end_value=0.2)(3))(rates)
    np.testing.assert_allclose(out, [0.2, 0.2])


def test_join_schedules_passes_relative_counts():
    seen = []

    def record(i):
        def schedule(count):
            seen.append((i, int(count)))
            return jnp.asarray(float(i))
        return schedule

    joined = S.join_schedules([record(0), record(1), record(2)], [10, 25])
    assert float(joined(30)) == 2.0 and float(joined(12)) == 1.0 and float(joined(3)) == 0.0
    assert (2, 5) in seen and (1, 20) in seen and (1, 2) in seen
    # A 1-D array of boundaries works, and so does vmap over it.
    consts = [S.constant_schedule(float(i)) for i in range(3)]
    out = jax.vmap(lambda b: S.join_schedules(consts, b)(30))(jnp.array([[10, 25], [10, 40], [35, 40]]))
    np.testing.assert_allclose(out, [2.0, 1.0, 0.0])


def test_warmup_constant_without_warmup_is_the_peak():
    # Optax returns init_value forever here; we treat warmup_steps=0 as "no warmup".
    np.testing.assert_allclose(_eval(S.warmup_constant_schedule(0.1, 1.0, 0), [0, 5]), [1.0, 1.0])
    np.testing.assert_allclose(_eval(S.warmup_cosine_decay_schedule(0.1, 1.0, 0, 100), [0]), [1.0])


def test_float32_hyperparameters_give_float32_values():
    sched = S.cosine_decay_schedule(jnp.float32(1.0), 100)
    assert sched(10).dtype == jnp.float32
    assert S.linear_schedule(jnp.bfloat16(1.0), 0.0, 10)(3).dtype == jnp.float32


def test_default_precision_mode_in_subprocess():
    # Without jax_enable_x64 the values are float32 and agree with Optax.
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, optax
        from jaxopt_lite import schedules as S
        c = jnp.arange(0, 301, dtype=jnp.int32)
        args = [("warmup_cosine_decay_schedule", (0.0, 1.0, 50, 250, 0.1)),
                ("linear_onecycle_schedule", (230, 1.0)),
                ("exponential_decay", (1.0, 30, 0.7, 15, True, 0.05))]
        for name, a in args:
            ours, theirs = getattr(S, name)(*a), getattr(optax, name)(*a)
            a = jax.vmap(ours)(c)
            assert a.dtype == jnp.float32, a.dtype
            np.testing.assert_allclose(a, jax.vmap(theirs)(c), rtol=2e-6, atol=1e-7)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------- #
# Validation of concrete arguments
# --------------------------------------------------------------------------- #


INVALID = [
    (lambda: S.linear_schedule(1.0, 0.0, 10, transition_begin=-2), "linear_schedule: transition_begin"),
    (lambda: S.polynomial_schedule(1.0, 0.0, -1.0, 10), "polynomial_schedule: power"),
    (lambda: S.exponential_decay(1.0, 10, -0.5), "exponential_decay: decay_rate"),
    (lambda: S.exponential_decay(1.0, 10, 0.5, transition_begin=-1), "exponential_decay: transition_begin"),
    (lambda: S.natural_exp_decay(1.0, 10, -0.1), "natural_exp_decay: decay_rate"),
    (lambda: S.inverse_time_decay(1.0, 10, float("nan")), "inverse_time_decay: decay_rate"),
    (lambda: S.piecewise_constant_schedule(1.0, {10: -0.5}),
     r"piecewise_constant_schedule: boundaries_and_scales\[10\]"),
    (lambda: S.piecewise_constant_schedule(1.0, {-10: 0.5}), "piecewise_constant_schedule: boundaries_and_scales key"),
    (lambda: S.piecewise_interpolate_schedule("cubic", 1.0), "piecewise_interpolate_schedule: interpolate_type"),
    (lambda: S.piecewise_interpolate_schedule("linear", 1.0, {5: -1.0}),
     r"piecewise_interpolate_schedule: boundaries_and_scales\[5\]"),
    (lambda: S.piecewise_interpolate_schedule("linear", 1.0, {-5: 1.0}),
     "piecewise_interpolate_schedule: boundaries_and_scales key"),
    (lambda: S.cosine_decay_schedule(1.0, 0), "cosine_decay_schedule: decay_steps"),
    (lambda: S.cosine_decay_schedule(1.0, 10, exponent=-1.0), "cosine_decay_schedule: exponent"),
    (lambda: S.warmup_constant_schedule(0.0, 1.0, -5), "warmup_constant_schedule: warmup_steps"),
    (lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, -5, 100), "warmup_cosine_decay_schedule: warmup_steps"),
    (lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 100, 100),
     "warmup_cosine_decay_schedule: warmup_steps must be < decay_steps"),
    (lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, exponent=-2.0),
     "warmup_cosine_decay_schedule: exponent"),
    (lambda: S.warmup_exponential_decay_schedule(0.0, 1.0, -1, 10, 0.5),
     "warmup_exponential_decay_schedule: warmup_steps"),
    (lambda: S.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, -0.5),
     "warmup_exponential_decay_schedule: decay_rate"),
    (lambda: S.linear_onecycle_schedule(0, 1.0), "linear_onecycle_schedule: transition_steps"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, pct_start=0.0), "linear_onecycle_schedule: pct_start"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, pct_start=1.0), "linear_onecycle_schedule: pct_start"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, pct_final=1.2), "linear_onecycle_schedule: pct_final"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, pct_start=0.5, pct_final=0.5),
     "linear_onecycle_schedule: pct_start must be < pct_final"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, div_factor=0.0), "linear_onecycle_schedule: div_factor"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, final_div_factor=-1.0), "linear_onecycle_schedule: final_div_factor"),
    (lambda: S.cosine_onecycle_schedule(-5, 1.0), "cosine_onecycle_schedule: transition_steps"),
    (lambda: S.cosine_onecycle_schedule(100, 1.0, pct_start=1.5), "cosine_onecycle_schedule: pct_start"),
    (lambda: S.cosine_onecycle_schedule(100, 1.0, div_factor=-25.0), "cosine_onecycle_schedule: div_factor"),
    (lambda: S.warmup_stable_decay_schedule(1.0, 10, -5, 10), "warmup_stable_decay_schedule: stable_steps"),
    (lambda: S.warmup_stable_decay_schedule(1.0, 10, 50, 10, decay_type="exp"),
     "warmup_stable_decay_schedule: decay_type must be one of"),
    (lambda: S.warmup_stable_decay_schedule(float("nan"), 10, 50, 10), "warmup_stable_decay_schedule: peak_value"),
    (lambda: S.join_schedules([S.constant_schedule(1.0)] * 3, [10]), "join_schedules: boundaries must have one entry"),
    (lambda: S.join_schedules([S.constant_schedule(1.0)] * 3, [20, 10]),
     r"join_schedules: boundaries\[0\] must be <= boundaries\[1\]"),
    (lambda: S.join_schedules([S.constant_schedule(1.0)] * 2, [-1]), r"join_schedules: boundaries\[0\]"),
    (lambda: S.join_schedules([], []), "join_schedules: schedules must not be empty"),
    (lambda: S.sgdr_schedule([]), "sgdr_schedule: cosine_kwargs"),
    (lambda: S.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5)]),
     r"sgdr_schedule: cosine_kwargs\[0\]"),
    (lambda: S.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=50),
                              dict(init_value=0.0, peak_value=1.0, warmup_steps=60, decay_steps=50)]),
     r"sgdr_schedule: cosine_kwargs\[1\]: warmup_cosine_decay_schedule: warmup_steps"),
]


# A negative transition_steps is not here: it gives a constant schedule with a warning, as in Optax
# (test_compat.py).
@pytest.mark.parametrize("build, match", INVALID, ids=[m.replace("\\", "") for _, m in INVALID])
def test_invalid_concrete_inputs_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_structural_arguments_must_be_static():
    with pytest.raises(TypeError, match="exponential_decay: staircase"):
        S.exponential_decay(1.0, 10, 0.5, staircase=jnp.array(True))
    with pytest.raises(TypeError, match=r"join_schedules: schedules\[1\]"):
        S.join_schedules([S.constant_schedule(1.0), 2.0], [10])
    with pytest.raises(TypeError, match="piecewise_constant_schedule: boundaries_and_scales"):
        S.piecewise_constant_schedule(1.0, [(10, 0.5)])


def test_traced_invalid_values_are_not_checked_eagerly():
    # Under a trace nothing is forced to the host: a negative traced decay rate builds a schedule.
    out = jax.jit(lambda r: S.natural_exp_decay(1.0, 10, r)(10))(jnp.float64(-1.0))
    np.testing.assert_allclose(out, math.e)


# --------------------------------------------------------------------------- #
# Properties over random hyperparameters
# --------------------------------------------------------------------------- #

PROPERTY_COUNTS = np.arange(0, 401, 5)
finite = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)
values = st.floats(-10.0, 10.0, **finite)
steps = st.integers(0, 300)
unit = st.floats(0.0, 1.0, **finite)


def _assert_within(out, low, high):
    assert np.all(np.isfinite(out))
    tol = 1e-12 * max(1.0, abs(low), abs(high))
    assert np.all(out >= low - tol) and np.all(out <= high + tol), (out.min(), out.max(), low, high)


@settings(max_examples=20, deadline=None)
@given(values, values, st.floats(0.0, 5.0, **finite), steps, steps)
def test_property_polynomial_stays_between_endpoints(init, end, power, transition_steps, begin):
    out = _eval(S.polynomial_schedule(init, end, power, transition_steps, begin), PROPERTY_COUNTS)
    _assert_within(out, min(init, end), max(init, end))
    assert out[0] == pytest.approx(init, rel=1e-12, abs=1e-12)
    if 0 < transition_steps and begin + transition_steps <= 400 and power > 0:
        assert out[-1] == pytest.approx(end, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(values, st.integers(1, 300), st.floats(0.0, 2.0, **finite), st.floats(0.0, 4.0, **finite))
def test_property_cosine_stays_between_endpoints(init, decay_steps, alpha, exponent):
    out = _eval(S.cosine_decay_schedule(init, decay_steps, alpha, exponent), PROPERTY_COUNTS)
    _assert_within(out, min(init, alpha * init), max(init, alpha * init))


@settings(max_examples=20, deadline=None)
@given(values, values, values, st.integers(0, 150), st.integers(1, 250), st.floats(0.0, 4.0, **finite))
def test_property_warmup_cosine_stays_between_endpoints(init, peak, end, warmup, extra, exponent):
    out = _eval(S.warmup_cosine_decay_schedule(init, peak, warmup, warmup + extra, end, exponent), PROPERTY_COUNTS)
    _assert_within(out, min(init, peak, end), max(init, peak, end))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([S.exponential_decay, S.natural_exp_decay, S.inverse_time_decay]),
       st.floats(0.0, 10.0, **finite), st.integers(0, 300), st.floats(0.0, 0.999, **finite), steps, st.booleans(),
       st.none() | unit)
def test_property_decays_are_monotone_and_bounded(rule, init, transition_steps, rate, begin, staircase, end):
    out = _eval(rule(init, transition_steps, rate, begin, staircase, end), PROPERTY_COUNTS)
    low = 0.0 if end is None else min(end, init)
    _assert_within(out, low, max(init, end or 0.0))
    assert np.all(np.diff(out) <= 1e-12)  # non-increasing for a decaying rate


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 400), st.floats(0.0, 10.0, **finite), st.floats(0.01, 0.6, **finite),
       st.floats(0.65, 1.0, **finite), st.floats(1.0, 100.0, **finite), st.floats(1.0, 1e4, **finite))
def test_property_onecycle_between_final_and_peak(steps_, peak, pct_start, pct_final, div, final_div):
    init, final = peak / div, peak / div / final_div
    lin = _eval(S.linear_onecycle_schedule(steps_, peak, pct_start, pct_final, div, final_div), PROPERTY_COUNTS)
    cos = _eval(S.cosine_onecycle_schedule(steps_, peak, pct_start, div, final_div), PROPERTY_COUNTS)
    for out in (lin, cos):
        _assert_within(out, final, peak)
        if steps_ <= 400:
            assert out[-1] == pytest.approx(final, rel=1e-9, abs=1e-300)
    if int(pct_start * steps_) > 0:
        assert lin[0] == pytest.approx(init) and cos[0] == pytest.approx(init)


@settings(max_examples=25, deadline=None)
@given(values, st.dictionaries(st.integers(0, 400), st.just(0.0) | st.floats(1e-3, 3.0), max_size=4),
       st.sampled_from(["linear", "cosine"]))
def test_property_piecewise_interpolate_between_accumulated_values(init, bas, kind):
    out = _eval(S.piecewise_interpolate_schedule(kind, init, bas), PROPERTY_COUNTS)
    accumulated = [init]
    for _, s in sorted(bas.items()):
        accumulated.append(accumulated[-1] * s)
    _assert_within(out, min(accumulated), max(accumulated))
    const = _eval(S.piecewise_constant_schedule(init, bas), PROPERTY_COUNTS)
    np.testing.assert_allclose(const, np_piecewise_constant(PROPERTY_COUNTS.astype(float), init, bas), rtol=1e-12)
