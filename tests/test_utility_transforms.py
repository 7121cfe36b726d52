"""Small transforms and utilities of issue 8, against NumPy references and Optax on the same inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol
from jaxopt_lite import contrib, transforms

RNG = np.random.default_rng(1)
PARAMS = {"w": jnp.asarray(RNG.normal(size=(2, 3))), "b": jnp.asarray(RNG.normal(size=(3,)))}
GRADS = [jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape)), PARAMS) for _ in range(6)]


def _run(tx, steps=GRADS, params=PARAMS):
    """All the updates of ``tx`` on the gradient sequence, in one jitted scan."""
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *steps)

    def body(state, g):
        u, state = tx.update(g, state, params)
        return state, u

    return jax.jit(lambda s: jax.lax.scan(body, s, stacked))(tx.init(params))


def _assert_trees_close(a, b, rtol=1e-12, atol=1e-14):
    """Same leaves (the two libraries' state classes differ, their leaves must not)."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: o.clip_by_block_rms(0.5),
        lambda o: o.scale_by_param_block_norm(),
        lambda o: o.scale_by_param_block_rms(0.9),
        lambda o: o.normalize_by_update_norm(-0.5),
        lambda o: o.centralize(),
        lambda o: o.chain(o.centralize(), o.clip_by_block_rms(0.3), o.scale_by_param_block_rms(), o.sgd(0.1, 0.9)),
    ],
)
def test_stateless_block_transforms_match_optax(make):
    ours = _run(make(jol))[1]
    theirs = _run(make(optax))[1]
    _assert_trees_close(ours, theirs)


def test_block_transforms_against_numpy():
    g = {k: np.asarray(v) for k, v in GRADS[0].items()}
    p = {k: np.asarray(v) for k, v in PARAMS.items()}
    apply = lambda tx: jax.tree.map(np.asarray, tx.update(GRADS[0], tx.init(PARAMS), PARAMS)[0])  # noqa: E731
    out = apply(jol.clip_by_block_rms(0.5))
    for k in g:
        rms = np.sqrt(np.mean(g[k] ** 2))
        np.testing.assert_allclose(out[k], g[k] / max(1.0, rms / 0.5), rtol=1e-13)
    out = apply(jol.scale_by_param_block_norm(10.0))  # every norm below the floor
    for k in g:
        np.testing.assert_allclose(out[k], g[k] * 10.0, rtol=1e-13)
    out = apply(jol.normalize_by_update_norm(2.0, eps=0.0))
    total = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    for k in g:
        np.testing.assert_allclose(out[k], 2.0 * g[k] / total, rtol=1e-13)
    out = apply(jol.centralize())
    np.testing.assert_allclose(out["w"], g["w"] - g["w"].mean(axis=1, keepdims=True), rtol=1e-13)
    np.testing.assert_array_equal(out["b"], g["b"])
    np.testing.assert_allclose(apply(jol.scale_by_param_block_rms(1e-3))["w"], g["w"] * np.sqrt(np.mean(p["w"] ** 2)))
    with pytest.raises(ValueError, match="scale_by_param_block_norm: params must be passed"):
        jol.scale_by_param_block_norm().update(GRADS[0], jol.EmptyState())
    with pytest.raises(ValueError, match=r"clip_by_block_rms: threshold must be in \(0"):
        jol.clip_by_block_rms(0.0)


