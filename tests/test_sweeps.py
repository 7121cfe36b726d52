"""Tests for jaxopt_lite.sweeps, batched sweeps, hypergradients and the examples."""

from __future__ import annotations

import itertools
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_lite.aliases import adam, adamw, sgd
from jaxopt_lite.base import apply_updates, chain
from jaxopt_lite.schedules import warmup_cosine_decay_schedule
from jaxopt_lite.sweeps import (
    Distribution,
    choice,
    grid,
    log_uniform,
    random_search,
    run_sweep,
    sweep_size,
    uniform,
)
from jaxopt_lite.transforms.clipping import clip_by_global_norm

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_with_the_first_axis_slowest():
    lrs, wds, b1s = [1e-3, 1e-2], [0.0, 1e-4, 1e-3], [0.9]
    h = grid(learning_rate=lrs, weight_decay=wds, b1=b1s)
    assert list(h) == ["learning_rate", "weight_decay", "b1"]
    assert all(v.shape == (6,) for v in h.values())
    expected = list(itertools.product(lrs, wds, b1s))
    got = list(zip(*(np.asarray(v).tolist() for v in h.values())))
    assert got == expected


def test_grid_accepts_scalars_and_arrays_and_keeps_dtypes():
    h = grid(steps=jnp.array([1, 2, 3], jnp.int32), lr=0.1)
    assert h["steps"].dtype == jnp.int32 and h["lr"].dtype == jnp.float64  # x64 is on in the tests
    assert not h["lr"].weak_type
    np.testing.assert_array_equal(h["steps"], [1, 2, 3])
    np.testing.assert_array_equal(h["lr"], [0.1, 0.1, 0.1])
    assert sweep_size(h) == 3


@pytest.mark.parametrize(
    "axes, error, match",
    [({}, ValueError, "give at least one axis"), ({"a": []}, ValueError, "axis 'a' is empty"),
     ({"a": [[1, 2], [3, 4]]}, ValueError, r"axis 'a' must be 1-D, got shape \(2, 2\)"),
     ({"a": "abc"}, TypeError, "axis 'a' must be a 1-D sequence of numbers")],
)
def test_grid_rejects_bad_axes(axes, error, match):
    with pytest.raises(error, match=f"^grid: {match}"):
        grid(**axes)


# --------------------------------------------------------------------------------------
# random_search
# --------------------------------------------------------------------------------------


def test_random_search_shapes_ranges_and_types():
    n = 2000
    h = random_search(
        jax.random.key(0),
        n,
        lr=log_uniform(1e-5, 1e-1),
        b1=uniform(0.8, 0.99),
        width=choice([16, 32, 64]),
        wd=1e-4,
        noise=lambda key, n: jax.random.normal(key, (n,)),
    )
    assert all(v.shape == (n,) for v in h.values())
    lr = np.asarray(h["lr"])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1
    # log-uniform: log10(lr) is uniform on [-5, -1] -> mean -3, each decade about a quarter.
    assert abs(np.log10(lr).mean() + 3.0) < 0.1
    counts = np.histogram(np.log10(lr), bins=[-5, -4, -3, -2, -1])[0]
    assert np.all(np.abs(counts / n - 0.25) < 0.05)
    b1 = np.asarray(h["b1"])
    assert b1.min() >= 0.8 and b1.max() < 0.99 and abs(b1.mean() - 0.895) < 0.01
    assert h["width"].dtype.kind == "i" and set(np.asarray(h["width"]).tolist()) == {16, 32, 64}
    np.testing.assert_array_equal(h["wd"], np.full(n, 1e-4))
    assert abs(float(jnp.std(h["noise"])) - 1.0) < 0.1


def test_random_search_is_reproducible_and_axes_are_independent():
    key = jax.random.key(42)
    a = random_search(key, 8, lr=log_uniform(1e-4, 1.0), wd=uniform(0.0, 0.1))
    b = random_search(key, 8, lr=log_uniform(1e-4, 1.0), wd=uniform(0.0, 0.1))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    # Adding an axis does not change the draws of the others; the draws depend on the name.
    c = random_search(key, 8, momentum=uniform(0.0, 1.0), lr=log_uniform(1e-4, 1.0))
    np.testing.assert_array_equal(a["lr"], c["lr"])
    d = random_search(key, 8, learning_rate=log_uniform(1e-4, 1.0))
    assert not np.array_equal(a["lr"], d["learning_rate"])
    e = random_search(jax.random.key(43), 8, lr=log_uniform(1e-4, 1.0))
    assert not np.array_equal(a["lr"], e["lr"])
    # Legacy uint32 keys work too, and reproducibly.
    f = random_search(jax.random.PRNGKey(0), 5, lr=uniform(0.0, 1.0))
    g = random_search(jax.random.PRNGKey(0), 5, lr=uniform(0.0, 1.0))
    np.testing.assert_array_equal(f["lr"], g["lr"])


