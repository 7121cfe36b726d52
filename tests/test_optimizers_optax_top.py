"""Adan, Yogi and Rprop: 200 float64 steps against NumPy references written from the papers
and against Optax 0.2.8, and Rprop against ``torch.optim.Rprop``.

Every run is one jitted ``lax.scan`` over the steps of a smooth problem whose gradient
is ``curv * (p - target) + 0.1 sin(0.7 t + phase)`` (the sine keeps signs changing).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol

STEPS = 200
TREES = {
    "A": {"w": (3, 4), "b": (5,), "s": ()},
    "B": {"conv": (2, 3, 4), "layers": [(4, 3), (6,)]},
}


@functools.cache
def problem(tree_name):
    """Start params, target, curvature and phase, as trees of float64 NumPy arrays."""
    rng = np.random.default_rng(len(tree_name) + ord(tree_name[0]))
    spec = TREES[tree_name]
    shape_leaf = lambda x: isinstance(x, tuple)  # noqa: E731

    def draw(fn):
        return jax.tree.map(lambda shape: np.asarray(fn(shape), np.float64), spec, is_leaf=shape_leaf)

    return (
        draw(lambda s: rng.normal(size=s)),
        draw(lambda s: rng.normal(size=s)),
        draw(lambda s: rng.uniform(0.5, 2.0, size=s)),
        draw(lambda s: rng.uniform(0.0, 2 * np.pi, size=s)),
    )


def gradient(xp, params, target, curv, phase, t):
    return jax.tree.map(lambda p, y, c, f: c * (p - y) + 0.1 * xp.sin(0.7 * t + f), params, target, curv, phase)


def loss_value(xp, params, target, curv):
    """The value passed to Polyak's step size (any function of the params would do)."""
    return sum(xp.sum(0.5 * c * (p - y) ** 2) for p, y, c in zip(*map(jax.tree.leaves, (params, target, curv))))


def trajectory(opt, tree_name, apply_updates, with_value=False, steps=STEPS):
    """The params after each of ``steps`` steps, as a tree of ``(steps, ...)`` arrays.

    One jitted step called in a Python loop: compiling it costs less than compiling a scan.
    """
    target, curv, phase = (jax.tree.map(jnp.asarray, x) for x in problem(tree_name)[1:])

    @jax.jit
    def step(p, s, t):
        g = gradient(jnp, p, target, curv, phase, t)
        extra = {"value": loss_value(jnp, p, target, curv)} if with_value else {}
        u, s = opt.update(g, s, p, **extra)
        return apply_updates(p, u), s

    p = jax.tree.map(jnp.asarray, problem(tree_name)[0])
    s = opt.init(p)
    history = []
    for t in range(steps):
        p, s = step(p, s, jnp.asarray(t, jnp.float64))
        history.append(p)
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *history)


def reference_trajectory(step, init, tree_name, steps=STEPS):
    """The NumPy reference: ``step(leaves, grads, state, t, value)`` on the list of leaves, ``t`` from 1."""
    p0, target, curv, phase = problem(tree_name)
    treedef = jax.tree.structure(p0)
    leaves = [x.copy() for x in jax.tree.leaves(p0)]
    state = init(leaves)
    history = []
    for t in range(1, steps + 1):
        params = treedef.unflatten(leaves)
        grads = jax.tree.leaves(gradient(np, params, target, curv, phase, float(t - 1)))
        leaves, state = step(leaves, grads, state, t, loss_value(np, params, target, curv))
        history.append([x.copy() for x in leaves])
    return jax.tree.map(lambda *xs: np.stack(xs), *[treedef.unflatten(h) for h in history])


def assert_trajectories_close(got, want, what, rtol=1e-12, atol=1e-13):
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for path, g in jax.tree_util.tree_flatten_with_path(got)[0]:
        w = functools.reduce(lambda t, k: t[k.key if hasattr(k, "key") else k.idx], path, want)
        assert g.shape == w.shape, f"{what} {jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{what} {jax.tree_util.keystr(path)}")
    # The run went somewhere: the params moved away from where they started.
    assert any(np.max(np.abs(x[-1] - x[0])) > 1e-3 for x in jax.tree.leaves(got)), f"{what}: nothing moved"


