"""The training loops every suite shares: one optimizer step, ``lax.scan`` over steps and epochs.

Everything here is traced once and compiled by the caller (``jax.jit``, or
``jax.jit(jax.vmap(...))`` for a learning-rate sweep).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def make_step(lib, tx, loss_fn: Callable[[Any, Any], jax.Array], extra_args: tuple[str, ...] = ()):
    """``(params, state, batch) -> (params, state, loss)``: one step of ``tx`` on ``loss_fn(params, batch)``.

    ``extra_args`` names what ``tx.update`` also needs (``value``, ``grad``,
    ``value_fn``), e.g. for Polyak step sizes or line searches.
    """

    def step(params, state, batch):
        value, grad = jax.value_and_grad(loss_fn)(params, batch)
        available = {"value": value, "grad": grad, "value_fn": lambda p: loss_fn(p, batch)}
        updates, state = tx.update(grad, state, params, **{k: available[k] for k in extra_args})
        return lib.apply_updates(params, updates), state, value

    return step


def run_steps(step, params, state, batches: Any = None, length: int | None = None, record_params: bool = False):
    """Scans ``step`` over ``batches`` (or ``length`` steps with no data).

    Returns ``(params, state, losses, path)``: ``losses[t]`` is the loss at the
    parameters *before* step ``t``, and so is ``path[t]`` (``None`` unless
    ``record_params``).
    """

    def body(carry, batch):
        params, state = carry
        new_params, state, value = step(params, state, batch)
        return (new_params, state), (value, params if record_params else None)

    (params, state), (losses, path) = jax.lax.scan(body, (params, state), batches, length=length)
    return params, state, losses, path


def epoch_orders(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """``[epoch, step, i]``: the example indices of each mini-batch, reshuffled every epoch.

    Drawn with NumPy outside the program: a sort-based ``jax.random.permutation``
    inside it would make compiling slower than running.
    """
    rng = np.random.default_rng(seed)
    steps = n // batch_size
    return np.stack([rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size) for _ in range(epochs)])


def run_epochs(step, params, state, data: tuple[jax.Array, jax.Array], orders: jax.Array,
               evaluate: Callable[[Any], Any]):
    """Mini-batch epochs over ``data`` in the given ``orders`` (see :func:`epoch_orders`).

    A batch of the whole data set gives full-batch gradient descent. Returns
    ``(params, evals)`` where ``evals`` stacks ``evaluate(params)`` at the start
    and after every epoch (``epochs + 1`` entries).
    """
    x, y = data

    def epoch(carry, order):
        params, state = carry
        params, state, _, _ = run_steps(step, params, state, (x[order], y[order]))
        return (params, state), evaluate(params)

    first = evaluate(params)
    (params, _), evals = jax.lax.scan(epoch, (params, state), orders)
    evals = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, evals)
    return params, evals


def vmap_sweep(lib, train: Callable[..., Any]) -> Callable[..., Any]:
    """``(lrs, *shared) -> train(lr, *shared)`` batched over a vector of learning rates.

    Uses the library's own ``run_sweep`` when it has one (``jaxopt_lite.sweeps``),
    unjitted so that the caller compiles (and times the compile of) the whole program.
    """
    try:
        run_sweep = importlib.import_module(f"{lib.__name__}.sweeps").run_sweep
    except (ImportError, AttributeError):
        return lambda lrs, *shared: jax.vmap(lambda lr: train(lr, *shared))(lrs)
    return lambda lrs, *shared: run_sweep(lambda h, *a: train(h["lr"], *a), {"lr": lrs}, *shared, jit=False)