def test_distributions_are_distribution_objects_and_validate():
    assert all(isinstance(d, Distribution) for d in (uniform(0, 1), log_uniform(1e-3, 1), choice([1, 2])))
    for make in (lambda: uniform(1.0, 1.0), lambda: uniform(2.0, 1.0), lambda: uniform(0.0, math.inf)):
        with pytest.raises(ValueError, match="uniform"):
            make()
    for make in (lambda: log_uniform(0.0, 1.0), lambda: log_uniform(-1.0, 1.0), lambda: log_uniform(1.0, 0.5)):
        with pytest.raises(ValueError, match="log_uniform"):
            make()
    with pytest.raises(ValueError, match="choice"):
        choice([])
    with pytest.raises(TypeError, match="choice"):
        choice(["adam", "sgd"])


def test_random_search_rejects_bad_arguments():
    key = jax.random.key(0)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            random_search(key, n, lr=uniform(0, 1))
    with pytest.raises(ValueError, match="at least one"):
        random_search(key, 3)
    with pytest.raises(TypeError, match="choice"):
        random_search(key, 3, lr=[1e-3, 1e-2])
    with pytest.raises(ValueError, match="shape"):
        random_search(key, 3, lr=lambda key, n: jnp.zeros((n, 2)))


# --------------------------------------------------------------------------------------
# Batched sweeps equal the same runs done one by one
# --------------------------------------------------------------------------------------


