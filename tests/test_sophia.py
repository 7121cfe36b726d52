"""Sophia and Hutchinson's estimator: 200 float64 steps against a NumPy reference written from the
paper (with Optax's conventions: bias-corrected momentum, the Hessian EMA refreshed after the step
that uses it, Rademacher probes), and against ``optax.contrib.sophia`` (Optax 0.2.8).

The loss has a non-diagonal Hessian, so Hutchinson's estimate is random (and sometimes negative):
``L(P) = 0.5 sum c (P - y)^2 + 0.05 (sum P)^2 + 0.1 sum cos(P)`` over the flattened params ``P``,
whose Hessian-vector product is ``(c - 0.1 cos P) z + 0.1 (sum z) 1``. The gradient fed to the
optimizer is the loss's plus ``0.1 sin(0.7 t + phase)``. The reference draws the probe signs with
the same keys (``jax.random`` calls on the side), everything else is NumPy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_lite.base import apply_updates
from jaxopt_lite.optimizers.sophia import (
    GaussNewtonBartlettState,
    HutchinsonState,
    SophiaState,
    hutchinson_estimator_diag_hessian,
    scale_by_sophia,
    sophia,
)

STEPS = 200
SHAPES = {"w": (3, 2), "b": (4,), "s": ()}
KEY_SEED = 3


@functools.cache
def problem():
    rng = np.random.default_rng(7)
    draw = lambda fn: {k: np.asarray(fn(s), np.float64) for k, s in SHAPES.items()}
    return (
        draw(lambda s: rng.normal(size=s)),
        draw(lambda s: rng.normal(size=s)),
        draw(lambda s: rng.uniform(0.5, 2.0, size=s)),
        draw(lambda s: rng.uniform(0.0, 2 * np.pi, size=s)),
    )


def loss(xp, params, target, curv):
    leaves = jax.tree.leaves(params)
    total = sum(xp.sum(p) for p in leaves)
    return (sum(xp.sum(0.5 * c * (p - y) ** 2 + 0.1 * xp.cos(p))
                for p, y, c in zip(leaves, jax.tree.leaves(target), jax.tree.leaves(curv)))
            + 0.05 * total**2)


def np_grad(params, target, curv):
    total = sum(np.sum(p) for p in params.values())
    return {k: curv[k] * (params[k] - target[k]) + 0.1 * total - 0.1 * np.sin(params[k]) for k in params}


def np_hvp(params, curv, z):
    zsum = sum(np.sum(v) for v in z.values())
    return {k: (curv[k] - 0.1 * np.cos(params[k])) * z[k] + 0.1 * zsum for k in params}


CASES = {
    "defaults": {"learning_rate": 0.01},
    "custom": {
        "learning_rate": 0.05, "b1": 0.9, "b2": 0.95, "eps": 1.0, "weight_decay": 0.01,
        "weight_decay_mask": {"w": True, "b": False, "s": True}, "gamma": 0.5, "clip_threshold": None,
        "update_interval": 3,
    },
    "clipped": {
        "learning_rate": 0.02, "b1": 0.8, "b2": 0.9, "eps": 1e-3, "weight_decay": 0.0, "gamma": 0.3,
        "clip_threshold": 0.4, "update_interval": 1,
    },
}


def trajectory(opt, apply):
    p0, target, curv, phase = (jax.tree.map(jnp.asarray, x) for x in problem())

    @jax.jit
    def step(p, s, t):
        obj = functools.partial(loss, jnp, target=target, curv=curv)
        g = jax.tree.map(lambda a, f: a + 0.1 * jnp.sin(0.7 * t + f), jax.grad(obj)(p), phase)
        u, s = opt.update(g, s, p, obj_fn=obj)
        return apply(p, u), s

    p, s = p0, opt.init(p0)
    history = []
    for t in range(STEPS):
        p, s = step(p, s, jnp.asarray(t, jnp.float64))
        history.append(jax.tree.map(np.asarray, p))
    return history, s


@functools.cache
def probe_signs(seed):
    """The Rademacher probes of the first ``STEPS`` refreshes, as Optax draws them: per refresh the key
    is split into (next key, probe key), the probe key into one key per leaf (dict order), signs in float32."""

    @jax.jit
    def draw():
        def body(key, _):
            key, sub = jax.random.split(key)
            keys = jax.random.split(sub, len(SHAPES))
            return key, {k: jax.random.rademacher(kk, SHAPES[k], jnp.float32) for k, kk in zip(sorted(SHAPES), keys)}

        return jax.lax.scan(body, jax.random.PRNGKey(seed), length=STEPS)[1]

    return {k: np.asarray(v, np.float64) for k, v in draw().items()}


def reference(learning_rate, b1=0.965, b2=0.99, eps=1e-8, weight_decay=1e-4, weight_decay_mask=None,
              gamma=0.01, clip_threshold=1.0, update_interval=10, seed=KEY_SEED):
    """Liu et al. (2023), Algorithm 3 with Optax's conventions (see the module docstring)."""
    params, target, curv, phase = (dict(x) for x in problem())
    mask = weight_decay_mask or {k: True for k in params}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    h = {k: np.zeros_like(v) for k, v in params.items()}
    probes, refreshes = probe_signs(seed), 0
    history = []
    for t in range(1, STEPS + 1):
        g = {k: v + 0.1 * np.sin(0.7 * (t - 1) + phase[k]) for k, v in np_grad(params, target, curv).items()}
        m = {k: b1 * m[k] + (1 - b1) * g[k] for k in params}
        u = {k: m[k] / (1 - b1**t) / np.maximum(gamma * h[k], eps) for k in params}
        if clip_threshold is not None:
            u = {k: np.clip(v, -clip_threshold, clip_threshold) for k, v in u.items()}
        if (t - 1) % update_interval == 0:
            z = {k: v[refreshes] for k, v in probes.items()}
            refreshes += 1
            hz = np_hvp(params, curv, z)
            h = {k: b2 * h[k] + (1 - b2) * z[k] * hz[k] for k in params}
        params = {k: params[k] - learning_rate * (u[k] + (weight_decay * params[k] if mask[k] else 0.0))
                  for k in params}
        history.append(params)
    return history


