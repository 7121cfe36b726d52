"""Numerics (issue 10): no NaN from accepted values, overflow-safe norms, finite meta-gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_properties import OPTIMIZERS, build

import jaxopt_lite as jol

NAMES = sorted(OPTIMIZERS)
PARAMS = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray([[0.3, 0.0], [1.0, -0.5]])}


def _loss(p):
    # d/dw[1] and d/db[0, 1] are exactly 0: those coordinates see only zero gradients.
    return jnp.sum(p["w"][jnp.asarray([0, 2])] ** 2) + jnp.sum(p["b"] ** 2 * jnp.asarray([[1.0, 0.0], [1.0, 1.0]]))


@pytest.mark.parametrize("name", NAMES)
def test_meta_gradient_wrt_learning_rate_is_finite_with_zero_gradient_coordinates(name):
    def final_loss(lr):
        opt = build(name, learning_rate=lr)
        p, s = PARAMS, opt.init(PARAMS)
        for _ in range(3):
            u, s = opt.update(jax.grad(_loss)(p), s, p)
            p = jol.apply_updates(p, u)
        return _loss(p)

    value, grad = jax.value_and_grad(final_loss)(jnp.asarray(0.05))
    assert bool(jnp.isfinite(value)) and bool(jnp.isfinite(grad)), (name, value, grad)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_learning_rate_is_refused(name, bad):
    # The learning rate by its own name, or as what the table's builder passes it to (a schedule's peak
    # value, scale's step size).
    with pytest.raises(ValueError, match=r"(learning_rate|peak_value|step_size) must be"):
        build(name, learning_rate=bad)


def test_non_finite_schedule_values_are_refused():
    with pytest.raises(ValueError, match=r"warmup_cosine_decay_schedule: peak_value must be finite, got nan"):
        jol.warmup_cosine_decay_schedule(0.0, np.nan, 2, 10)


def test_zero_eps_on_zero_gradients_gives_zero_not_nan():
    zeros = {"w": jnp.zeros(3)}
    opt = jol.adamax(0.1, eps=0.0)
    u, _ = opt.update(zeros, opt.init(zeros), zeros)
    np.testing.assert_array_equal(u["w"], 0.0)
    step = jol.kernels.adamw_step(0.1, eps=0.0)
    params = {"w": jnp.ones(5, jnp.float32)}
    new, _ = jax.jit(step.step)(params, {"w": jnp.zeros(5, jnp.float32)}, step.init(params))
    assert bool(jnp.all(jnp.isfinite(new["w"])))


@pytest.mark.parametrize("name", NAMES)
def test_float16_params_with_zero_gradients_stay_finite(name):
    """eps = 1e-8 is 0 in float16: a denominator sqrt(v) + eps is then exactly 0 on zero gradients."""
    params = {"w": jnp.ones((3, 2), jnp.float16), "b": jnp.ones(2, jnp.float16)}
    opt = build(name)
    state, p = opt.init(params), params
    for g in (0.0, 0.0, 1e-3):
        updates, state = opt.update(jax.tree.map(lambda x, g=g: jnp.full_like(x, g), params), state, p)
        p = jol.apply_updates(p, updates)
    for x in jax.tree.leaves((updates, p)):
        assert x.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(x))), f"{name}: {x}"


# Statistics kept in the parameter's dtype, divided with an eps that is 0 in float16 (1e-30, 1e-8, 1e-6): they are
# computed in float32 and rounded once.
FLOAT16_STATISTICS = ["adafactor", "adafactor_momentum_wd", "novograd", "sophia"]


@pytest.mark.parametrize("name", FLOAT16_STATISTICS)
def test_float16_updates_follow_float32(name):
    """A zero gradient, then small ones (the same float16 values in both runs): float16 steps are float32's."""
    shapes = {"w": (3, 2), "b": (2,)}
    ramp = {k: jnp.linspace(0.5, 1.5, np.prod(s)).reshape(s) for k, s in shapes.items()}
    grads = [jol.tree.cast(jax.tree.map(lambda r, c=c: c * r, ramp), jnp.float16) for c in (0.0, 1e-2, 3e-2, 2e-2)]
    runs = []
    for dtype in (jnp.float16, jnp.float32):
        params = {k: jnp.ones(s, dtype) for k, s in shapes.items()}
        opt = build(name)
        state, p, steps = opt.init(params), params, []
        for g in grads:
            updates, state = opt.update(jol.tree.cast(g, dtype), state, p)
            p = jol.apply_updates(p, updates)
            steps.append(updates)
        runs.append(steps)
    for step, (low, ref) in enumerate(zip(*runs)):
        for k in shapes:
            np.testing.assert_allclose(
                np.asarray(low[k], np.float32), ref[k], rtol=1e-2, err_msg=f"{name}, step {step}, {k}"
            )


def test_clipping_huge_gradients_keeps_their_direction():
    big = {"a": jnp.asarray([3e38, -3e38], jnp.float32), "b": jnp.asarray([1e38], jnp.float32)}
    out, _ = jol.clip_by_global_norm(1.0).update(big, jol.EmptyState())
    direction = np.asarray([3.0, -3.0, 1.0]) / np.sqrt(19.0)
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), direction, rtol=1e-5)
    out, _ = jol.clip_by_norm(1.0).update(big, jol.EmptyState())
    np.testing.assert_allclose(out["a"], [2**-0.5, -(2**-0.5)], rtol=1e-5)
    np.testing.assert_allclose(out["b"], [1.0], rtol=1e-5)
    p = {"w": jnp.ones((3, 2), jnp.float32)}
    g = {"w": jnp.full((3, 2), 1e30, jnp.float32)}
    clipped, _ = jol.adaptive_grad_clip(0.1).update(g, jol.EmptyState(), p)
    np.testing.assert_allclose(clipped["w"], 0.1 * np.sqrt(3.0) / np.sqrt(3.0), rtol=1e-5)
    np.testing.assert_allclose(jol.unitwise_norm(g["w"]), np.sqrt(3.0) * 1e30, rtol=1e-5)


def test_safe_numerics_match_optax():
    import optax

    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    for axis in (None, 1):
        np.testing.assert_allclose(jol.safe_norm(x, 0.5, axis=axis), optax.safe_norm(x, 0.5, axis=axis))
    np.testing.assert_allclose(jax.grad(lambda v: jol.safe_norm(v, 0.1))(jnp.zeros(3)), 0.0)
    np.testing.assert_allclose(jol.safe_root_mean_squares(x, 0.1), optax.safe_root_mean_squares(x, 0.1))
    top = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
    assert int(jol.safe_int32_increment(top)) == int(optax.safe_int32_increment(top))
    assert float(jol.safe_increment(jnp.asarray(1.0))) == 2.0
    np.testing.assert_allclose(jax.grad(jol.numerics.safe_sqrt)(0.0), 0.0)
    np.testing.assert_allclose(jax.grad(jol.numerics.safe_sqrt)(4.0), 0.25)
