"""The fused AdamW step: the CPU kernel and its fallback equal the composed transforms."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol
from jaxopt_lite import kernels

HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


def _params(dtype):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"w": jax.random.normal(k1, (64, 33), dtype), "b": jax.random.normal(k2, (7,), dtype), "s": jnp.ones((), dtype)}


def _grads(params, t):
    return jax.tree.map(lambda p: (p + 0.3 * jnp.cos(0.1 * t + p)).astype(p.dtype), params)


def _composed_step(learning_rate, weight_decay, max_grad_norm):
    parts = [] if max_grad_norm is None else [jol.clip_by_global_norm(max_grad_norm)]
    opt = jol.chain(*parts, jol.adamw(learning_rate, weight_decay=weight_decay))

    def step(params, grads, state):
        updates, state = opt.update(grads, state, params)
        return jol.apply_updates(params, updates), state

    return opt, step


def _uses_kernel(fused_step, params):
    text = jax.jit(fused_step.step).lower(params, params, fused_step.init(params)).compile().as_text()
    return "custom-call" in text or "custom_call" in text


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the kernel cannot be built here")
def test_kernel_builds_where_a_compiler_exists():
    assert kernels.kernel_available()


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_step_equals_composed_transforms(use_kernel, max_grad_norm):
    schedule = jol.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 200, end_value=1e-4)
    fused = kernels.adamw_step(schedule, weight_decay=0.05, max_grad_norm=max_grad_norm, use_kernel=use_kernel)
    opt, composed = _composed_step(schedule, 0.05, max_grad_norm)
    params = _params(jnp.float32)
    assert _uses_kernel(fused, params) == (use_kernel and kernels.kernel_available())
    p_ref, s_ref = params, opt.init(params)
    p_got, s_got = params, fused.init(params)
    step_ref, step_got = jax.jit(composed), jax.jit(fused.step, donate_argnums=(0, 2))
    for t in range(100):
        p_ref, s_ref = step_ref(p_ref, _grads(p_ref, t), s_ref)
        p_got, s_got = step_got(p_got, _grads(p_got, t), s_got)
        for a, b in zip(jax.tree.leaves(p_got), jax.tree.leaves(p_ref)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=f"step {t}")
    adam_state = s_ref[-1][0]
    assert int(s_got.count) == int(adam_state.count) == 100
    for a, b in zip(jax.tree.leaves((s_got.mu, s_got.nu)), jax.tree.leaves((adam_state.mu, adam_state.nu))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)  # grads depend on params: rounding feeds back


@pytest.mark.parametrize("use_kernel", [True, False])
def test_gradients_near_the_float32_maximum_are_clipped_along_their_direction(use_kernel):
    """||g|| overflows float32 here; the step must still equal the clipped one, not zero."""
    fused = kernels.adamw_step(1e-2, weight_decay=0.0, max_grad_norm=1.0, use_kernel=use_kernel)
    params = {"w": jnp.zeros((4, 3), jnp.float32), "s": jnp.zeros((), jnp.float32)}
    big = np.linspace(-3e38, 3e38, 12).reshape(4, 3)
    grads = {"w": jnp.asarray(big, jnp.float32), "s": jnp.asarray(2e38, jnp.float32)}
    norm = np.sqrt(np.sum(big.astype(np.float64) ** 2) + 2e38**2)
    clipped = {"w": jnp.asarray(big / norm, jnp.float32), "s": jnp.asarray(2e38 / norm, jnp.float32)}
    reference = kernels.adamw_step(1e-2, weight_decay=0.0, use_kernel=False)
    got, _ = jax.jit(fused.step)(params, grads, fused.init(params))
    want, _ = jax.jit(reference.step)(params, clipped, reference.init(params))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.all(np.isfinite(a)), a
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(got["s"])) > 5e-3  # Adam's first step is lr * sign(g) away from 0


def test_float64_and_fused_layout():
    fused_step = kernels.adamw_step(1e-2, weight_decay=0.01)
    opt, composed = _composed_step(1e-2, 0.01, None)
    params64 = _params(jnp.float64)
    p, s = fused_step.step(params64, _grads(params64, 0), fused_step.init(params64))  # the fallback path
    q, _ = composed(params64, _grads(params64, 0), opt.init(params64))
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-12)
    flat = jol.fuse(_params(jnp.float32))
    p, s = jax.jit(fused_step.step)(flat, jol.fuse(_grads(flat.tree(), 0)), fused_step.init(flat))
    assert isinstance(p, jol.Fused) and isinstance(s.mu, jol.Fused)
    q, _ = composed(flat.tree(), _grads(flat.tree(), 0), opt.init(flat.tree()))
    for a, b in zip(jax.tree.leaves(p.tree()), jax.tree.leaves(q)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_vmap_over_learning_rate_equals_loop():
    params = _params(jnp.float32)
    lrs = jnp.array([1e-3, 1e-2, 1e-1], jnp.float32)

    def run(lr):
        opt = kernels.adamw_step(lr, weight_decay=0.01)
        p, s = params, opt.init(params)
        for t in range(3):
            p, s = opt.step(p, _grads(p, t), s)
        return p

    batched = jax.jit(jax.vmap(run))(lrs)
    for i, lr in enumerate(lrs):
        alone = jax.jit(run)(lr)
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
            np.testing.assert_allclose(a[i], b, rtol=1e-6)


def test_differentiable_without_the_kernel():
    params = _params(jnp.float32)

    def loss_after(lr):
        opt = kernels.adamw_step(lr, use_kernel=False)
        p, s = params, opt.init(params)
        for t in range(3):
            p, s = opt.step(p, _grads(p, t), s)
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(p))

    g = jax.grad(loss_after)(1e-2)
    assert np.isfinite(g) and g < 0  # a larger step shrinks these params further


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="weight_decay"):
        kernels.adamw_step(1e-3, weight_decay=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        kernels.adamw_step(-1e-3)
    with pytest.raises(ValueError, match="max_grad_norm"):
        kernels.adamw_step(1e-3, max_grad_norm=-1.0)
