"""Tune the learning rate and momentum by gradient descent through training.

Every update rule in jaxopt_lite is a differentiable function of its
hyperparameters, which may be traced arrays. So the loss reached after ``T``
unrolled steps of ``sgd(learning_rate, momentum)`` is a differentiable function
``L_T(learning_rate, momentum)``, and ``jax.grad`` gives its hypergradient by
backpropagating through all ``T`` steps (Maclaurin et al., 2015; Baydin et al.,
2018).

Here the inner problem is a badly conditioned least-squares regression. The
outer loop does gradient descent (the library's own ``sgd``) on
``(log learning_rate, logit momentum)`` to minimise ``log L_T``: the logs keep
the learning rate positive, the momentum in (0, 1), and make the steps
scale-free. The validation loss is measured on held-out data. The first
hypergradient is checked against a central finite difference.

Usage::

    python examples/meta_learning_rate.py            # T = 100 inner steps, 30 outer steps
    python examples/meta_learning_rate.py --quick    # a tiny run (used by the tests)

References:
  Maclaurin, Duvenaud & Adams, "Gradient-based Hyperparameter Optimization
  through Reversible Learning", ICML 2015. Baydin et al., "Online Learning Rate
  Adaptation with Hypergradient Descent", ICLR 2018.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite.aliases import sgd
from jaxopt_lite.base import apply_updates


def make_problem(seed: int = 0, n: int = 256, d: int = 20):
    """Linear regression with feature scales from 0.1 to 3 (condition number ~ 900)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.1, 3.0, d)
    w_true = rng.normal(size=d)

    def sample(m):
        x = rng.normal(size=(m, d)) * scales
        return jnp.asarray(x), jnp.asarray(x @ w_true + 0.1 * rng.normal(size=m))

    return sample(n), sample(n)


def mse(w, x, y):
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def loss_after_training(hyper, data, steps: int):
    """Validation loss after ``steps`` full-batch steps of sgd(lr, momentum) from w = 0."""
    (x_train, y_train), (x_val, y_val) = data
    learning_rate, momentum = jnp.exp(hyper["log_lr"]), jax.nn.sigmoid(hyper["logit_momentum"])
    opt = sgd(learning_rate=learning_rate, momentum=momentum)
    w0 = jnp.zeros(x_train.shape[1], x_train.dtype)

    def step(carry, _):
        w, state = carry
        grads = jax.grad(mse)(w, x_train, y_train)
        updates, state = opt.update(grads, state, w)
        return (apply_updates(w, updates), state), None

    (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)
    return mse(w, x_val, y_val)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner-steps", type=int, default=100, help="T, the unrolled training steps")
    parser.add_argument("--outer-steps", type=int, default=30)
    parser.add_argument("--meta-lr", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true", help="a tiny run: T = 20, 5 outer steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.inner_steps, args.outer_steps = 20, 5

    data = make_problem()
    # Minimise the log of the final loss: its gradient is insensitive to the loss's scale.
    objective = jax.jit(lambda h: jnp.log(loss_after_training(h, data, args.inner_steps)))
    value_and_hypergrad = jax.jit(jax.value_and_grad(objective))

    hyper = {"log_lr": jnp.log(jnp.asarray(1e-3)), "logit_momentum": jnp.asarray(0.0)}  # lr 1e-3, momentum 0.5

    # Check the first hypergradient against a central finite difference.
    _, g = value_and_hypergrad(hyper)
    eps = 1e-3
    for name in hyper:
        plus = {**hyper, name: hyper[name] + eps}
        minus = {**hyper, name: hyper[name] - eps}
        fd = (objective(plus) - objective(minus)) / (2 * eps)
        print(f"d log L_T / d {name}: autodiff {float(g[name]):+.5f}, finite difference {float(fd):+.5f}")

    meta_opt = sgd(learning_rate=args.meta_lr)
    meta_state = meta_opt.init(hyper)
    print(f"\n{'step':>4} {'learning_rate':>14} {'momentum':>9} {'val_loss':>10}")
    history = []
    for i in range(args.outer_steps + 1):
        log_loss, g = value_and_hypergrad(hyper)
        history.append(float(jnp.exp(log_loss)))
        lr, mom = float(jnp.exp(hyper["log_lr"])), float(jax.nn.sigmoid(hyper["logit_momentum"]))
        print(f"{i:4d} {lr:14.4e} {mom:9.4f} {history[-1]:10.5f}")
        if i == args.outer_steps:
            break
        # Clip the hypergradient: near the edge of stability L_T is steep and rough, so
        # once there the outer loop hovers around the best region rather than settling.
        g = jax.tree.map(lambda x: jnp.clip(x, -1.0, 1.0), g)
        updates, meta_state = meta_opt.update(g, meta_state, hyper)
        hyper = apply_updates(hyper, updates)
    best = int(np.argmin(history))
    print(
        f"\nvalidation loss after {args.inner_steps} steps: {history[0]:.5f} at the start, "
        f"{history[best]:.5f} at best (outer step {best})"
    )
    return history


if __name__ == "__main__":
    main()
