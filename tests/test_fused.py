"""The fused layout: same results as the tree, one leaf per dtype, clear refusals for per-leaf transforms."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol


def _tree(dtype=jnp.float32):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {
        "w": jax.random.normal(k[0], (4, 3), dtype),
        "layers": [jax.random.normal(k[1], (5,), dtype), jnp.asarray(0.5, dtype)],
        "h": jax.random.normal(k[2], (2, 2), jnp.bfloat16),
    }


def _grads(params, t):
    return jax.tree.map(lambda p: (0.7 * p + 0.1 * jnp.cos(0.3 * t)).astype(p.dtype), params)


ELEMENTWISE = {
    "sgd": lambda: jol.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: jol.adagrad(0.1),
    "rmsprop": lambda: jol.rmsprop(0.01, centered=True, momentum=0.5),
    "adam": lambda: jol.adam(1e-2),
    "adamw": lambda: jol.adamw(1e-2, weight_decay=0.1),
    "nadam": lambda: jol.nadam(1e-2, momentum_decay=0.004),
    "radam": lambda: jol.radam(1e-2),
    "lion": lambda: jol.lion(1e-3),
    "chain": lambda: jol.chain(
        jol.clip_by_global_norm(0.5), jol.adamw(jol.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 50))
    ),
}


def test_fuse_round_trip_and_layout():
    params = _tree()
    fused = jol.fuse(params)
    assert isinstance(fused, jol.Fused)
    assert [b.dtype for b in fused.buffers] == [jnp.bfloat16, jnp.float32]  # in leaf order: "h" first
    assert [b.shape for b in fused.buffers] == [(4,), (5 + 1 + 12,)]
    back = jol.unfuse(fused)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert jol.is_fused({"x": fused}) and not jol.is_fused(params)


def test_gradients_come_back_fused():
    params = _tree()
    fused = jol.fuse(params)

    def loss(tree):
        return sum(jnp.sum(jnp.sin(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))

    g_fused = jax.grad(lambda f: loss(f.tree()))(fused)
    g_tree = jax.grad(loss)(params)
    assert isinstance(g_fused, jol.Fused) and g_fused.layout == fused.layout
    for a, b in zip(jax.tree.leaves(g_fused.tree()), jax.tree.leaves(g_tree)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_fused_matches_tree_step_by_step(name):
    opt = ELEMENTWISE[name]()
    params = _tree()
    fused = jol.fuse(params)
    s_tree, s_fused = opt.init(params), opt.init(fused)
    step = jax.jit(opt.update)
    for t in range(30):
        u_tree, s_tree = step(_grads(params, t), s_tree, params)
        u_fused, s_fused = step(jol.fuse(_grads(params, t)), s_fused, fused)
        params = jol.apply_updates(params, u_tree)
        fused = jol.apply_updates(fused, u_fused)
        for a, b in zip(jax.tree.leaves(fused.tree()), jax.tree.leaves(params)):
            assert a.dtype == b.dtype
            tol = 2e-2 if a.dtype == jnp.bfloat16 else 1e-5
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


def test_state_is_fused_and_eval_shape_works():
    fused = jol.fuse(_tree())
    opt = jol.adamw(1e-3)
    state = opt.init(fused)
    assert isinstance(state[0].mu, jol.Fused) and state[0].mu.layout == fused.layout
    shapes = jax.eval_shape(opt.init, fused)
    assert jax.tree.structure(shapes) == jax.tree.structure(state)


def _fusion_count(opt, params):
    state = opt.init(params)

    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return jol.apply_updates(p, u), s

    text = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()
    return len(re.findall(r"\bfusion\(", text))


def test_compiled_step_does_not_grow_with_leaf_count():
    # The same 2000 parameters as 1 leaf, as 200 leaves fused, and as 200 separate leaves.
    one = {"p": jnp.ones(2000)}
    many = {f"p{i:03d}": jnp.ones(10) for i in range(200)}
    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.cosine_decay_schedule(1e-3, 100)))
    n_one = _fusion_count(opt, jol.fuse(one))
    n_fused = _fusion_count(opt, jol.fuse(many))
    n_tree = _fusion_count(opt, many)
    assert n_fused == n_one
    # What the fused layout saves: every extra leaf of the tree adds kernels of its own (about 6:
    # moments, update, norm), while the fused program stays at n_one however many leaves it holds.
    assert (n_tree - n_one) / (len(many) - 1) >= 5


def test_donated_fused_step_runs_in_place():
    fused = jol.fuse(_tree())
    opt = jol.adam(1e-2)
    state = opt.init(fused)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(f, s):
        g = jax.grad(lambda x: sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in jax.tree.leaves(x.tree())))(f)
        u, s = opt.update(g, s, f)
        return jol.apply_updates(f, u), s

    before = float(sum(jnp.sum(jnp.square(b.astype(jnp.float32))) for b in fused.buffers))
    for _ in range(20):
        fused, state = step(fused, state)
    after = float(sum(jnp.sum(jnp.square(b.astype(jnp.float32))) for b in fused.buffers))
    assert after < before


@pytest.mark.parametrize(
    "make",
    [
        lambda: jol.clip_by_norm(1.0),
        lambda: jol.adaptive_grad_clip(0.1),
        lambda: jol.lamb(1e-3),
        lambda: jol.lars(1e-3),
        lambda: jol.masked(jol.add_decayed_weights(1e-2), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        lambda: jol.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        lambda: jol.partition({"a": jol.sgd(1e-3), "b": jol.adam(1e-3)}, lambda p: jax.tree.map(lambda x: "a", p)),
    ],
)
def test_per_leaf_transforms_refuse_a_fused_tree(make):
    fused = jol.fuse(_tree())
    opt = make()
    with pytest.raises(ValueError, match="fused tree"):
        state = opt.init(fused)
        opt.update(fused, state, fused)


def test_uniform_mask_keeps_its_meaning_on_a_fused_tree():
    params = _tree()
    fused = jol.fuse(params)
    opt = jol.masked(jol.add_decayed_weights(0.5), True)
    u, _ = opt.update(jol.fuse(jax.tree.map(jnp.zeros_like, params)), opt.init(fused), fused)
    for a, p in zip(jax.tree.leaves(u.tree()), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a, np.float32), 0.5 * np.asarray(p, np.float32), rtol=1e-2)
