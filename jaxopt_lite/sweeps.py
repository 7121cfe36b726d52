"""Hyperparameter sweeps as one batched JAX program.

Every float hyperparameter of the library's optimizers may be a traced array,
so a whole sweep can run as a single ``jax.jit(jax.vmap(train))`` over a dict
of equal-length 1-D arrays, one entry per hyperparameter. This module builds
such dicts and runs them:

* :func:`grid` — the cartesian product of a few values per axis;
* :func:`random_search` — ``n`` independent draws from :func:`uniform`,
  :func:`log_uniform` or :func:`choice` distributions;
* :func:`run_sweep` — ``jax.jit(jax.vmap(train))(hparams)``, optionally in
  chunks to bound memory;
* :func:`stack` — a list of optimizers (or schedules) of one structure as one
  optimizer whose hyperparameters have a leading batch axis, to pass to
  ``jax.vmap`` or :func:`run_sweep`.

Example::

    def train(h):
        opt = adamw(learning_rate=h["lr"], weight_decay=h["wd"])
        ...  # lax.scan over steps
        return {"val_acc": acc}

    hparams = random_search(jax.random.key(0), 16, lr=log_uniform(1e-4, 1e-1), wd=uniform(0.0, 1e-2))
    metrics = run_sweep(train, hparams)          # each leaf has leading dim 16
    best = int(jnp.argmax(metrics["val_acc"]))

References:
  Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Distribution",
    "choice",
    "grid",
    "log_uniform",
    "random_search",
    "run_sweep",
    "stack",
    "sweep_size",
    "uniform",
]


def _float_dtype():
    return jnp.result_type(float)


def _as_axis(name: str, values: Any) -> jax.Array:
    if isinstance(values, (str, bytes, dict)) or callable(values):
        raise TypeError(f"grid: axis {name!r} must be a 1-D sequence of numbers, got {values!r}")
    arr = jnp.asarray(values)
    arr = jnp.asarray(arr, dtype=arr.dtype)  # drop weak typing (a Python scalar axis)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise ValueError(f"grid: axis {name!r} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"grid: axis {name!r} is empty")
    return arr


def grid(**axes: Sequence[Any] | jax.Array) -> dict[str, jax.Array]:
    """The cartesian product of the given axes, as a dict of equal-length 1-D arrays.

    ``grid(lr=[1e-3, 1e-2], wd=[0.0, 1e-4, 1e-3])`` returns
    ``{"lr": [1e-3, 1e-3, 1e-3, 1e-2, 1e-2, 1e-2], "wd": [0, 1e-4, 1e-3, 0, 1e-4, 1e-3]}``:
    entry ``i`` is the ``i``-th element of ``itertools.product(*axes.values())``
    (the first axis varies slowest). A scalar counts as a one-value axis.
    Values keep their dtype (Python floats give the default float dtype).

    Raises:
      ValueError: if no axis is given, or an axis is empty or not 1-D.
    """
    if not axes:
        raise ValueError("grid: give at least one axis, e.g. grid(learning_rate=[1e-3, 1e-2])")
    arrays = {name: _as_axis(name, values) for name, values in axes.items()}
    sizes = [a.shape[0] for a in arrays.values()]
    index = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
    return {name: a[jnp.asarray(i.ravel())] for (name, a), i in zip(arrays.items(), index)}


# --------------------------------------------------------------------------------------
# Random search
# --------------------------------------------------------------------------------------


class Distribution:
    """A distribution to draw one hyperparameter from: ``sample(key, n) -> (n,) array``."""

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        raise NotImplementedError


def _concrete_float(owner: str, name: str, x: Any) -> float:
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(f"{owner}: {name} must be a concrete number, got {x!r}") from e


@dataclasses.dataclass(frozen=True)
class _Uniform(Distribution):
    low: float
    high: float

    def sample(self, key, n):
        return jax.random.uniform(key, (n,), _float_dtype(), self.low, self.high)


@dataclasses.dataclass(frozen=True)
class _LogUniform(Distribution):
    low: float
    high: float

    def sample(self, key, n):
        dtype = _float_dtype()
        u = jax.random.uniform(key, (n,), dtype, math.log(self.low), math.log(self.high))
        return jnp.clip(jnp.exp(u), self.low, self.high).astype(dtype)


@dataclasses.dataclass(frozen=True)
class _Choice(Distribution):
    values: tuple

    def sample(self, key, n):
        values = jnp.asarray(self.values)
        return values[jax.random.randint(key, (n,), 0, values.shape[0])]


def uniform(low: float, high: float) -> Distribution:
    """Uniform on ``[low, high)`` (needs ``low < high``), in the default float dtype."""
    low, high = _concrete_float("uniform", "low", low), _concrete_float("uniform", "high", high)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"uniform: need finite low < high, got low={low:g}, high={high:g}")
    return _Uniform(low, high)


def log_uniform(low: float, high: float) -> Distribution:
    """Log-uniform on ``[low, high]``: ``exp(U[log low, log high))``; needs ``0 < low < high``.

    The usual prior for scale parameters such as learning rates and weight decays.
    """
    low, high = _concrete_float("log_uniform", "low", low), _concrete_float("log_uniform", "high", high)
    if not (0.0 < low < high and math.isfinite(high)):
        raise ValueError(f"log_uniform: need 0 < low < high < inf, got low={low:g}, high={high:g}")
    return _LogUniform(low, high)


def choice(values: Sequence[Any]) -> Distribution:
    """Uniform over a non-empty 1-D list of values (drawn with replacement; dtype kept)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"choice: values must be a non-empty 1-D sequence, got {values!r}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"choice: values must be numbers, got {values!r}")
    return _Choice(tuple(arr.tolist()))


