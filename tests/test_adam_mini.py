"""Adam-mini: 200 float64 steps against a NumPy reference of the paper's algorithm, and against
``pytorch_optimizer.AdamMini`` on a toy Transformer-like model.

The NumPy reference is written from the paper (Zhang et al., 2024, arXiv:2406.16793, Algorithm 1): Adam's
first moment per parameter, one second moment per block, ``v_b <- b2 v_b + (1-b2) mean_{i in b}(g_i^2)``,
Adam's bias corrections, ``eps`` outside the root, and decoupled weight decay times the learning rate.
It runs for three partitions: each leaf one block (the default), one block per row of each matrix
(``adam_mini_row_blocks``), and a custom ``block_fn`` mixing per-parameter blocks, blocks along a middle
axis and whole leaves; the parameters are a 5x3 matrix, a vector, a 2x3x4 tensor, a scalar and a complex
2x2 matrix (``|g|^2``). Agreement is to float64 rounding (about 1e-15 relative after 200 steps).

Oracle: ``pytorch_optimizer.AdamMini`` (4.1.0), which follows the authors' code (``zyushun/Adam-mini``):
names containing ``embed``/``embd``/``wte``/``lm_head.weight``/``output.weight`` get full Adam,
``q_proj.weight``/``k_proj.weight``/``wq.weight``/``wk.weight`` one block per head of
``num_embeds**2 / num_heads`` entries, every other parameter one block, and names containing ``norm`` no
weight decay. With ``num_heads = num_embeds`` a head is one row of the ``(out, in)`` weight, which is what
``adam_mini_partition()`` (its defaults) gives the same names; the ``norm`` exemption is a ``mask``. It
keeps its moments in float32 whatever the parameters' dtype (an explicit cast), so this comparison runs in
float32: gradients are a fixed random sequence (not a function of the iterate), and the parameters agree
to about 1e-5 after 200 steps (float32 rounding accumulated over the steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_problems import final_loss, linear_regression
from reference_problems import grad as _grad

import jaxopt_lite as jol

N_STEPS = 200
SHAPES = {"w": (5, 3), "b": (3,), "t": (2, 3, 4), "s": (), "c": (2, 2)}


def _mixed_blocks(path, leaf):
    """Per-parameter blocks for ``w``, blocks along the middle axis of ``t``, whole leaves otherwise."""
    name = jax.tree_util.keystr(path)
    return {"['w']": (), "['t']": (0, 2)}.get(name)


PARTITIONS = {  # name -> (block_fn, {leaf: reduced axes})
    "whole_leaf": (None, {"w": (0, 1), "b": (0,), "t": (0, 1, 2), "s": (), "c": (0, 1)}),
    "rows": (jol.adam_mini_row_blocks, {"w": (1,), "b": (0,), "t": (1, 2), "s": (), "c": (1,)}),
    "mixed": (_mixed_blocks, {"w": (), "b": (0,), "t": (0, 2), "s": (), "c": (0, 1)}),
}
HPS = {"learning_rate": 1e-2, "b1": 0.8, "b2": 0.99, "eps": 1e-6, "weight_decay": 0.1}


def _problem(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)

    def make():
        out = {k: rng.standard_normal(s) for k, s in shapes.items()}
        if "c" in out:
            out["c"] = out["c"] + 1j * rng.standard_normal(shapes["c"])
        return out

    x0, target, freq = make(), make(), make()
    curv = {k: 0.5 + np.abs(c) for k, c in make().items()}
    return x0, curv, target, freq


def _run_ours(opt, n_steps=N_STEPS):
    x0, curv, target, freq = (jax.tree.map(jnp.asarray, v) for v in _problem())

    def body(carry, k):
        x, state = carry
        g = jax.tree.map(lambda *a: _grad(*a[:1], k, *a[1:], xp=jnp), x, curv, target, freq)
        updates, state = opt.update(g, state, x)
        x = jol.apply_updates(x, updates)
        return (x, state), x

    run = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), jnp.arange(n_steps, dtype=jnp.float64))[1])
    return jax.tree.map(np.asarray, run(x0))


def _reference(axes, hps=HPS, n_steps=N_STEPS):
    """The paper's Algorithm 1 in NumPy: ``axes[leaf]`` are the axes each block of that leaf reduces."""
    x, curv, target, freq = _problem()
    lr, b1, b2, eps, wd = (hps[k] for k in ("learning_rate", "b1", "b2", "eps", "weight_decay"))
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros(np.mean(np.zeros(SHAPES[k]), axis=axes[k], keepdims=True).shape) for k in x}
    history = []
    for k in range(n_steps):
        t = k + 1
        new = {}
        for key in x:
            g = _grad(x[key], float(k), curv[key], target[key], freq[key])
            m[key] = b1 * m[key] + (1 - b1) * g
            v[key] = b2 * v[key] + (1 - b2) * np.mean(np.abs(g) ** 2, axis=axes[key], keepdims=True)
            m_hat, v_hat = m[key] / (1 - b1**t), v[key] / (1 - b2**t)
            new[key] = x[key] - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * x[key])
        x = new
        history.append(x)
    return history