def test_per_example_clipping_against_numpy_and_optax():
    per_example = {"w": jnp.asarray(RNG.normal(size=(5, 2, 3))), "b": jnp.asarray(RNG.normal(size=(5, 3)))}
    per_example["b"] = per_example["b"].at[2].set(0.0)
    w, b = np.array(per_example["w"]), np.array(per_example["b"])
    per_example["w"] = per_example["w"].at[2].set(0.0)
    w[2] = 0.0
    norms = np.sqrt((w**2).sum(axis=(1, 2)) + (b**2).sum(axis=1))
    for clip in (0.0, 1.0, np.inf):
        factors = np.minimum(1.0, np.divide(clip, norms, out=np.ones_like(norms), where=norms > 0))
        summed, count = jol.per_example_global_norm_clip(per_example, clip)
        np.testing.assert_allclose(summed["w"], np.tensordot(factors, w, 1), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(summed["b"], np.tensordot(factors, b, 1), rtol=1e-13, atol=1e-15)
        assert int(count) == int(np.sum(factors < 1))
        _assert_trees_close((summed, count), optax.per_example_global_norm_clip(per_example, clip))
    for uniform in (True, False):
        ours = jol.per_example_layer_norm_clip(per_example, 1.3, uniform)
        _assert_trees_close(ours, optax.per_example_layer_norm_clip(per_example, 1.3, uniform))
    with pytest.raises(ValueError, match="per_example_global_norm_clip: every leaf of grads must have the same batch"):
        jol.per_example_global_norm_clip({"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}, 1.0)


def test_conditionality_matches_optax():
    every_other = lambda step: step % 2 == 0  # noqa: E731
    for wrap in ("conditionally_transform", "conditionally_mask"):
        ours = _run(getattr(jol, wrap)(jol.adam(0.1), every_other))
        theirs = _run(getattr(optax, wrap)(optax.adam(0.1), every_other))
        _assert_trees_close(ours[1], theirs[1])
        assert type(ours[0]).__name__ == type(theirs[0]).__name__ and ours[0]._fields == theirs[0]._fields
        assert int(ours[0].step) == len(GRADS)
    updates = _run(jol.conditionally_mask(jol.sgd(1.0), every_other))[1]
    np.testing.assert_array_equal(updates["w"][1::2], 0.0)
    np.testing.assert_allclose(updates["w"][0::2], -np.stack([np.asarray(g["w"]) for g in GRADS[0::2]]))
    by_loss = jol.conditionally_transform(jol.scale(2.0), lambda step, loss: loss > 1.0, forward_extra_args=True)
    state = by_loss.init(PARAMS)
    out, state = by_loss.update(GRADS[0], state, PARAMS, loss=jnp.asarray(2.0))
    np.testing.assert_allclose(out["b"], 2 * GRADS[0]["b"])
    out, state = by_loss.update(GRADS[0], state, PARAMS, loss=jnp.asarray(0.5))
    np.testing.assert_allclose(out["b"], GRADS[0]["b"])
    with pytest.raises(TypeError, match="conditionally_mask: inner is not a GradientTransformation"):
        jol.conditionally_mask(lambda x: x, every_other)


def test_monitoring_matches_optax():
    def make(o):
        return o.chain(
            o.snapshot("norm_before", o.tree.norm),
            o.clip_by_global_norm(1.0),
            o.monitor({"norm_after": o.tree.norm, "ema": o.measure_with_ema(o.tree.norm, 0.9)}),
            o.sgd(0.1),
        )

    def run_loop(tx):
        # A Python loop, not scan: monitor's measurements are empty after init (as Optax's), so the state's
        # structure changes at the first update.
        state, updates = tx.init(PARAMS), []
        for g in GRADS:
            u, state = jax.jit(tx.update)(g, state, PARAMS)
            updates.append(u)
        return state, jax.tree.map(lambda *u: jnp.stack(u), *updates)

    ours, theirs = run_loop(make(jol)), run_loop(make(optax))
    _assert_trees_close(ours, theirs)
    norms = np.array([np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(g))) for g in GRADS])
    assert float(jol.tree.get(ours[0], "norm_before")) == pytest.approx(norms[-1], rel=1e-13)
    clipped = np.minimum(norms, 1.0)
    ema, reference = 0.0, None
    for t, n in enumerate(clipped, 1):
        ema = 0.9 * ema + 0.1 * n
        reference = ema / (1 - 0.9**t)
    assert float(ours[0][2].measurements["ema"]) == pytest.approx(reference, rel=1e-13)
    assert jol.monitor({"n": jol.tree.norm}).init(PARAMS) == jol.MonitorState({}, (jol.EmptyState(),))


def test_privacy_matches_optax():
    per_example = [jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=(4, *p.shape))), PARAMS) for _ in range(3)]
    for make in (lambda o: o.contrib.differentially_private_aggregate(1.0, 0.5, key=3),
                 lambda o: o.contrib.dpsgd(0.1, 1.0, 0.5, seed=3, momentum=0.9)):
        ours = _run(make(jol), per_example)
        theirs = _run(make(optax), per_example)
        _assert_trees_close(jol.tree.unwrap_random_key_data(ours), optax.tree.unwrap_random_key_data(theirs))
    no_noise = contrib.differentially_private_aggregate(1e6, 0.0, key=0)
    out, _ = no_noise.update(per_example[0], no_noise.init(PARAMS))
    _assert_trees_close(out, jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example[0]))