def _with_key(kwargs, module):
    kwargs = dict(kwargs)
    kwargs["hessian_diagonal_fn"] = module.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(KEY_SEED))
    return kwargs


@functools.cache
def ours(case):
    import jaxopt_lite.optimizers.sophia as mod

    return trajectory(sophia(**_with_key(CASES[case], mod)), apply_updates)


def assert_histories_close(got, want, what, rtol, atol):
    for t, (g, w) in enumerate(zip(got, want)):
        for k in SHAPES:
            np.testing.assert_allclose(g[k], w[k], rtol=rtol, atol=atol, err_msg=f"{what}: step {t + 1}, leaf {k}")
    moved = max(np.max(np.abs(got[-1][k] - problem()[0][k])) for k in SHAPES)
    assert moved > 1e-2, f"{what}: the params did not move"


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference(case):
    got, _ = ours(case)
    assert_histories_close(got, reference(**CASES[case]), f"{case} vs NumPy", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax(case):
    got, state = ours(case)
    want, ostate = trajectory(optax.contrib.sophia(**_with_key(CASES[case], optax.contrib)), optax.apply_updates)
    assert_histories_close(got, want, f"{case} vs Optax", rtol=1e-12, atol=1e-13)
    # The states agree too: names, fields, values (mu, nu, count, the estimator's key).
    ours_sophia, theirs_sophia = state[0], ostate[0]
    assert type(ours_sophia).__name__ == type(theirs_sophia).__name__ == "SophiaState"
    assert ours_sophia._fields == theirs_sophia._fields
    assert type(ours_sophia.hessian_fn_state).__name__ == type(theirs_sophia.hessian_fn_state).__name__
    assert ours_sophia.hessian_fn_state._fields == theirs_sophia.hessian_fn_state._fields
    for a, b in zip(jax.tree.leaves(ours_sophia), jax.tree.leaves(theirs_sophia)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-13)


def test_hutchinson_estimate_matches_optax_and_is_unbiased():
    """Same probes and products as Optax for the same key; the mean of many estimates is diag(H)."""
    p0, target, curv, _ = (jax.tree.map(jnp.asarray, x) for x in problem())
    obj = functools.partial(loss, jnp, target=target, curv=curv)
    est = hutchinson_estimator_diag_hessian(jax.random.PRNGKey(11))
    oest = optax.contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(11))

    def run(e, n):
        def body(s, _):
            d, s = e.update(p0, s, p0, obj_fn=obj)
            return s, d

        return jax.lax.scan(body, e.init(p0), length=n)

    (s, d), (os_, od) = jax.jit(lambda: (run(est, 2000), run(oest, 2000)))()
    assert isinstance(s, HutchinsonState)
    assert type(s).__name__ == type(os_).__name__ == "HutchinsonState" and s._fields == os_._fields == ("key",)
    np.testing.assert_array_equal(np.asarray(s.key), np.asarray(os_.key))
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(d[k]), np.asarray(od[k]), rtol=1e-13, atol=1e-14)
    diag = {k: np.asarray(curv[k]) - 0.1 * np.cos(np.asarray(p0[k])) + 0.1 for k in SHAPES}
    for k in SHAPES:
        # Off-diagonal noise: 0.1 times a sum of 10 signs per draw, so a standard error ~ 0.32 / sqrt(2000).
        np.testing.assert_allclose(np.asarray(d[k]).mean(axis=0), diag[k], atol=0.04)


