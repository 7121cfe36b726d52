"""The seed articles' worked examples, and convergence of every optimizer.

- Gradient descent with learning rate 0.2 on f(x) = x^2 multiplies x by 0.6 per
  step; with learning rate 0.4 on f(x) = x1^2 + 2 x2^2 it maps
  (x1, x2) -> (0.2 x1, -0.6 x2).
- Every alias reaches the minimum of a quadratic and of Rosenbrock's function.
- Momentum leaves the saddle of x^2 - y^2; full-batch, stochastic and mini-batch
  gradient descent all fit a logistic regression; clipping bounds the step;
  decoupled weight decay shrinks parameters by (1 - lr * wd) per step; zero
  gradients never produce NaNs.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol


def _scan(tx, grad, p0, steps):
    """``steps`` of ``tx`` from ``p0`` with ``grad(p, t)``; returns the params after every step (stacked)."""

    def body(carry, t):
        p, s = carry
        u, s = tx.update(grad(p, t), s, p)
        p = jol.apply_updates(p, u)
        return (p, s), p

    return jax.lax.scan(body, (p0, tx.init(p0)), jnp.arange(steps))[1]


# ----------------------------------------------------------------------------
# The seed articles' examples.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gd_on_x_squared_contracts_by_0_6(dtype):
    """x <- x - 0.2 * 2x = 0.6 x: every step, to the rounding of one multiply-add."""
    f = lambda x: x**2
    x0 = Fraction(5, 2)
    xs = np.asarray(jax.jit(lambda x: _scan(jol.sgd(0.2), lambda p, t: jax.grad(f)(p), x, 20))(jnp.asarray(dtype(x0))))
    assert xs.dtype == dtype and xs.shape == (20,)
    eps = np.finfo(dtype).eps
    prev = dtype(x0)
    for t in range(20):
        np.testing.assert_allclose(xs[t], 0.6 * float(prev), rtol=2 * eps, err_msg=f"step {t}")
        # The exact rational value 2.5 * (3/5)^(t+1), up to the rounding accumulated over t+1 steps.
        np.testing.assert_allclose(xs[t], float(x0 * Fraction(3, 5) ** (t + 1)), rtol=2 * (t + 1) * eps)
        assert 0 < xs[t] < prev
        prev = xs[t]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gd_on_elliptic_quadratic(dtype):
    """f = x1^2 + 2 x2^2, lr 0.4: x1 <- x1 - 0.8 x1 = 0.2 x1 and x2 <- x2 - 1.6 x2 = -0.6 x2."""
    f = lambda x: x[0] ** 2 + 2 * x[1] ** 2
    x0 = (Fraction(3, 2), Fraction(-3, 4))
    xs = np.asarray(jax.jit(lambda x: _scan(jol.sgd(0.4), lambda p, t: jax.grad(f)(p), x, 20))(
        jnp.asarray([float(v) for v in x0], dtype)))
    assert xs.dtype == dtype and xs.shape == (20, 2)
    eps = np.finfo(dtype).eps
    prev = np.asarray([float(v) for v in x0], dtype)
    for t in range(20):
        # x1: 0.8 x1 is subtracted from x1, so the rounding of x1 - 0.8 x1 is relative to x1, not 0.2 x1.
        np.testing.assert_allclose(xs[t], [0.2 * float(prev[0]), -0.6 * float(prev[1])], rtol=12 * eps,
                                   err_msg=f"step {t}")
        exact = [float(x0[0] * Fraction(1, 5) ** (t + 1)), float(x0[1] * Fraction(-3, 5) ** (t + 1))]
        np.testing.assert_allclose(xs[t], exact, rtol=12 * (t + 1) * eps)
        assert np.sign(xs[t][1]) == (-1) ** (t + 1) * np.sign(float(x0[1]))  # x2 flips sign every step
        prev = xs[t]


# ----------------------------------------------------------------------------
# Convergence of every alias on a quadratic and on Rosenbrock's function.
# ----------------------------------------------------------------------------

_rng = np.random.default_rng(3)
Q_SHAPES = {"b": (5,), "s": (), "w": (3, 4)}
Q_CURV = {k: _rng.uniform(0.5, 2.0, size=v) for k, v in Q_SHAPES.items()}
Q_MIN = {k: _rng.normal(size=v) for k, v in Q_SHAPES.items()}
Q_START = {k: _rng.normal(size=v) for k, v in Q_SHAPES.items()}


def quadratic(p):
    return sum(jnp.sum(0.5 * Q_CURV[k] * (p[k] - Q_MIN[k]) ** 2) for k in Q_SHAPES)


def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def decay(lr0, rate):
    return lambda count: lr0 * rate**count


# name: (quadratic optimizer, steps), (Rosenbrock optimizer, steps), tolerance (distance to the minimum)
CONVERGENCE = {
    "sgd": ((jol.sgd(0.5), 300), (jol.sgd(2e-3), 10_000), 1e-3),
    "sgd_momentum": ((jol.sgd(0.1, momentum=0.9), 500), (jol.sgd(1e-3, momentum=0.9), 5000), 1e-3),
    "sgd_nesterov": ((jol.sgd(0.1, momentum=0.9, nesterov=True), 500),
                     (jol.sgd(1e-3, momentum=0.9, nesterov=True), 5000), 1e-3),
    "noisy_sgd": ((jol.noisy_sgd(0.2, eta=1e-4, key=0), 1000), (jol.noisy_sgd(2e-3, eta=1e-4, key=0), 20_000), 2e-2),
    "sign_sgd": ((jol.sign_sgd(decay(0.1, 0.99)), 1500), (jol.sign_sgd(decay(0.02, 0.999)), 10_000), 2e-2),
    "adagrad": ((jol.adagrad(1.0), 1000), (jol.adagrad(0.5), 10_000), 2e-3),
    "adadelta": ((jol.adadelta(1.0, rho=0.9, eps=1e-4), 3000), (jol.adadelta(0.3, rho=0.9, eps=1e-8), 20_000), 2e-2),
    "rmsprop": ((jol.rmsprop(decay(0.05, 0.995)), 2000), (jol.rmsprop(decay(0.01, 0.999)), 10_000), 1e-3),
    "rmsprop_centered": ((jol.rmsprop(decay(0.05, 0.995), centered=True), 2000),
                         (jol.rmsprop(decay(0.01, 0.999), centered=True), 10_000), 1e-3),
    "rmsprop_momentum": ((jol.rmsprop(decay(0.01, 0.995), momentum=0.9), 2000),
                         (jol.rmsprop(decay(1e-3, 0.9995), momentum=0.9), 10_000), 1e-2),
    "adam": ((jol.adam(decay(0.1, 0.995)), 2000), (jol.adam(0.02), 5000), 1e-3),
    "adamw": ((jol.adamw(decay(0.1, 0.995), weight_decay=0.0), 2000), (jol.adamw(0.02, weight_decay=0.0), 5000), 1e-3),
    "amsgrad": ((jol.amsgrad(decay(0.1, 0.998)), 2000), (jol.amsgrad(0.2), 20_000), 1e-3),
    "adamax": ((jol.adamax(decay(0.1, 0.998)), 2000), (jol.adamax(0.02), 5000), 1e-3),
    "adamaxw": ((jol.adamaxw(decay(0.1, 0.998), weight_decay=0.0), 2000), (jol.adamaxw(0.02, weight_decay=0.0), 5000),
                1e-3),
    "nadam": ((jol.nadam(decay(0.1, 0.995)), 2000), (jol.nadam(0.02), 5000), 1e-3),
    "nadam_torch": ((jol.nadam(decay(0.1, 0.995), momentum_decay=0.004), 2000),
                    (jol.nadam(decay(0.02, 0.9995), momentum_decay=0.004), 20_000), 1e-2),
    "nadamw": ((jol.nadamw(decay(0.1, 0.995), weight_decay=0.0), 2000), (jol.nadamw(0.02, weight_decay=0.0), 5000),
               1e-3),
    "radam": ((jol.radam(decay(0.1, 0.998)), 2000), (jol.radam(lambda c: 0.02 * jnp.minimum(1.0, (c + 1) / 100)), 5000),
              1e-3),
    "lion": ((jol.lion(decay(0.03, 0.995), weight_decay=0.0), 3000),
             (jol.lion(decay(0.01, 0.999), weight_decay=0.0), 10_000), 1e-3),
}


@functools.cache
def convergence_runs():
    """Final params of every optimizer on both problems, in one compiled computation."""

    def one(entry):
        (tq, nq), (tr, nr), _ = entry
        q = _scan(tq, lambda p, t: jax.grad(quadratic)(p), Q_START, nq)
        r = _scan(tr, lambda p, t: jax.grad(rosenbrock)(p), jnp.asarray([-1.2, 1.0]), nr)
        return jax.tree.map(lambda x: x[-1], q), r[-1], rosenbrock(r[nr // 10])

    out = jax.jit(lambda: {name: one(entry) for name, entry in CONVERGENCE.items()})()
    return jax.tree.map(np.asarray, out)


def test_every_alias_is_in_the_convergence_table():
    aliases = {"sgd", "noisy_sgd", "sign_sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "amsgrad", "adamax",
               "adamaxw", "nadam", "nadamw", "radam", "lion"}
    assert aliases <= set(CONVERGENCE)


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_reaches_quadratic_minimum(name):
    q, _, _ = convergence_runs()[name]
    tol = CONVERGENCE[name][2]
    start = max(float(np.max(np.abs(Q_START[k] - Q_MIN[k]))) for k in Q_SHAPES)
    assert start > 1.0  # the run had somewhere to go
    err = max(float(np.max(np.abs(q[k] - Q_MIN[k]))) for k in Q_SHAPES)
    assert err < tol, f"{name}: max |p - p*| = {err}"
    assert float(quadratic(q)) < tol**2


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_reaches_rosenbrock_minimum(name):
    _, r, f_early = convergence_runs()[name]
    tol = 2 * CONVERGENCE[name][2] if name != "adadelta" else 2e-2
    err = float(np.linalg.norm(r - 1.0))
    assert err < max(tol, 2e-3), f"{name}: ended at {r}, {err} from (1, 1)"
    assert float(rosenbrock(r)) < float(f_early) < float(rosenbrock(jnp.asarray([-1.2, 1.0])))


# ----------------------------------------------------------------------------
# Saddle point of f(x, y) = x^2 - y^2.
# ----------------------------------------------------------------------------


def _saddle_grad(p, t):
    return jnp.asarray([2.0, -2.0]) * p


@functools.cache
def _saddle_runs():
    steps = 400
    starts = {"off_axis": jnp.asarray([1.0, 1e-6]), "on_axis": jnp.asarray([1.0, 0.0])}
    opts = {"momentum": jol.sgd(0.01, momentum=0.9), "plain": jol.sgd(0.01)}
    out = jax.jit(lambda: {(o, s): _scan(opts[o], _saddle_grad, p0, steps) for o in opts for s, p0 in starts.items()})()
    return {k: np.asarray(v) for k, v in out.items()}


def _first_escape(traj, threshold=1.0):
    hits = np.flatnonzero(np.abs(traj[:, 1]) > threshold)
    return int(hits[0]) if hits.size else None


def test_momentum_escapes_saddle_from_off_axis():
    runs = _saddle_runs()
    traj = runs[("momentum", "off_axis")]
    escape = _first_escape(traj)
    assert escape is not None and escape < 200, "momentum did not leave the saddle"
    # The unstable direction grows monotonically in |y| and keeps its sign.
    y = traj[: escape + 1, 1]
    assert np.all(y > 0) and np.all(np.diff(np.abs(y)) > 0)
    # Plain gradient descent with the same step escapes far later (growth 1.02 vs ~1.2 per step).
    plain = _first_escape(runs[("plain", "off_axis")])
    assert plain is None or plain > 2 * escape


def test_started_on_the_axis_it_stays_on_it():
    runs = _saddle_runs()
    for opt in ("momentum", "plain"):
        traj = runs[(opt, "on_axis")]
        assert np.all(traj[:, 1] == 0.0), f"{opt}: y left 0 without a gradient pushing it"
        assert abs(traj[-1, 0]) < 1e-3, f"{opt}: x did not converge to the saddle point"


# ----------------------------------------------------------------------------
# Logistic regression: full-batch, stochastic and mini-batch gradient descent.
# ----------------------------------------------------------------------------

_lr_rng = np.random.default_rng(11)
LR_N = 200
LR_X = _lr_rng.normal(size=(LR_N, 3))
LR_Y = (_lr_rng.uniform(size=LR_N) < 1 / (1 + np.exp(-(LR_X @ np.array([1.5, -2.0, 0.5]) + 0.3)))).astype(float)


def _logistic_loss(p, idx=None):
    x, y = (LR_X, LR_Y) if idx is None else (jnp.asarray(LR_X)[idx], jnp.asarray(LR_Y)[idx])
    z = x @ p["w"] + p["b"]
    return jnp.mean(jax.nn.softplus(z) - y * z)


@functools.cache
def _logistic_runs():
    p0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    perm_rng = np.random.default_rng(5)

    def batches(size, epochs):
        return jnp.asarray(np.concatenate([perm_rng.permutation(LR_N) for _ in range(epochs)]).reshape(-1, size))

    plans = {"full": (jol.sgd(0.5), None, 300), "stochastic": (jol.sgd(0.05), batches(1, 3), None),
             "mini_batch": (jol.sgd(0.3), batches(20, 30), None), "optimum": (jol.sgd(2.0), None, 5000)}

    def run(tx, idx, steps):
        if idx is None:
            grad = lambda p, t: jax.grad(_logistic_loss)(p)
            n = steps
        else:
            grad = lambda p, t: jax.grad(_logistic_loss)(p, idx[t])
            n = idx.shape[0]
        traj = _scan(tx, grad, p0, n)
        return jax.vmap(_logistic_loss)(traj)

    out = jax.jit(lambda: {k: run(*v) for k, v in plans.items()})()
    return {k: np.asarray(v) for k, v in out.items()}, float(_logistic_loss(p0))


@pytest.mark.parametrize("mode", ["full", "stochastic", "mini_batch"])
def test_logistic_regression_loss_decreases(mode):
    runs, initial = _logistic_runs()
    losses, best = runs[mode], runs["optimum"][-1]
    np.testing.assert_allclose(initial, np.log(2.0))
    assert best < 0.8 * initial  # the data are learnable
    assert losses[-1] < initial - 0.5 * (initial - best), f"{mode}: loss {losses[-1]} (start {initial}, best {best})"
    assert losses[-1] < best + (0.01 if mode == "full" else 0.05)
    if mode == "full":
        assert np.all(np.diff(losses) <= 1e-15), "full-batch GD with a small step must decrease the loss every step"
    else:
        # Noisy, but the average loss over the last quarter is far below that of the first steps.
        n = len(losses)
        assert losses[3 * n // 4:].mean() < losses[: max(n // 20, 5)].mean()


def test_stochastic_and_full_batch_take_different_paths():
    runs, _ = _logistic_runs()
    assert not np.allclose(runs["stochastic"][:50], runs["mini_batch"][:50])
    assert not np.allclose(runs["full"][:50], runs["mini_batch"][:50])


# ----------------------------------------------------------------------------
# Clipping bounds the step.
# ----------------------------------------------------------------------------

CLIP_LR = 0.005
STEEP_MIN = {"b": np.full(5, 3.0), "s": np.asarray(-2.0), "w": np.full((3, 4), 1.0)}


def _steep_grad(p, t):
    return jax.tree.map(lambda x, m: 100.0 * (x - m), p, STEEP_MIN)


@functools.cache
def _clipped_runs():
    p0 = {k: jnp.zeros_like(v) for k, v in STEEP_MIN.items()}
    txs = {
        # lr * curvature = 0.5: stable once unclipped; the clip thresholds bound the step to 0.1, 0.3, 0.5.
        "value": jol.chain(jol.clip(20.0), jol.sgd(CLIP_LR)),
        "norm": jol.chain(jol.clip_by_norm(60.0), jol.sgd(CLIP_LR)),
        "global": jol.chain(jol.clip_by_global_norm(100.0), jol.sgd(CLIP_LR)),
    }
    out = jax.jit(lambda: {k: _scan(tx, _steep_grad, p0, 300) for k, tx in txs.items()})()
    steps = {}
    for k, traj in out.items():
        traj = {n: np.concatenate([np.zeros((1,) + STEEP_MIN[n].shape), np.asarray(v)]) for n, v in traj.items()}
        steps[k] = ({n: np.diff(v, axis=0) for n, v in traj.items()}, {n: v for n, v in traj.items()})
    return steps


def test_clip_by_value_bounds_each_coordinate():
    steps, traj = _clipped_runs()["value"]
    for n, d in steps.items():
        assert np.max(np.abs(d)) <= 0.1 * (1 + 1e-12)
        np.testing.assert_allclose(np.abs(d[0]), 0.1, rtol=1e-12)  # the bound is reached: the clip is active
        np.testing.assert_allclose(traj[n][-1], STEEP_MIN[n], atol=1e-8)  # and still converges


def test_clip_by_norm_bounds_each_leaf():
    steps, traj = _clipped_runs()["norm"]
    for n, d in steps.items():
        norms = np.sqrt(np.sum(d.reshape(len(d), -1) ** 2, axis=1))
        assert np.max(norms) <= 0.3 * (1 + 1e-12)
        np.testing.assert_allclose(norms[0], 0.3, rtol=1e-12)
        np.testing.assert_allclose(traj[n][-1], STEEP_MIN[n], atol=1e-8)


def test_clip_by_global_norm_bounds_the_step_and_keeps_its_direction():
    steps, traj = _clipped_runs()["global"]
    flat = np.concatenate([steps[n].reshape(len(steps[n]), -1) for n in sorted(steps)], axis=1)
    norms = np.linalg.norm(flat, axis=1)
    assert np.max(norms) <= 0.5 * (1 + 1e-12)
    np.testing.assert_allclose(norms[0], 0.5, rtol=1e-12)
    # First step: along -grad at the start (p = 0), i.e. along the minimizer.
    target = np.concatenate([np.ravel(STEEP_MIN[n]) for n in sorted(STEEP_MIN)])
    cos = flat[0] @ target / (np.linalg.norm(flat[0]) * np.linalg.norm(target))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
    for n in traj:
        np.testing.assert_allclose(traj[n][-1], STEEP_MIN[n], atol=1e-8)


# ----------------------------------------------------------------------------
# Decoupled weight decay with zero gradients; zero gradients everywhere.
# ----------------------------------------------------------------------------

P_START = {"b": np.linspace(-2.0, 3.0, 5), "s": np.asarray(0.7), "w": np.arange(12.0).reshape(3, 4) - 5.5}
LR, WD = 0.1, 0.02
DECAYING = {
    "adamw": jol.adamw(LR, weight_decay=WD),
    "sgd+add_decayed_weights": jol.chain(jol.add_decayed_weights(WD), jol.sgd(LR)),
    "adamaxw": jol.adamaxw(LR, weight_decay=WD),
    "nadamw": jol.nadamw(LR, weight_decay=WD),
    "nadamw_torch": jol.nadamw(LR, weight_decay=WD, momentum_decay=0.004),
    "lion": jol.lion(LR, weight_decay=WD),
}
NON_DECAYING = {
    "sgd": jol.sgd(LR), "sgd_momentum": jol.sgd(LR, momentum=0.9), "sgd_nesterov": jol.sgd(LR, 0.9, nesterov=True),
    "sign_sgd": jol.sign_sgd(LR), "adagrad": jol.adagrad(LR), "adagrad_zero_init": jol.adagrad(LR, 0.0),
    "adadelta": jol.adadelta(), "rmsprop": jol.rmsprop(LR),
    "rmsprop_eps_outside": jol.rmsprop(LR, eps_in_sqrt=False), "rmsprop_centered": jol.rmsprop(LR, centered=True),
    "rmsprop_momentum": jol.rmsprop(LR, momentum=0.9, nesterov=True),
    "rmsprop_bias_correction": jol.rmsprop(LR, bias_correction=True, centered=True),
    "adam": jol.adam(LR), "adam_nesterov": jol.adam(LR, nesterov=True), "amsgrad": jol.amsgrad(LR),
    "amsgrad_raw": jol.amsgrad(LR, max_over="raw"), "adamax": jol.adamax(LR), "nadam": jol.nadam(LR),
    "nadam_torch": jol.nadam(LR, momentum_decay=0.004), "radam": jol.radam(LR),
    "lion_no_wd": jol.lion(LR, weight_decay=0.0),
    "adamw_no_wd": jol.adamw(LR, weight_decay=0.0),
}
ZERO_STEPS = 100


@functools.cache
def _zero_grad_runs():
    zero = lambda p, t: jax.tree.map(jnp.zeros_like, p)
    txs = {**DECAYING, **NON_DECAYING, "noisy_sgd": jol.noisy_sgd(LR, eta=0.01, key=1)}
    starts = {"random": P_START, "zeros": {k: np.zeros_like(v) for k, v in P_START.items()}}
    out = jax.jit(
        lambda: {(n, s): _scan(tx, zero, p0, ZERO_STEPS) for n, tx in txs.items() for s, p0 in starts.items()}
    )()
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("name", list(DECAYING))
def test_weight_decay_shrinks_by_exactly_one_minus_lr_wd_per_step(name):
    traj = _zero_grad_runs()[(name, "random")]
    factor = (1.0 - LR * WD) ** np.arange(1, ZERO_STEPS + 1)
    for k, p0 in P_START.items():
        expected = factor.reshape((-1,) + (1,) * p0.ndim) * p0
        np.testing.assert_allclose(traj[k], expected, rtol=1e-12, atol=0, err_msg=f"{name}, leaf {k}")
    assert np.all(np.abs(traj["w"][-1]) < np.abs(P_START["w"]) + (P_START["w"] == 0))


@pytest.mark.parametrize("name", list(NON_DECAYING) + list(DECAYING) + ["noisy_sgd"])
def test_zero_gradients_give_finite_results(name):
    runs = _zero_grad_runs()
    for start in ("random", "zeros"):
        traj = runs[(name, start)]
        for k, v in traj.items():
            assert np.all(np.isfinite(v)), f"{name} from {start} params: non-finite values in {k}"
            p0 = P_START[k] if start == "random" else np.zeros_like(P_START[k])
            if name in NON_DECAYING or start == "zeros":
                if name == "noisy_sgd":
                    assert not np.allclose(v[-1], p0)  # the noise moves the params; finitely
                else:
                    np.testing.assert_array_equal(v, np.broadcast_to(p0, v.shape),
                                                  err_msg=f"{name}: a zero gradient moved the params")
