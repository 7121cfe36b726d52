"""Train K small MLPs at once, one per (learning rate, weight decay), and keep the best.

Every hyperparameter of ``jaxopt_lite.aliases.adamw`` may be a traced array, so
a whole hyperparameter sweep is one program: ``train(h)`` trains one MLP with
``lax.scan`` over minibatch steps, and ``jax.jit(jax.vmap(train))`` (done by
:func:`jaxopt_lite.sweeps.run_sweep`) trains all K of them in lock step, on the
same minibatches and from the same initial weights, so only the
hyperparameters differ. The best configuration is picked by validation
accuracy and, as a check, trained again on its own.

Data: scikit-learn's bundled ``digits`` (1797 8x8 images, 10 classes; no
download). Runs in a few seconds on a CPU.

Usage::

    python examples/sweep_mlp.py                       # 16 random configurations, 600 steps
    python examples/sweep_mlp.py --search grid         # a 4 x 4 grid instead
    python examples/sweep_mlp.py --quick               # a tiny run (used by the tests)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from jaxopt_lite.aliases import adamw
from jaxopt_lite.base import apply_updates
from jaxopt_lite.sweeps import grid, log_uniform, random_search, run_sweep


def load_data(seed: int = 0, n_val: int = 500):
    """Digits scaled to [0, 1], split into train and validation sets at random."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    val, train = perm[:n_val], perm[n_val:]
    return (jnp.asarray(x[train]), jnp.asarray(y[train])), (jnp.asarray(x[val]), jnp.asarray(y[val]))


def init_mlp(key, sizes=(64, 128, 10)):
    """A ReLU MLP with LeCun-normal weights and zero biases."""
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (n_in, n_out), jnp.float32) / np.sqrt(n_in)
        params.append({"w": w, "b": jnp.zeros(n_out, jnp.float32)})
    return params


def apply_mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(params, x, y):
    logits = apply_mlp(params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(apply_mlp(params, x), axis=1) == y)


def make_train(data, steps: int, batch_size: int, seed: int):
    """Returns ``train(h) -> metrics`` for one configuration ``h = {"learning_rate", "weight_decay"}``."""
    (x_train, y_train), (x_val, y_val) = data
    params0 = init_mlp(jax.random.key(seed))
    # The same minibatch indices for every member of the sweep (a fair comparison).
    batches = jax.random.randint(jax.random.key(seed + 1), (steps, batch_size), 0, x_train.shape[0])

    def train(h):
        # Weight decay on the weight matrices only, not the biases.
        opt = adamw(
            learning_rate=h["learning_rate"],
            weight_decay=h["weight_decay"],
            mask=lambda p: jax.tree.map(lambda leaf: leaf.ndim > 1, p),
        )

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(cross_entropy)(params, x_train[idx], y_train[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params0, opt.init(params0)), batches)
        return {
            "train_loss": jnp.mean(losses[-max(1, steps // 10) :]),
            "val_loss": cross_entropy(params, x_val, y_val),
            "val_accuracy": accuracy(params, x_val, y_val),
        }

    return train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", choices=["random", "grid"], default="random")
    parser.add_argument("--num-configs", type=int, default=16, help="K for random search (grid: 4 x 4)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny run: 4 configurations, 30 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_configs, args.steps = 4, 30

    if args.search == "grid":
        side = 2 if args.quick else 4
        hparams = grid(
            learning_rate=np.geomspace(3e-4, 3e-1, side).tolist(), weight_decay=np.geomspace(1e-4, 1e-1, side).tolist()
        )
    else:
        hparams = random_search(
            jax.random.key(args.seed),
            args.num_configs,
            learning_rate=log_uniform(1e-4, 1.0),
            weight_decay=log_uniform(1e-5, 1.0),
        )
    k = hparams["learning_rate"].shape[0]

    data = load_data(args.seed)
    train = make_train(data, args.steps, args.batch_size, args.seed)

    start = time.perf_counter()
    metrics = jax.block_until_ready(run_sweep(train, hparams))  # one jit(vmap(train)) program
    elapsed = time.perf_counter() - start
    print(f"trained {k} MLPs x {args.steps} steps in one program: {elapsed:.1f} s (including compilation)\n")

    order = np.argsort(-np.asarray(metrics["val_accuracy"]), kind="stable")
    print(f"{'learning_rate':>14} {'weight_decay':>13} {'train_loss':>11} {'val_loss':>9} {'val_acc':>8}")
    for i in order:
        print(
            f"{float(hparams['learning_rate'][i]):14.3e} {float(hparams['weight_decay'][i]):13.3e} "
            f"{float(metrics['train_loss'][i]):11.4f} {float(metrics['val_loss'][i]):9.4f} "
            f"{float(metrics['val_accuracy'][i]):8.4f}"
        )

    best = int(order[0])
    best_h = {name: values[best] for name, values in hparams.items()}
    alone = jax.jit(train)(best_h)  # the same configuration, trained on its own
    print(
        f"\nbest: learning_rate={float(best_h['learning_rate']):.3e}, "
        f"weight_decay={float(best_h['weight_decay']):.3e}, val_accuracy={float(metrics['val_accuracy'][best]):.4f}"
    )
    # Batched and single runs do the same arithmetic up to float32 reassociation, which can
    # drift a little over hundreds of steps (tests/test_sweeps.py checks this in float64).
    print(
        f"retrained alone: val_accuracy={float(alone['val_accuracy']):.4f}, val_loss={float(alone['val_loss']):.4f} "
        f"(in the sweep: {float(metrics['val_loss'][best]):.4f})"
    )
    return metrics, hparams


if __name__ == "__main__":
    main()