# --------------------------------------------------------------------------- #
# NumPy references, written from the papers
# --------------------------------------------------------------------------- #


def adan_ref(lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, wd=0.0, paper=False):
    """Xie et al. (2022), Algorithm 1 in the code's ``b = 1 - beta`` form; ``w`` weighs the difference."""
    w = b2 if paper else 1 - b2

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            m, v, n, prev = state[i]
            d = np.zeros_like(g) if t == 1 else g - prev
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * d
            n = b3 * n + (1 - b3) * (g + w * d) ** 2
            m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
            u = (m_hat + w * v_hat) / (np.sqrt(n_hat + eps_root) + eps) + wd * p
            out.append(p - lr * u)
            state[i] = (m, v, n, g)
        return out, state

    return step, lambda leaves: [tuple(np.zeros_like(p) for _ in range(4)) for p in leaves]


def yogi_ref(lr, b1=0.9, b2=0.999, eps=1e-3, init_value=1e-6, bias_correction=True):
    """Zaheer et al. (2018), Algorithm 2 (plus Adam's bias corrections unless disabled)."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            m, v = state[i]
            m = b1 * m + (1 - b1) * g
            v = v - (1 - b2) * np.sign(v - g**2) * g**2
            m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
            out.append(p - lr * m_hat / (np.sqrt(v_hat) + eps))
            state[i] = (m, v)
        return out, state

    return step, lambda leaves: [(np.full_like(p, init_value), np.full_like(p, init_value)) for p in leaves]


def rprop_ref(lr, eta_minus=0.5, eta_plus=1.2, min_step=1e-6, max_step=50.0, delayed=True):
    """iRprop- (Igel & Husken, 2000); ``delayed`` applies each step one call late, as Optax."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            s, prev_g, pending = state[i]
            c = g * prev_g
            s = np.where(c > 0, np.minimum(s * eta_plus, max_step), np.where(c < 0, np.maximum(s * eta_minus, min_step), s))
            g = np.where(c < 0, 0.0, g)  # after a sign change: no step, and forget the sign
            new_step = s * np.sign(g)
            applied = np.where(c < 0, 0.0, pending) if delayed else new_step
            out.append(p - applied)
            state[i] = (s, g, new_step)
        return out, state

    return step, lambda leaves: [(np.full_like(p, lr), np.zeros_like(p), np.zeros_like(p)) for p in leaves]


# --------------------------------------------------------------------------- #
# The cases: (library constructor, Optax constructor, NumPy reference), by id
# --------------------------------------------------------------------------- #


def _case(name, kwargs, ref=None, tree="A"):
    lib = functools.partial(getattr(jol, name), **kwargs)
    ox = functools.partial(getattr(optax, name), **kwargs)
    return {"lib": lib, "optax": ox, "ref": ref, "tree": tree, "value": False}


CASES = {
    "adan": _case("adan", {"learning_rate": 0.01}, ref=lambda: adan_ref(0.01)),
    "yogi": _case("yogi", {"learning_rate": 0.01}, ref=lambda: yogi_ref(0.01)),
    "rprop": _case("rprop", {"learning_rate": 0.01}, ref=lambda: rprop_ref(0.01)),
}


@functools.cache
def library_trajectory(case_id):
    case = CASES[case_id]
    return trajectory(case["lib"](), case["tree"], jol.apply_updates, with_value=case["value"])


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_numpy_reference_from_the_paper(case_id):
    case = CASES[case_id]
    want = reference_trajectory(*case["ref"](), case["tree"])
    assert_trajectories_close(library_trajectory(case_id), want, f"{case_id} vs NumPy reference", rtol=1e-10)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_optax(case_id):
    case = CASES[case_id]
    want = trajectory(case["optax"](), case["tree"], optax.apply_updates, with_value=case["value"])
    assert_trajectories_close(library_trajectory(case_id), want, f"{case_id} vs Optax")


@pytest.mark.parametrize("ours, theirs", [(jol.ScaleByAdanState, optax.ScaleByAdanState),
                                          (jol.ScaleByRpropState, optax.ScaleByRpropState)])
def test_state_types_have_optax_names_and_fields(ours, theirs):
    assert ours.__name__ == theirs.__name__
    assert ours._fields == theirs._fields