def test_errors_and_defaults():
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="obj_fn"):
        hutchinson_estimator_diag_hessian().update(p, hutchinson_estimator_diag_hessian().init(p), p)
    with pytest.raises(ValueError, match="params"):
        tx = scale_by_sophia()
        tx.update(p, tx.init(p), None, obj_fn=lambda q: 0.0)
    with pytest.raises(ValueError, match="b1"):
        sophia(0.1, b1=1.5)
    with pytest.raises(ValueError, match="update_interval"):
        sophia(0.1, update_interval=0)
    state = sophia(0.1, mu_dtype=jnp.float32).init({"w": jnp.ones(3, jnp.float64)})
    assert isinstance(state[0], SophiaState)
    assert state[0].mu["w"].dtype == jnp.float32 and state[0].nu["w"].dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(state[0].hessian_fn_state.key), np.asarray(jax.random.PRNGKey(0)))


def _softmax_regression(seed=0, batch=6, dim=3, classes=4):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((dim, classes))), "b": jnp.asarray(rng.standard_normal(classes))}
    x = jnp.asarray(rng.standard_normal((batch, dim)))

    def sampled_obj_fn(p, key):
        logits = x @ p["w"] + p["b"]
        labels = jax.random.categorical(key, logits)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    return params, x, sampled_obj_fn


def test_gauss_newton_bartlett_estimate_is_batch_times_squared_sampled_gradient():
    """Sophia-G's estimator against the closed form of softmax regression at the same sampled labels, and its
    mean over many draws against the Gauss-Newton diagonal (Bartlett's identity)."""
    from jaxopt_lite.contrib import gauss_newton_bartlett_estimator_diag_hessian as gnb

    params, x, sampled_obj_fn = _softmax_regression()
    batch = x.shape[0]
    est = gnb(batch, jax.random.PRNGKey(5))
    diag, state = est.update(params, est.init(params), params, sampled_obj_fn=sampled_obj_fn)
    assert isinstance(state, GaussNewtonBartlettState) and state._fields == ("key",)
    key, sample_key = jax.random.split(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(np.asarray(state.key), np.asarray(key))
    logits = np.asarray(x @ params["w"] + params["b"])
    labels = np.asarray(jax.random.categorical(sample_key, jnp.asarray(logits)))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    residual = probs - np.eye(logits.shape[1])[labels]
    grad = {"w": np.asarray(x).T @ residual / batch, "b": residual.mean(0)}
    for k in grad:
        np.testing.assert_allclose(np.asarray(diag[k]), batch * grad[k] ** 2, rtol=1e-12, atol=1e-15)

    def draws(n):
        def body(s, _):
            d, s = est.update(params, s, params, sampled_obj_fn=sampled_obj_fn)
            return s, d

        return jax.lax.scan(body, est.init(params), length=n)[1]

    mean = jax.tree.map(lambda d: np.asarray(d).mean(0), jax.jit(draws, static_argnums=0)(4000))
    curvature = probs * (1 - probs)  # the diagonal of softmax's Hessian in the logits, per example
    gauss_newton = {"w": (np.asarray(x) ** 2).T @ curvature / batch, "b": curvature.mean(0)}
    for k in gauss_newton:
        np.testing.assert_allclose(mean[k], gauss_newton[k], rtol=0.1, atol=0.005)


def test_sophia_g_trains_and_names_what_it_needs():
    from jaxopt_lite import contrib
    from jaxopt_lite.contrib import gauss_newton_bartlett_estimator_diag_hessian as gnb

    params, x, sampled_obj_fn = _softmax_regression(seed=1)
    opt = contrib.sophia(0.05, hessian_diagonal_fn=gnb(x.shape[0]), update_interval=1)
    state = opt.init(params)
    with pytest.raises(ValueError, match="sampled_obj_fn"):
        opt.update(params, state, params)
    with pytest.raises(ValueError, match="batch_size"):
        gnb(0)
    u, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params, sampled_obj_fn=sampled_obj_fn)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(u))
    sophia_state = next(s for s in state if isinstance(s, SophiaState))
    assert float(jnp.max(jnp.abs(sophia_state.nu["w"]))) > 0  # the estimate reached the EMA