def _max_relative_difference(ours, history):
    worst = 0.0
    for k, want in enumerate(history):
        for key, w in want.items():
            worst = max(worst, float(np.max(np.abs(ours[key][k] - w)) / max(np.max(np.abs(w)), 1e-300)))
    return worst


def test_matches_the_papers_algorithm_step_by_step():
    """200 float64 steps, three partitions, a complex leaf among the real ones."""
    finals = {}
    for name, (block_fn, axes) in PARTITIONS.items():
        ours = _run_ours(jol.adam_mini(**HPS, block_fn=block_fn))
        worst = _max_relative_difference(ours, _reference(axes))
        assert worst < 1e-13, (name, worst)
        finals[name] = ours["w"][-1]
    # The partitions give different trajectories (the blocks matter).
    assert not np.allclose(finals["whole_leaf"], finals["rows"])
    assert not np.allclose(finals["rows"], finals["mixed"])


def _toy_model_tree(named):
    """``{"q_proj": {"weight": ...}, ...}`` from PyTorch's ``"q_proj.weight"`` names."""
    tree = {}
    for name, value in named:
        module, leaf = name.split(".")
        tree.setdefault(module, {})[leaf] = value
    return tree


def test_matches_pytorch_optimizer_adam_mini_in_float32():
    torch = pytest.importorskip("torch")
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    if not hasattr(pytorch_optimizer, "AdamMini"):
        pytest.skip("this pytorch_optimizer has no AdamMini")
    torch.manual_seed(0)
    dim = 4

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(7, dim)  # full Adam
            self.q_proj = torch.nn.Linear(dim, dim, bias=False)  # one block per head = per row here
            self.k_proj = torch.nn.Linear(dim, dim, bias=False)
            self.mlp = torch.nn.Linear(dim, 2 * dim)  # one block per tensor
            self.norm = torch.nn.LayerNorm(dim)  # one block per tensor, no weight decay

    model = Toy()
    lr, wd = 1e-2, 0.1
    oracle = pytorch_optimizer.AdamMini(model, lr=lr, weight_decay=wd, num_embeds=dim, num_heads=dim, eps=1e-8)
    params = _toy_model_tree((n, jnp.asarray(p.detach().numpy())) for n, p in model.named_parameters())
    mask = {module: {leaf: "norm" not in module for leaf in leaves} for module, leaves in params.items()}
    opt = jol.adam_mini(lr, weight_decay=wd, mask=mask, block_fn=jol.adam_mini_partition())
    state = opt.init(params)
    nu = state[0].nu
    assert nu["wte"]["weight"].shape == (7, dim) and nu["q_proj"]["weight"].shape == (dim,)
    assert nu["mlp"]["weight"].shape == () and nu["norm"]["bias"].shape == ()
    step = jax.jit(opt.update)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(N_STEPS):
        grads = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = torch.as_tensor(grads[n])
        oracle.step()
        updates, state = step(_toy_model_tree((n, jnp.asarray(g)) for n, g in grads.items()), state, params)
        params = jol.apply_updates(params, updates)
        for n, p in model.named_parameters():
            module, leaf = n.split(".")
            worst = max(worst, float(np.max(np.abs(np.asarray(params[module][leaf]) - p.detach().numpy()))))
    assert worst < 5e-5, worst  # measured: 8e-6


def test_state_layout_memory_and_eval_shape():
    params = {k: jnp.zeros(s) for k, s in SHAPES.items() if k != "c"}
    for block_fn, expected in [
        (None, {"w": (), "b": (), "t": (), "s": ()}),
        (jol.adam_mini_row_blocks, {"w": (5,), "b": (), "t": (2,), "s": ()}),
        (_mixed_blocks, {"w": (5, 3), "b": (), "t": (3,), "s": ()}),
    ]:
        opt = jol.adam_mini(1e-2, block_fn=block_fn)
        state = opt.init(params)[0]
        assert isinstance(state, jol.AdamMiniState)
        assert {k: tuple(x.shape) for k, x in state.nu.items()} == expected
        assert jax.tree.map(jnp.shape, state.mu) == jax.tree.map(jnp.shape, params)
        abstract = jax.eval_shape(opt.init, params)
        for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(opt.init(params))):
            assert (a.shape, a.dtype) == (b.shape, b.dtype)
    # Memory of the default partition: one number per parameter and one per leaf (and the count).
    state = jol.adam_mini(1e-2).init(params)
    assert sum(x.size for x in jax.tree.leaves(state)) == 15 + 3 + 24 + 1 + 4 + 1


