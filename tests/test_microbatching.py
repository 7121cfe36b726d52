"""``jaxopt_lite.microbatching`` against direct evaluation (NumPy) and Optax's ``optax.microbatching``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol
from jaxopt_lite import microbatching as mb

RNG = np.random.default_rng(2)
X = jnp.asarray(RNG.normal(size=(8, 3)))
Y = jnp.asarray(RNG.normal(size=(8,)))
W = jnp.asarray(RNG.normal(size=(3,)))


def _close(a, b, rtol=1e-12):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-13), a, b)


def test_reshape_batch_axis_is_strided_and_matches_optax():
    x = jnp.arange(24).reshape(2, 12)
    out = mb.reshape_batch_axis(x, 4, axis=1)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[:, 1], np.asarray(x)[:, 1::3])
    np.testing.assert_array_equal(out, optax.microbatching.reshape_batch_axis(x, 4, axis=1))


def _fun(w, x, y):
    residual = x @ w - y
    return {"loss": jnp.sum(residual**2), "pred": x @ w, "count": jnp.sum(jnp.ones_like(y, jnp.int32))}


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_microbatch_accumulators(size):
    full = _fun(W, X, Y)
    acc = {"loss": mb.AccumulationType.SUM, "pred": mb.AccumulationType.CONCAT, "count": mb.AccumulationType.SUM}
    ours = jax.jit(mb.microbatch(_fun, argnums=(1, 2), microbatch_size=size, accumulator=acc))(W, X, Y)
    _close(ours, full)
    theirs = optax.microbatching.microbatch(_fun, argnums=(1, 2), microbatch_size=size,
                                            accumulator={k: getattr(optax.microbatching.AccumulationType, v.name)
                                                         for k, v in acc.items()})(W, X, Y)
    _close(ours, theirs)
    mean = lambda w, x, y: jnp.mean((x @ w - y) ** 2)  # noqa: E731
    for kind in (mb.AccumulationType.MEAN, mb.AccumulationType.RUNNING_MEAN):
        out = mb.microbatch(mean, argnums=1, argnames="y", microbatch_size=size, accumulator=kind)(W, X, y=Y)
        np.testing.assert_allclose(out, np.mean((np.asarray(X) @ np.asarray(W) - np.asarray(Y)) ** 2), rtol=1e-12)


def test_microbatch_options_and_errors():
    assert mb.microbatch(_fun, 1, None) is _fun
    assert jol.microbatch is mb.microbatch
    columns = lambda x: jnp.sum(x, axis=0)  # noqa: E731  # the batch is axis 1 of X.T
    out = mb.microbatch(columns, 0, 2, mb.AccumulationType.CONCAT, in_axes=1)(X.T)
    np.testing.assert_allclose(out, np.asarray(X).sum(axis=1), rtol=1e-13)
    partial = mb.microbatch(lambda x: jnp.sum(x), 0, 2, num_real_microbatches=jnp.asarray(2))(X)
    np.testing.assert_allclose(partial, np.asarray(X)[np.r_[0:8:4, 1:8:4]].sum(), rtol=1e-12)
    custom = mb.Accumulator(init=lambda s: jnp.full(s.shape, -jnp.inf, s.dtype),
                            update=lambda c, v, i: jnp.maximum(c, v), finalize=lambda c: c,
                            aggregate=lambda v: jnp.max(v, axis=0))
    np.testing.assert_allclose(mb.microbatch(lambda x: jnp.max(x), 0, 2, custom)(X), np.max(np.asarray(X)))
    with pytest.raises(ValueError, match="batch size 8 is not divisible by microbatch_size 3"):
        mb.microbatch(_fun, (1, 2), 3)(W, X, Y)
    with pytest.raises(ValueError, match="equal batch sizes"):
        mb.microbatch(_fun, (1, 2), 2)(W, X, Y[:4])
    with pytest.raises(ValueError, match="need floating-point results"):
        mb.microbatch(lambda x: jnp.sum(x > 0), 0, 2, mb.AccumulationType.MEAN)(X)


def test_micro_vmap_matches_vmap_and_optax():
    f = lambda w, x: jnp.tanh(x @ w)  # noqa: E731
    for size in (None, 2, 4):
        out = mb.micro_vmap(f, in_axes=(None, 0), microbatch_size=size)(W, X)
        np.testing.assert_allclose(out, jax.vmap(f, (None, 0))(W, X), rtol=1e-13)
        total = mb.micro_vmap(f, in_axes=(None, 0), microbatch_size=size, accumulator=mb.AccumulationType.SUM)(W, X)
        np.testing.assert_allclose(total, np.sum(np.tanh(np.asarray(X) @ np.asarray(W))), rtol=1e-12)
        theirs = optax.microbatching.micro_vmap(f, in_axes=(None, 0), microbatch_size=size,
                                                accumulator=optax.microbatching.AccumulationType.SUM)(W, X)
        np.testing.assert_allclose(total, theirs, rtol=1e-12)
    with pytest.raises(NotImplementedError, match="out_axes=0"):
        mb.micro_vmap(f, out_axes=1)


def test_micro_grad_clipped_per_example_gradients():
    def loss(w, batch):
        x, y = batch
        return jnp.mean((x @ w - y) ** 2)

    clip = lambda g: g * jnp.minimum(1.0, 1.0 / jnp.linalg.norm(g))  # noqa: E731
    for size in (None, 2):
        grads, aux = jax.jit(mb.micro_grad(loss, microbatch_size=size, transform_fn=clip,
                                           metrics_fn=jnp.linalg.norm))(W, (X, Y))
        per_example = np.stack([2 * (np.asarray(X[i]) @ np.asarray(W) - float(Y[i])) * np.asarray(X[i]) for i in range(8)])
        norms = np.linalg.norm(per_example, axis=1)
        np.testing.assert_allclose(grads, (per_example * np.minimum(1, 1 / norms)[:, None]).sum(0), rtol=1e-12)
        np.testing.assert_allclose(aux.metrics, norms, rtol=1e-12)
        np.testing.assert_allclose(aux.values, (np.asarray(X) @ np.asarray(W) - np.asarray(Y)) ** 2, rtol=1e-12)
        theirs = optax.microbatching.micro_grad(loss, microbatch_size=size, transform_fn=clip,
                                                metrics_fn=jnp.linalg.norm)(W, (X, Y))
        _close(tuple(grads for _ in (0,)) + tuple(aux), (theirs[0],) + tuple(theirs[1]))