def _axis_key(key: jax.Array, name: str) -> jax.Array:
    # A stable (process-independent) hash, so each axis's draws depend only on the key and its name.
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def random_search(key: jax.Array, n: int, **distributions: Any) -> dict[str, jax.Array]:
    """``n`` independent random draws of each hyperparameter, as a dict of ``(n,)`` arrays.

    Each keyword gives one hyperparameter: a :class:`Distribution`
    (:func:`uniform`, :func:`log_uniform`, :func:`choice`), a function
    ``f(key, n) -> (n,) array``, or a fixed number (repeated ``n`` times).
    The draws of an axis depend only on ``key`` and the axis name (its key is
    ``fold_in(key, crc32(name))``), so the same call always gives the same
    values, and adding or removing an axis leaves the others unchanged.

    Args:
      key: a JAX PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
      n: the number of configurations, a positive Python int.
      **distributions: one entry per hyperparameter.

    Example: ``random_search(key, 32, learning_rate=log_uniform(1e-4, 1e-1),
    b1=choice([0.8, 0.9, 0.95]), weight_decay=1e-4)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"random_search: n must be a positive int, got {n!r}")
    if not distributions:
        raise ValueError("random_search: give at least one hyperparameter, e.g. learning_rate=log_uniform(1e-4, 1e-1)")
    n = int(n)
    out = {}
    for name, dist in distributions.items():
        if isinstance(dist, Distribution):
            values = dist.sample(_axis_key(key, name), n)
        elif callable(dist):
            values = jnp.asarray(dist(_axis_key(key, name), n))
        elif isinstance(dist, (int, float, np.number)) or (hasattr(dist, "shape") and np.ndim(dist) == 0):
            values = jnp.full((n,), dist, dtype=jnp.asarray(dist).dtype)
        else:
            raise TypeError(
                f"random_search: {name}={dist!r} is not a distribution; use uniform(), log_uniform(), "
                "choice([...]), a function (key, n) -> array, or a fixed number"
            )
        if values.shape != (n,):
            raise ValueError(f"random_search: {name} gave shape {values.shape}, expected ({n},)")
        out[name] = values
    return out


# --------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------


def sweep_size(hparams: Any) -> int:
    """The common leading dimension of all leaves of ``hparams`` (``ValueError`` if they differ)."""
    leaves = jax.tree.leaves(hparams)
    if not leaves:
        raise ValueError("run_sweep: hparams has no arrays")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = jax.tree.map(np.shape, hparams)
        raise ValueError(f"run_sweep: every hyperparameter must have the same leading dimension, got shapes {shapes}")
    return sizes.pop()


def run_sweep(
    train: Callable[..., Any], hparams: Any, *args: Any, batch_size: int | None = None, jit: bool = True
) -> Any:
    """Runs ``train`` once per configuration, batched: ``jax.jit(jax.vmap(train))(hparams, *args)``.

    Args:
      train: a function ``train(h, *args) -> metrics`` where ``h`` is one
        configuration (``hparams`` with the leading axis removed) and
        ``metrics`` any pytree of arrays.
      hparams: a pytree (usually a dict from :func:`grid` or
        :func:`random_search`) whose leaves share a leading dimension ``K``.
      *args: extra arguments shared by all members (data, initial params);
        they are not batched.
      batch_size: if given, run ``batch_size`` configurations at a time
        (``lax.map(..., batch_size=...)``) to bound memory; the results are the same.
      jit: compile the whole sweep (default ``True``). Each call traces afresh.

    Returns:
      ``metrics`` with a leading axis of size ``K``: entry ``i`` is
      ``train(hparams[i], *args)`` up to floating-point reassociation.
    """
    sweep_size(hparams)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"run_sweep: batch_size must be a positive int or None, got {batch_size!r}")

    def batched(h, *a):
        if batch_size is None:
            return jax.vmap(lambda x: train(x, *a))(h)
        return jax.lax.map(lambda x: train(x, *a), h, batch_size=batch_size)

    fn = jax.jit(batched) if jit else batched
    return fn(hparams, *args)


def stack(items: Sequence[Any]) -> Any:
    """Stacks pytrees of one structure along a new leading axis: a batch of optimizers as one.

    Optimizers, schedules and wrappers built by this library are pytrees of
    their numeric hyperparameters, so ``stack([adam(1e-3), adam(1e-2),
    adam(1e-1)])`` is one ``adam`` whose leaves (``learning_rate``, ``b1``, ...)
    have shape ``(3,)``. ``jax.vmap`` over it, or ``run_sweep(train, stacked,
    ...)`` with ``train(opt, ...)`` building nothing, runs all members as one
    program. The static parts (ints such as step counts, bools, strings,
    functions) must be the same in every item: they are the structure.

    Python floats are stacked as arrays of the default float dtype, weakly typed
    as the floats were, so a batched member computes in the dtype its
    unbatched self would.

    Raises:
      ValueError: if ``items`` is empty or two items differ in structure (the
        message shows both structures).
    """
    items = list(items)
    if not items:
        raise ValueError("stack: give at least one item")
    structure = jax.tree.structure(items[0])
    for i, item in enumerate(items[1:], start=1):
        other = jax.tree.structure(item)
        if other != structure:
            raise ValueError(
                f"stack: item {i} differs in structure from item 0 (another optimizer, or a static argument such "
                f"as an int, a bool, a string or a function that differs):\n  item 0: {structure}\n  item {i}: {other}"
            )
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *items)