def test_split_real_and_imaginary_matches_optax():
    params = {"z": jnp.array([1.0 + 2.0j, -0.5j]), "r": jnp.array([0.3])}
    grads = [jax.tree.map(lambda p: p * (k + 1) + 0.1j * k, params) for k in range(4)]
    grads = [{"z": g["z"], "r": jnp.real(g["r"])} for g in grads]
    ours = _run(contrib.split_real_and_imaginary(jol.adam(0.1)), grads, params)
    theirs = _run(optax.contrib.split_real_and_imaginary(optax.adam(0.1)), grads, params)
    _assert_trees_close(ours, theirs)
    assert ours[1]["z"].dtype == jnp.complex128 and ours[1]["r"].dtype == jnp.float64


def test_scale_gradient_and_multi_normal():
    f = lambda x, s: jnp.sum(jol.scale_gradient({"a": x}, s)["a"] ** 2)  # noqa: E731
    x = jnp.array([1.0, -2.0])
    for s in (0.0, 1.0, 0.25, jnp.asarray(3.0)):
        np.testing.assert_allclose(jax.grad(f)(x, s), 2 * x * s)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x, 0.5), x)
    dist, ref = jol.multi_normal(jnp.array([0.5, -1.0]), jnp.array([0.1, -0.3])), optax.multi_normal(
        jnp.array([0.5, -1.0]), jnp.array([0.1, -0.3]))
    key = jax.random.PRNGKey(0)
    np.testing.assert_allclose(dist.sample((3,), key), ref.sample((3,), key), rtol=1e-13)
    point = jnp.array([[0.2, 0.1], [1.0, -1.0]])
    np.testing.assert_allclose(dist.log_prob(point), ref.log_prob(point), rtol=1e-13)
    scale = np.exp([0.1, -0.3])
    manual = np.sum(-0.5 * ((np.asarray(point) - [0.5, -1.0]) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi),
                    axis=-1)
    np.testing.assert_allclose(dist.log_prob(point), manual, rtol=1e-13)
    assert [np.asarray(p).tolist() for p in dist.params] == [[0.5, -1.0], [0.1, -0.3]]


def test_namespaces():
    for name in ("clip_by_block_rms", "conditionally_mask", "conditionally_transform", "ConditionallyMaskState",
                 "ConditionallyTransformState", "ConditionFn", "monitor", "MonitorState", "snapshot", "SnapshotState",
                 "measure_with_ema", "per_example_global_norm_clip", "per_example_layer_norm_clip"):
        assert hasattr(optax.transforms, name) and hasattr(transforms, name), name
    for name in ("split_real_and_imaginary", "SplitRealAndImaginaryState", "differentially_private_aggregate",
                 "DifferentiallyPrivateAggregateState", "dpsgd"):
        assert hasattr(optax.contrib, name) and hasattr(contrib, name), name
