"""The fused layout: same results as the tree, one leaf per dtype, clear refusals for per-leaf transforms."""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_properties import OPTIMIZERS, build

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
    # What the fused layout saves: every extra leaf of the tree adds kernels of its own (about 4: the
    # norm's squares and their reduction, moments and update; the overflow branch reduces all leaves at once),
    # while the fused program stays at n_one however many leaves it holds.
    assert (n_tree - n_one) / (len(many) - 1) >= 3.5
    # And at 5000 leaves (issue 15's size), built from a layout (no 5000-way concatenation to compile): as many
    # kernels as one leaf of the same 15000 parameters.
    def fused(n_leaves):
        shapes = {f"p{i:04d}": jax.ShapeDtypeStruct((15000 // n_leaves,), jnp.float32) for i in range(n_leaves)}
        return jol.Fused((jnp.ones(15000, jnp.float32),), jol.Layout.of(shapes))

    assert _fusion_count(opt, fused(5000)) == _fusion_count(opt, fused(1))


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


# --------------------------------------------------------------------------- #
# Every optimizer: same results in the fused layout, or a clear refusal
# --------------------------------------------------------------------------- #


def _quietly(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args)


# Optimizers the property table lacks (the table keys name a configuration; these name the constructor).
EXTRA_OPTIMIZERS = {
    "yogi": lambda: jol.yogi(0.1),
    "adan": lambda: jol.adan(0.1, weight_decay=0.01),
    "rprop": lambda: jol.rprop(0.1),
    "optimistic_adam": lambda: _quietly(jol.optimistic_adam, 0.1),  # deprecated (as in Optax): it warns
    "sam": lambda: jol.contrib.sam(jol.sgd(0.1), jol.chain(jol.contrib.normalize(), jol.scale(-0.05))),
    "muon": lambda: jol.contrib.muon(0.1),
    "galore": lambda: jol.contrib.galore(0.1, rank=1),
}

# Elementwise: each parameter's step depends on its own entries and at most on scalars summed over the
# whole tree (global norms, inner products, a loss value), which a fused tree gives alike.
WORKS_FUSED = frozenset({
    "sgd", "sgd_momentum", "sgd_nesterov", "sgd_momentum_dampening", "noisy_sgd", "sign_sgd", "adagrad",
    "adadelta", "rmsprop", "rmsprop_centered_momentum", "adam", "adamw", "amsgrad", "adamax", "adamaxw", "nadam",
    "nadam_momentum_decay", "nadamw", "nadamw_momentum_decay", "radam", "lion", "adabelief", "adopt", "ademamix",
    "simplified_ademamix", "schedule_free_sgd", "schedule_free_adamw", "prodigy", "dadapt_adamw", "dog", "dowg",
    "mechanize_sgd", "cocob", "momo", "momo_adam", "acprop", "madgrad", "signum", "optimistic_gradient_descent",
    "optimistic_adam_v2", "polyak_sgd", "sophia", "chain_clip_adam_schedule", "mars_adamw_global",
    "yogi", "adan", "rprop", "optimistic_adam", "sam",
})
# Per leaf or per matrix (a leaf's own norm, shape or factored moments): the fused layout's flat buffers
# would silently change the algorithm, so these refuse it, naming the public constructor called.
REFUSES_FUSED = {
    "lamb": "lamb",  # trust ratio per leaf
    "lars": "lars",
    "fromage": "fromage",
    "novograd": "novograd",  # second moment per leaf
    "ldog": "scale_by_distance_over_gradients",  # DoG's distance per leaf
    "adafactor": "adafactor",  # factored moments of matrices, per-leaf RMS clipping and parameter scale
    "adafactor_momentum_wd": "adafactor",
    "sm3": "sm3",  # one accumulator per slice of each axis
    "muon": "muon",  # orthogonalises each matrix
    "galore": "galore",  # projects each matrix
    "shampoo": "shampoo",  # Kronecker factors of each matrix
    "soap": "soap",
    "kron": "kron",  # Kronecker factors of each leaf
    "came": "came",  # factored second moment and instability of each matrix, RMS clipping per leaf
    "adam_mini": "adam_mini",  # one second moment per leaf (or per block of a leaf)
    "mars_adamw": "mars_adamw",  # c_t clipped by each tensor's own norm
    "cautious_adamw": "cautious_adamw",  # the mask's mean is per tensor
    "cautious_lion": "cautious_lion",
    "cautious_sgd_momentum": "cautious",
}
# Hyperparameters for the fused comparison. noisy_sgd draws its noise per leaf, so a fused tree gets other
# (equally distributed) draws: compared without noise. sophia's Hutchinson probes are also drawn per leaf, but
# on the table's quadratic every probe gives the same estimate.
FUSED_HPS = {"noisy_sgd": {"eta": 0.0}}
FUSED_STEPS = 4


def _make(name):
    return EXTRA_OPTIMIZERS[name]() if name in EXTRA_OPTIMIZERS else build(name, **FUSED_HPS.get(name, {}))


def _mixed_tree():
    """float32 leaves (a matrix, a vector, a scalar) and a float64 matrix: two fused buffers."""
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    return {
        "w": jax.random.normal(k[0], (4, 3), jnp.float32),
        "b": [jax.random.normal(k[1], (5,), jnp.float32), jnp.asarray(0.5, jnp.float32)],
        "v": jax.random.normal(k[2], (3, 2), jnp.float64),
    }


def _run_steps(opt, params):
    state = opt.init(params)
    for t in range(FUSED_STEPS):
        updates, state = opt.update(_grads(params, t), state, params)
        params = jol.apply_updates(params, updates)
    return params, updates


def test_every_optimizer_is_classified_for_the_fused_layout():
    """A new row in ``test_properties.OPTIMIZERS`` fails here until it is put in one of the two tables."""
    names = set(OPTIMIZERS) | set(EXTRA_OPTIMIZERS)
    assert not WORKS_FUSED & set(REFUSES_FUSED), sorted(WORKS_FUSED & set(REFUSES_FUSED))
    unclassified = names - WORKS_FUSED - set(REFUSES_FUSED)
    assert not unclassified, f"classify for the fused layout (WORKS_FUSED or REFUSES_FUSED): {sorted(unclassified)}"
    assert not (WORKS_FUSED | set(REFUSES_FUSED)) - names, sorted((WORKS_FUSED | set(REFUSES_FUSED)) - names)


@pytest.mark.parametrize("name", sorted(WORKS_FUSED))
def test_elementwise_optimizer_gives_the_same_steps_fused(name):
    opt = _make(name)
    params = _mixed_tree()
    # One compiled program runs both layouts.
    (p_tree, u_tree), (p_fused, u_fused) = jax.jit(
        lambda p: (_run_steps(opt, p), _run_steps(opt, jol.fuse(p)))
    )(params)
    assert isinstance(p_fused, jol.Fused) and isinstance(u_fused, jol.Fused)
    for got, want in ((p_fused.tree(), p_tree), (u_fused.tree(), u_tree)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", sorted(REFUSES_FUSED))
def test_per_leaf_optimizer_refuses_the_fused_layout_by_name(name):
    opt = _make(name)
    fused = jol.fuse(_mixed_tree())
    with pytest.raises(ValueError) as info:
        state = opt.init(fused)
        opt.update(_grads(fused, 0), state, fused)
    message = str(info.value)
    assert REFUSES_FUSED[name] in message and "fused tree" in message, message
