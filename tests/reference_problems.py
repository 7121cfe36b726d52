"""Problems the optimizer test files share: the same gradients feed each optimizer and its NumPy reference.

``problem`` and ``grad``: per-entry gradients ``curv * (x - target) + 0.1 sin(k freq)`` that differ per entry
and step, ``trajectory`` an optimizer's parameters along them, and the checks on it shared by the matrix
optimizers' tests (traced hyperparameters: ``vmap`` over the learning rate, gradients through the steps);
``least_squares``, ``linear_regression`` and ``final_loss``: problems to compare convergence on.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_lite as jol


def problem(shapes, seed=0):
    """``x0, curv, target, freq``: dicts of arrays of ``shapes`` (a name -> shape dict)."""
    rng = np.random.default_rng(seed)
    make = lambda: {k: rng.standard_normal(s) for k, s in shapes.items()}
    x0, target, freq = make(), make(), make()
    curv = {k: 0.5 + np.abs(c) for k, c in make().items()}
    return x0, curv, target, freq


def grad(x, k, curv, target, freq, xp=np):
    return curv * (x - target) + 0.1 * xp.sin(k * freq)


def trajectory(opt, shapes, n_steps):
    """The parameters after each of ``n_steps`` steps of ``opt`` on :func:`problem` (traceable: ``opt`` may be built
    from traced hyperparameters), stacked per leaf."""
    x0, curv, target, freq = (jax.tree.map(jnp.asarray, v) for v in problem(shapes))
    x, state = x0, opt.init(x0)
    out = []
    for k in range(n_steps):
        g = jax.tree.map(lambda p, c, t, w, k=k: grad(p, k, c, t, w, jnp), x, curv, target, freq)
        u, state = opt.update(g, state, x)
        x = jol.apply_updates(x, u)
        out.append(x)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def assert_vmap_over_learning_rate_equals_loop(run, hps, lrs):
    """``run(hps)`` (a trajectory) vmapped over ``hps["learning_rate"] in lrs`` equals a loop of jitted runs."""
    lrs = jnp.asarray(lrs)
    looped_run = jax.jit(lambda lr: run({**hps, "learning_rate": lr}))
    batched = jax.jit(jax.vmap(lambda lr: run({**hps, "learning_rate": lr})))(lrs)
    for i, lr in enumerate(lrs):
        looped = looped_run(lr)
        for k in looped:
            np.testing.assert_allclose(np.asarray(batched[k][i]), np.asarray(looped[k]), rtol=1e-12, atol=1e-14)


def assert_hyperparameter_grads_finite(run, hps, nonzero):
    """The gradient of the final parameters' squared norm with respect to every hyperparameter of ``hps`` is finite,
    and not zero for those named in ``nonzero``."""

    def final_loss(h):
        return sum(jnp.sum(v[-1] ** 2) for v in run(h).values())

    grads = jax.jit(jax.grad(final_loss))({k: jnp.asarray(v) for k, v in hps.items()})
    assert all(bool(jnp.isfinite(v)) for v in grads.values()), grads
    assert all(grads[k] != 0 for k in nonzero), grads


def assert_trajectories_close(ours, ref, rtol, what):
    """Every step and leaf within ``rtol`` of the reference, relative to that step's largest entry of the leaf."""
    for k in ref:
        scale = np.max(np.abs(ref[k]), axis=tuple(range(1, ref[k].ndim)), keepdims=True) + 1e-300
        err = np.max(np.abs(ours[k] - ref[k]) / scale)
        assert err <= rtol, f"{what}: leaf {k!r} differs by {err:.3g} (relative to each step's largest entry)"


def linear_regression(seed=0):
    """``params, loss``: a noisy 5 -> 3 linear regression on 64 points, from zero parameters."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((64, 5)))
    w_true, b_true = rng.standard_normal((5, 3)), rng.standard_normal(3)
    y = x @ w_true + b_true + 0.01 * jnp.asarray(rng.standard_normal((64, 3)))
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    return params, (lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))


def least_squares(seed=0):
    """An ill-conditioned multi-output least-squares problem: loss(W) = ||X W - Y||^2 / n, W of shape (8, 4)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 8)) @ np.diag(np.logspace(0, 1.5, 8)) @ np.linalg.qr(rng.standard_normal((8, 8)))[0]
    w_true = rng.standard_normal((8, 4))
    y = x @ w_true + 0.01 * rng.standard_normal((64, 4))
    x, y = jnp.asarray(x), jnp.asarray(y)
    return (lambda w: jnp.mean(jnp.sum((x @ w - y) ** 2, axis=1))), jnp.zeros((8, 4))


def final_loss(opt, loss, w0, steps):
    def body(carry, _):
        w, state = carry
        u, state = opt.update(jax.grad(loss)(w), state, w)
        return (jol.apply_updates(w, u), state), None

    (w, _), _ = jax.lax.scan(body, (w0, opt.init(w0)), None, length=steps)
    return loss(w)