def test_partition_by_name():
    part = jol.adam_mini_partition()
    key = jax.tree_util.DictKey
    matrix, vector = jnp.zeros((6, 4)), jnp.zeros(6)
    assert part((key("model"), key("wte"), key("embedding")), matrix) == ()
    assert part((key("lm_head"), key("kernel")), matrix) == ()
    assert part((key("layer_0"), key("q_proj"), key("weight")), matrix) == (1,)
    assert part((key("layer_0"), key("q_proj"), key("bias")), vector) is None  # vectors: one block
    assert part((key("layer_0"), key("mlp"), key("weight")), matrix) is None
    flax = jol.adam_mini_partition(per_row=("query", "key"), block_axes=1)  # (embed, heads, head_dim) kernels
    assert flax((key("attn"), key("query"), key("kernel")), jnp.zeros((8, 2, 4))) == (0, 2)  # one block per head
    by_predicate = jol.adam_mini_partition(per_parameter=lambda path, leaf: leaf.ndim == 2, per_row=())
    assert by_predicate((), matrix) == () and by_predicate((), vector) is None
    # Equal partitions compare equal: an optimizer rebuilt with an equal one is not compiled again.
    assert jol.adam_mini_partition() == part
    params = {"q_proj": jnp.ones((3, 2)), "b": jnp.ones(2)}
    run = jax.jit(lambda opt, p: opt.update(p, opt.init(p), p)[0])
    run(jol.adam_mini(1e-2, block_fn=jol.adam_mini_partition()), params)
    run(jol.adam_mini(2e-2, block_fn=jol.adam_mini_partition()), params)
    assert run._cache_size() == 1


def test_loss_decreases_on_linear_regression():
    params, loss = linear_regression()
    for block_fn in (None, jol.adam_mini_row_blocks):
        final = jax.jit(lambda f=block_fn: final_loss(jol.adam_mini(3e-2, block_fn=f), loss, params, 300))()
        assert float(final) < 0.02 * float(loss(params)), (block_fn, float(loss(params)), float(final))


def test_traced_hyperparameters_and_vmap_over_the_learning_rate():
    params, loss = linear_regression(1)
    hps = {"learning_rate": 1e-2, "b1": 0.8, "b2": 0.99, "eps": 1e-6, "weight_decay": 1e-3}
    concrete = float(jax.jit(lambda: final_loss(jol.adam_mini(**hps), loss, params, 20))())
    traced = jax.jit(lambda h: final_loss(jol.adam_mini(**h), loss, params, 20))(
        {k: jnp.asarray(v) for k, v in hps.items()}
    )
    np.testing.assert_allclose(float(traced), concrete, rtol=1e-12)

    lrs = jnp.asarray([1e-3, 1e-2, 3e-2])
    batched = jax.jit(jax.vmap(lambda lr: final_loss(jol.adam_mini(lr), loss, params, 20)))(lrs)
    looped = [float(jax.jit(lambda lr=lr: final_loss(jol.adam_mini(float(lr)), loss, params, 20))()) for lr in lrs]
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-12)
    assert len(set(looped)) == 3


def test_errors_name_adam_mini():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"^adam_mini: .*fused tree"):
        jol.adam_mini(1e-2).init(jol.fuse(params))
    with pytest.raises(
        ValueError, match=r"^adam_mini: .*block_fn returned axes \(2,\) for parameter \['b'\] of shape \(2,\)"
    ):
        jol.adam_mini(1e-2, block_fn=lambda path, leaf: (2,)).init(params)
    with pytest.raises(ValueError, match=r"^adam_mini: .*repeated axes"):
        jol.adam_mini(1e-2, block_fn=lambda path, leaf: (0, -leaf.ndim) if leaf.ndim else None).init(params)
    with pytest.raises(TypeError, match=r"^adam_mini: .*block_fn must return None or a tuple of axes"):
        jol.adam_mini(1e-2, block_fn=lambda path, leaf: "rows").init(params)
    with pytest.raises(TypeError, match=r"^adam_mini: .*block_fn must be None or a function"):
        jol.adam_mini(1e-2, block_fn=(0,))
    with pytest.raises(ValueError, match=r"^adam_mini: .*b2 must be in \[0, 1\)"):
        jol.adam_mini(1e-2, b2=1.0)
    # A state made with other blocks is refused, naming the leaf.
    state = jol.adam_mini(1e-2, block_fn=jol.adam_mini_row_blocks).init(params)
    with pytest.raises(ValueError, match=r"^adam_mini: .*\['w'\] has shape \(3,\), but block_fn's blocks give \(\)"):
        jol.adam_mini(1e-2).update(params, state, params)
    with pytest.raises(ValueError, match=r"^adam_mini: .*state"):
        jol.adam_mini(1e-2).update(params, jol.adam(1e-2).init(params), params)
