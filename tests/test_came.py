"""CAME: 200 float64 steps against a NumPy reference of the paper's Algorithm 1 and against ``came-pytorch``.

The NumPy reference is written from the paper (Luo et al., 2023, arXiv:2307.02047, Algorithm 1): the
factored second moment ``r, c`` of ``g^2 + eps1``, ``V = r c^T / mean(r)`` formed as written (the library
forms ``g sqrt(mean r) / sqrt(r) / sqrt(c)`` instead), RMS clipping, the first moment of the clipped
update, the factored instability ``R, C`` of ``(u_hat - m)^2 + eps2`` and the step ``m / sqrt(S)``; with
``came-pytorch`` 0.1.3's conventions where the paper says nothing: a leaf of two or more axes is factored
over its last two (leading axes are batch axes), and a vector or a scalar keeps an unfactored second
moment and steps by ``m`` (no instability). Weight decay is ``p <- p - lr wd p`` (decoupled, times the
learning rate), as ``came-pytorch``.

``came-pytorch`` (the authors' package) is the oracle: it runs in float64 (its state takes the
gradient's dtype). Both comparisons agree to float64 rounding (relative differences of about 1e-15 after
200 steps); each implementation computes the gradient at its own iterate, so the comparison is of whole
trajectories.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_problems import final_loss, linear_regression
from reference_problems import grad as _grad
from reference_problems import problem as _problem

import jaxopt_lite as jol

N_STEPS = 200
SHAPES = {"w": (5, 3), "b": (3,), "t": (2, 3, 4), "s": ()}
HPS = ("learning_rate", "b1", "b2", "b3", "eps1", "eps2", "clip_threshold", "weight_decay")
DEFAULTS = {"b1": 0.9, "b2": 0.999, "b3": 0.9999, "eps1": 1e-30, "eps2": 1e-16, "clip_threshold": 1.0}
CONFIGS = [
    {**DEFAULTS, "learning_rate": 1e-2, "weight_decay": 0.1},  # the paper's defaults, decoupled decay
    # Other betas, large epsilons, no clipping ever
    {
        "learning_rate": 3e-3,
        "b1": 0.8,
        "b2": 0.99,
        "b3": 0.999,
        "eps1": 1e-3,
        "eps2": 1e-4,
        "clip_threshold": 1e6,
        "weight_decay": 0.0,
    },
    {**DEFAULTS, "learning_rate": 1e-2, "clip_threshold": 0.3, "weight_decay": 0.01},  # clipping binds every step
]


def _run_ours(opt, shapes=SHAPES, n_steps=N_STEPS):
    """The parameters after each step (a jitted ``lax.scan``), float64."""
    x0, curv, target, freq = (jax.tree.map(jnp.asarray, v) for v in _problem(shapes))

    def body(carry, k):
        x, state = carry
        g = jax.tree.map(lambda *a: _grad(*a[:1], k, *a[1:], xp=jnp), x, curv, target, freq)
        updates, state = opt.update(g, state, x)
        x = jol.apply_updates(x, updates)
        return (x, state), x

    run = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), jnp.arange(n_steps, dtype=jnp.float64))[1])
    return jax.tree.map(np.asarray, run(x0))


def _reference(hps, shapes=SHAPES, n_steps=N_STEPS):
    """The paper's Algorithm 1 in NumPy (came-pytorch's conventions for vectors, scalars and batch axes)."""
    x, curv, target, freq = _problem(shapes)
    lr, b1, b2, b3 = hps["learning_rate"], hps["b1"], hps["b2"], hps["b3"]
    eps1, eps2, d, wd = hps["eps1"], hps["eps2"], hps["clip_threshold"], hps["weight_decay"]
    m = {k: np.zeros(s) for k, s in shapes.items()}
    r = {k: np.zeros(s[:-1]) for k, s in shapes.items() if len(s) >= 2}
    c = {k: np.zeros(s[:-2] + s[-1:]) for k, s in shapes.items() if len(s) >= 2}
    rr, cc = {k: np.zeros_like(v) for k, v in r.items()}, {k: np.zeros_like(v) for k, v in c.items()}
    v = {k: np.zeros(s) for k, s in shapes.items() if len(s) < 2}

    def factored(row, col):  # R C^T / (1^T R), per slice of the leading axes
        return row[..., :, None] * col[..., None, :] / row.mean(axis=-1)[..., None, None]

    history = []
    for k in range(n_steps):
        new = {}
        for key in shapes:
            g = _grad(x[key], float(k), curv[key], target[key], freq[key])
            g2 = g**2 + eps1
            if key in r:
                r[key] = b2 * r[key] + (1 - b2) * g2.mean(axis=-1)
                c[key] = b2 * c[key] + (1 - b2) * g2.mean(axis=-2)
                u = g / np.sqrt(factored(r[key], c[key]))
            else:
                v[key] = b2 * v[key] + (1 - b2) * g2
                u = g / np.sqrt(v[key])
            u = u / max(1.0, np.sqrt(np.mean(u**2)) / d)
            m[key] = b1 * m[key] + (1 - b1) * u
            if key in r:
                instability = (u - m[key]) ** 2 + eps2
                rr[key] = b3 * rr[key] + (1 - b3) * instability.mean(axis=-1)
                cc[key] = b3 * cc[key] + (1 - b3) * instability.mean(axis=-2)
                step = m[key] / np.sqrt(factored(rr[key], cc[key]))
            else:
                step = m[key]
            new[key] = x[key] - lr * (step + wd * x[key])
        x = new
        history.append(x)
    return history


def _max_relative_difference(ours, history):
    worst = 0.0
    for k, want in enumerate(history):
        for key, w in want.items():
            got = ours[key][k]
            worst = max(worst, float(np.max(np.abs(got - w)) / max(np.max(np.abs(w)), 1e-300)))
    return worst


def test_matches_the_papers_algorithm_step_by_step():
    """200 float64 steps of a matrix, a vector, a 2x3x4 tensor and a scalar, three configurations."""
    for hps in CONFIGS:
        ours = _run_ours(jol.came(**hps))
        history = _reference(hps)
        worst = _max_relative_difference(ours, history)
        assert worst < 1e-13, (hps, worst)
        moved = max(float(np.max(np.abs(ours[key][-1] - ours[key][0]))) for key in SHAPES)
        assert moved > 1e-2, hps  # the steps were not all negligible


def test_matches_came_pytorch():
    """``came_pytorch.CAME`` in float64: the authors' implementation, its conventions matched."""
    torch = pytest.importorskip("torch")
    came_pytorch = pytest.importorskip("came_pytorch")
    for hps in CONFIGS[::2]:
        x0, curv, target, freq = _problem(SHAPES)
        tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in x0.items()}
        oracle = came_pytorch.CAME(
            list(tensors.values()),
            lr=hps["learning_rate"],
            eps=(hps["eps1"], hps["eps2"]),
            clip_threshold=hps["clip_threshold"],
            betas=(hps["b1"], hps["b2"], hps["b3"]),
            weight_decay=hps["weight_decay"],
        )
        history = []
        for k in range(N_STEPS):
            for key, p in tensors.items():
                p.grad = torch.as_tensor(_grad(p.detach().numpy(), float(k), curv[key], target[key], freq[key]))
            oracle.step()
            history.append({key: p.detach().numpy().copy() for key, p in tensors.items()})
        worst = _max_relative_difference(_run_ours(jol.came(**hps)), history)
        assert worst < 1e-13, (hps, worst)


