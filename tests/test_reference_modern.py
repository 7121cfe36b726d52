"""AdaBelief, LAMB and LARS against NumPy references written from their papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol

SHAPES = {"w": (3, 4), "b": (5,), "s": ()}
STEPS = 200


def _params(dtype):
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def _grad(p, t):
    # A smooth, deterministic gradient: a quadratic pull plus a step-dependent drift.
    return {k: 0.5 * v + 0.1 * np.cos(0.1 * t + np.arange(v.size).reshape(v.shape)) for k, v in p.items()}


def _run_library(opt, dtype):
    params = jax.tree.map(jnp.asarray, _params(dtype))
    state = opt.init(params)
    step = jax.jit(opt.update)
    history = []
    for t in range(STEPS):
        grads = jax.tree.map(jnp.asarray, _grad(jax.tree.map(np.asarray, params), t))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, state = step(grads, state, params)
        params = jol.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    return history


def _run_reference(leaf_step, init_state, dtype):
    params = {k: v.astype(np.float64) for k, v in _params(dtype).items()}
    state = {k: init_state(v) for k, v in params.items()}
    history = []
    for t in range(1, STEPS + 1):
        grads = _grad(params, t - 1)
        for k in params:
            params[k], state[k] = leaf_step(params[k], grads[k], state[k], t)
        history.append({k: v.copy() for k, v in params.items()})
    return history


def adabelief_ref(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    def step(p, g, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g - m) ** 2 + eps_root
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        return p - lr * m_hat / (np.sqrt(v_hat) + eps), (m, v)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p))


def lamb_ref(lr, wd, b1=0.9, b2=0.999, eps=1e-6):
    def step(p, g, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
        pn, rn = np.linalg.norm(p), np.linalg.norm(r)
        ratio = 1.0 if pn == 0 or rn == 0 else pn / rn
        return p - lr * ratio * r, (m, v)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p))


def lars_ref(lr, wd, coef=0.001, momentum=0.9):
    def step(p, g, buf, t):
        d = g + wd * p
        pn, dn = np.linalg.norm(p), np.linalg.norm(d)
        ratio = 1.0 if pn == 0 or dn == 0 else coef * pn / dn
        buf = momentum * buf + lr * ratio * d
        return p - buf, buf

    return step, np.zeros_like


CASES = {
    "adabelief": (lambda: jol.adabelief(1e-2), lambda: adabelief_ref(1e-2)),
    "lamb": (lambda: jol.lamb(1e-2, weight_decay=0.01), lambda: lamb_ref(1e-2, 0.01)),
    "lars": (lambda: jol.lars(0.5, weight_decay=0.01), lambda: lars_ref(0.5, 0.01)),
}


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-9, 1e-11), (np.float32, 2e-4, 2e-5)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_every_step(name, dtype, rtol, atol):
    make_opt, make_ref = CASES[name]
    got = _run_library(make_opt(), dtype)
    want = _run_reference(*make_ref(), dtype)
    assert len(got) == len(want) == STEPS
    for t, (g, w) in enumerate(zip(got, want)):
        for k in SHAPES:
            np.testing.assert_allclose(g[k], w[k], rtol=rtol, atol=atol, err_msg=f"{name} step {t} leaf {k}")
