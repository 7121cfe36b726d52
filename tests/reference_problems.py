"""Problems the optimizer test files share: the same gradients feed each optimizer and its NumPy reference.

``problem`` and ``grad``: per-entry gradients ``curv * (x - target) + 0.1 sin(k freq)`` that differ per entry
and step; ``least_squares`` and ``final_loss``: an ill-conditioned least-squares problem to compare
convergence speed on.
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