def test_state_layout_memory_and_eval_shape():
    params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    opt = jol.came(1e-2)
    state = opt.init(params)[0]
    assert isinstance(state, jol.CameState)
    shapes = lambda tree: {k: tuple(x.shape) for k, x in tree.items()}
    assert shapes(state.mu) == SHAPES
    assert shapes(state.v_row) == {"w": (5,), "b": (0,), "t": (2, 3), "s": (0,)}
    assert shapes(state.v_col) == {"w": (3,), "b": (0,), "t": (2, 4), "s": (0,)}
    assert shapes(state.res_row) == shapes(state.v_row) and shapes(state.res_col) == shapes(state.v_col)
    assert shapes(state.v) == {"w": (0,), "b": (3,), "t": (0,), "s": ()}
    # Memory: m plus 2 (n + m) per factored slice, 2 per entry of a vector or scalar.
    n_state = sum(x.size for x in jax.tree.leaves(state)) - 1  # less the count
    assert n_state == 15 + 2 * (5 + 3) + 3 * 2 + 24 + 2 * 2 * (3 + 4) + 2
    abstract = jax.eval_shape(opt.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(opt.init(params))
    for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(opt.init(params))):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


def test_loss_decreases_on_linear_regression():
    params, loss = linear_regression()
    final = jax.jit(lambda: final_loss(jol.came(1e-2, weight_decay=1e-4), loss, params, 300))()
    assert float(final) < 0.02 * float(loss(params)), (float(loss(params)), float(final))