def _problem():
    """A small MLP regression problem in float64."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 5)))
    y = jnp.asarray(np.sin(np.asarray(x) @ rng.normal(size=5)))
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (5, 16), jnp.float64) / np.sqrt(5),
        "b1": jnp.zeros(16, jnp.float64),
        "w2": jax.random.normal(k2, (16,), jnp.float64) / 4.0,
    }
    return params, x, y


def _loss(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] - y) ** 2)


def _train(make_optimizer, steps=30):
    params0, x, y = _problem()

    def train(h):
        opt = make_optimizer(h)

        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(_loss)(params, x, y)
            updates, state = opt.update(grads, state, params)
            return (apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params0, opt.init(params0)), None, length=steps)
        return {"params": params, "losses": losses, "final_loss": _loss(params, x, y)}

    return train


_SWEEPS = {
    "adam": (
        lambda h: adam(learning_rate=h["lr"], b1=h["b1"]),
        grid(lr=[1e-3, 1e-2, 5e-2], b1=[0.5, 0.9]),
    ),
    "sgd_momentum": (
        lambda h: sgd(learning_rate=h["lr"], momentum=h["momentum"]),
        grid(lr=[1e-2, 5e-2], momentum=[0.0, 0.5, 0.9]),
    ),
    "sgd_nesterov": (
        lambda h: sgd(learning_rate=h["lr"], momentum=h["momentum"], nesterov=True),
        random_search(jax.random.key(1), 4, lr=log_uniform(1e-3, 1e-1), momentum=uniform(0.5, 0.95)),
    ),
    "clip_adamw_warmup_cosine": (
        lambda h: chain(
            clip_by_global_norm(h["max_norm"]),
            adamw(
                warmup_cosine_decay_schedule(0.0, h["peak"], warmup_steps=5, decay_steps=30, end_value=h["peak"] / 10),
                weight_decay=h["wd"],
            ),
        ),
        random_search(
            jax.random.key(2), 5, max_norm=log_uniform(0.05, 5.0), peak=log_uniform(1e-3, 1e-1), wd=uniform(0.0, 0.1)
        ),
    ),
}


@pytest.mark.parametrize("name", list(_SWEEPS))
def test_each_member_of_a_vmapped_sweep_equals_the_same_run_alone(name):
    make_optimizer, hparams = _SWEEPS[name]
    train = _train(make_optimizer)
    batched = run_sweep(train, hparams)
    k = sweep_size(hparams)
    assert batched["losses"].shape == (k, 30)
    single = jax.jit(train)
    for i in range(k):
        alone = single(jax.tree.map(lambda v: v[i], hparams))
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(jax.tree.map(lambda v: v[i], batched))):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    # Training happened and the hyperparameters matter: the members differ from each other.
    final = np.asarray(batched["final_loss"])
    assert np.all(final < np.asarray(batched["losses"][:, 0]))
    assert len(np.unique(np.round(final, 10))) == k


def test_run_sweep_in_chunks_and_with_shared_arguments():
    params0, x, y = _problem()
    hparams = grid(lr=[1e-3, 1e-2, 3e-2], momentum=[0.0, 0.9])

    def train(h, x, y):
        opt = sgd(h["lr"], momentum=h["momentum"])

        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(_loss)(params, x, y), state, params)
            return (apply_updates(params, updates), state), None

        return _loss(jax.lax.scan(step, (params0, opt.init(params0)), None, length=10)[0][0], x, y)

    full = run_sweep(train, hparams, x, y)
    chunked = run_sweep(train, hparams, x, y, batch_size=4)  # 6 configurations: chunks of 4 and 2
    assert full.shape == (6,)
    np.testing.assert_allclose(chunked, full, rtol=1e-12)
    single = jax.jit(train)
    for i in range(6):
        np.testing.assert_allclose(full[i], single(jax.tree.map(lambda v: v[i], hparams), x, y), rtol=1e-9)
    eager = run_sweep(lambda h, scale: {"twice": scale * h["lr"]}, hparams, 2.0, jit=False)
    np.testing.assert_allclose(eager["twice"], 2.0 * hparams["lr"])
    with pytest.raises(ValueError, match="leading dimension"):
        run_sweep(train, {"lr": jnp.ones(3), "momentum": jnp.ones(2)}, x, y)
    with pytest.raises(ValueError, match="batch_size"):
        run_sweep(train, hparams, x, y, batch_size=0)


# --------------------------------------------------------------------------------------
# Hypergradients through unrolled training
# --------------------------------------------------------------------------------------


def _final_loss(make_optimizer, steps=15):
    params0, x, y = _problem()

    def final_loss(h):
        opt = make_optimizer(h)

        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(_loss)(params, x, y), state, params)
            return (apply_updates(params, updates), state), None

        params, _ = jax.lax.scan(step, (params0, opt.init(params0)), None, length=steps)[0]
        return _loss(params, x, y)

    return jax.jit(final_loss)


_HYPERGRAD_CASES = {
    "sgd_momentum": (lambda h: sgd(h["lr"], momentum=h["momentum"]), {"lr": 0.05, "momentum": 0.7}),
    "sgd_nesterov": (lambda h: sgd(h["lr"], momentum=h["momentum"], nesterov=True), {"lr": 0.05, "momentum": 0.7}),
    "adam": (lambda h: adam(h["lr"], b1=h["b1"], b2=h["b2"]), {"lr": 0.01, "b1": 0.8, "b2": 0.99}),
    "adamw_schedule": (
        lambda h: adamw(warmup_cosine_decay_schedule(0.0, h["lr"], 3, 15), weight_decay=h["wd"]),
        {"lr": 0.02, "wd": 0.1},
    ),
}


@pytest.mark.parametrize("name", list(_HYPERGRAD_CASES))
def test_hypergradient_of_unrolled_training_matches_central_finite_difference(name):
    make_optimizer, h0 = _HYPERGRAD_CASES[name]
    h0 = {k: jnp.asarray(v, jnp.float64) for k, v in h0.items()}
    final_loss = _final_loss(make_optimizer)
    grads = jax.jit(jax.grad(final_loss))(h0)
    for k in h0:
        eps = 1e-6 * max(1.0, abs(float(h0[k])))
        fd = (final_loss({**h0, k: h0[k] + eps}) - final_loss({**h0, k: h0[k] - eps})) / (2 * eps)
        assert abs(float(grads[k])) > 1e-6, k  # a real dependence, not a trivially zero gradient
        np.testing.assert_allclose(grads[k], fd, rtol=1e-5, atol=1e-9, err_msg=k)


def test_hypergradients_vmap_over_a_sweep():
    # Per-member hypergradients of a sweep, in one program: vmap(grad(final_loss)).
    final_loss = _final_loss(lambda h: sgd(h["lr"], momentum=h["momentum"]))
    hparams = grid(lr=[0.01, 0.05], momentum=[0.3, 0.8])
    hypergrad = jax.grad(final_loss)
    batched = jax.jit(jax.vmap(hypergrad))(hparams)
    hypergrad = jax.jit(hypergrad)
    for i in range(4):
        alone = hypergrad(jax.tree.map(lambda v: v[i], hparams))
        for k in hparams:
            np.testing.assert_allclose(batched[k][i], alone[k], rtol=1e-9)


# --------------------------------------------------------------------------------------
# The examples run
# --------------------------------------------------------------------------------------


def _run_example(name, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_sweep_mlp_example_runs():
    pytest.importorskip("sklearn", reason="examples/sweep_mlp.py loads scikit-learn's digits dataset")
    out = _run_example("sweep_mlp.py", "--quick")
    assert "trained 4 MLPs x 30 steps" in out
    best_acc = float(re.search(r"best: .*val_accuracy=([0-9.]+)", out).group(1))
    alone_acc = float(re.search(r"retrained alone: val_accuracy=([0-9.]+)", out).group(1))
    assert best_acc > 0.5  # 10 classes: far above chance even after 30 steps
    assert abs(best_acc - alone_acc) <= 0.01


def test_meta_learning_rate_example_runs():
    out = _run_example("meta_learning_rate.py", "--quick")
    pairs = re.findall(r"autodiff ([-+0-9.]+), finite difference ([-+0-9.]+)", out)
    assert len(pairs) == 2
    for ad, fd in pairs:
        assert abs(float(ad) - float(fd)) <= 1e-3 * max(1.0, abs(float(fd)))
    start, best = map(float, re.search(r"([0-9.]+) at the start, ([0-9.]+) at best", out).groups())
    assert best < start