def test_traced_hyperparameters_and_vmap_over_the_learning_rate():
    params, loss = linear_regression(1)
    hps = {
        "learning_rate": 1e-2,
        "b1": 0.8,
        "b2": 0.99,
        "b3": 0.999,
        "eps1": 1e-8,
        "eps2": 1e-10,
        "clip_threshold": 0.5,
        "weight_decay": 1e-3,
    }
    concrete = float(jax.jit(lambda: final_loss(jol.came(**hps), loss, params, 20))())
    traced = jax.jit(lambda h: final_loss(jol.came(**h), loss, params, 20))({k: jnp.asarray(v) for k, v in hps.items()})
    np.testing.assert_allclose(float(traced), concrete, rtol=1e-12)

    lrs = jnp.asarray([1e-3, 1e-2, 3e-2])
    batched = jax.jit(jax.vmap(lambda lr: final_loss(jol.came(lr), loss, params, 20)))(lrs)
    looped = [float(jax.jit(lambda lr=lr: final_loss(jol.came(float(lr)), loss, params, 20))()) for lr in lrs]
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-12)
    assert len(set(looped)) == 3

    # The optimizer as a jitted function's argument: one compilation for two learning rates.
    run = jax.jit(lambda opt: final_loss(opt, loss, params, 5))
    run(jol.came(1e-2)), run(jol.came(2e-2))
    assert run._cache_size() == 1


def test_underflowing_row_statistics_and_zero_size_leaves_stay_finite():
    """A row of zeros next to rows of 1e15 (``r / mean(r)`` underflows in float32) and a zero-size leaf."""
    grads = {"w": jnp.asarray([[0.0, 0.0, 0.0], [1e15, -1e15, 1e15]], jnp.float32), "e": jnp.zeros((2, 0, 2))}
    params = jax.tree.map(jnp.zeros_like, grads)
    opt = jol.came(1e-2)
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
    for x in jax.tree.leaves((updates, state)):
        assert bool(jnp.all(jnp.isfinite(x)))
    assert bool(jnp.all(updates["w"][0] == 0)) and bool(jnp.all(updates["w"][1] != 0))


def test_errors_name_came():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"^came: .*fused tree"):
        jol.came(1e-2).init(jol.fuse(params))
    with pytest.raises(ValueError, match=r"^came: .*complex parameters are not supported"):
        jol.came(1e-2).init({"w": jnp.ones((2, 2), jnp.complex64)})
    with pytest.raises(ValueError, match=r"^came: .*b3 must be in \[0, 1\)"):
        jol.came(1e-2, b3=1.0)
    with pytest.raises(ValueError, match=r"^came: .*clip_threshold must be in \(0, inf\)"):
        jol.came(1e-2, clip_threshold=0.0)
    with pytest.raises(ValueError, match=r"^came: .*state"):
        jol.came(1e-2).update(params, jol.adam(1e-2).init(params), params)
