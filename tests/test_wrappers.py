"""Tests of jaxopt_lite.wrappers: hand-computed references, Optax as an oracle, properties."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_lite import wrappers as W
from jaxopt_lite.aliases import adam, adamw, sgd
from jaxopt_lite.base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
)
from jaxopt_lite.transforms.momentum import trace
from jaxopt_lite.transforms.scaling import scale

# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def make_params(seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), dtype),
        "b": jnp.asarray(rng.normal(size=(2,)), dtype),
        "s": jnp.asarray(rng.normal(), dtype),
    }


def grads_seq(params, n, seed=1):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params) for _ in range(n)]


def run(tx, params, grads, *, jit=True, apply=apply_updates):
    """Applies ``tx`` over ``grads``; returns (list of updates, final params, final state)."""
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    outs = []
    for g in grads:
        u, state = update(g, state, params)
        outs.append(u)
        params = apply(params, u)
    return outs, params, state


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a), jax.tree.structure(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def counting_transform():
    """A stateful test transform: u -> u * (count + 1), count += 1 per update, plus a per-leaf sum of updates."""

    def init(params):
        return {"count": jnp.zeros([], jnp.int32), "total": jax.tree.map(jnp.zeros_like, params)}

    def update(updates, state, params=None):
        factor = (state["count"] + 1).astype(jnp.float64)
        out = jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)
        total = jax.tree.map(lambda t, u: t + u, state["total"], updates)
        return out, {"count": state["count"] + 1, "total": total}

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# masked / partition / freeze / selective_transform.
# ----------------------------------------------------------------------------


def test_masked_hand_computed_and_no_state_for_masked_leaves():
    params = make_params()
    mask = {"w": True, "b": False, "s": True}
    tx = W.masked(counting_transform(), mask)
    grads = grads_seq(params, 3)
    outs, _, state = run(tx, params, grads)
    for i, (g, u) in enumerate(zip(grads, outs)):
        np.testing.assert_allclose(u["w"], g["w"] * (i + 1))
        np.testing.assert_allclose(u["s"], g["s"] * (i + 1))
        np.testing.assert_array_equal(u["b"], g["b"])  # passed through untouched
    assert isinstance(state, W.MaskedState)
    assert isinstance(state.inner_state["total"]["b"], W.MaskedNode)
    np.testing.assert_allclose(state.inner_state["total"]["w"], sum(g["w"] for g in grads))
    # Only the two selected leaves have buffers (plus the count).
    assert len(jax.tree.leaves(state)) == 3


def test_masked_matches_optax_with_callable_and_prefix_masks():
    params = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, "head": make_params(3)}
    grads = grads_seq(params, 4)
    mask_fn = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    prefix = {"layer": False, "head": True}
    for mask in (mask_fn, prefix):
        mine, _, _ = run(W.masked(adam(0.1), mask), params, grads)
        ref, _, _ = run(optax.masked(optax.adam(0.1), mask), params, grads, apply=optax.apply_updates)
        assert_trees_close(mine, ref)
    # prefix mask: the whole "layer" subtree passes through.
    outs, _, _ = run(W.masked(adam(0.1), prefix), params, grads)
    assert_trees_close(outs[0]["layer"], grads[0]["layer"])


def test_masked_extra_args_are_masked_when_asked():
    seen = {}

    def init(params):
        return EmptyState()

    def update(updates, state, params=None, *, tags=None):
        seen["tags"] = tags
        return jax.tree.map(lambda u, t: u * t, updates, tags), state

    from jaxopt_lite.base import GradientTransformationExtraArgs

    inner = GradientTransformationExtraArgs(init, update)
    params = make_params()
    tags = {"w": jnp.asarray(2.0), "b": jnp.asarray(3.0), "s": jnp.asarray(4.0)}
    tx = W.masked(inner, {"w": True, "b": False, "s": True}, mask_compatible_extra_args=True)
    u, _ = tx.update(params, tx.init(params), params, tags=tags)
    assert isinstance(seen["tags"]["b"], W.MaskedNode)
    np.testing.assert_allclose(u["w"], 2.0 * params["w"])
    np.testing.assert_allclose(u["s"], 4.0 * params["s"])
    np.testing.assert_array_equal(u["b"], params["b"])


def test_masked_bad_masks_raise_clear_errors():
    params = make_params()
    with pytest.raises(ValueError, match=r"mask.*params(.|\n)*mask: PyTreeDef\(\{'w'(.|\n)*params: PyTreeDef"):
        W.masked(scale(2.0), {"w": True}).init(params)
    with pytest.raises(TypeError, match="single boolean"):
        W.masked(scale(2.0), {"w": True, "b": jnp.ones(2, bool), "s": True}).init(params)
    with pytest.raises(ValueError, match="mask"):
        W.masked(scale(2.0), {"w": True, "b": True, "s": True}).update({"w": params["w"]}, W.MaskedState(EmptyState()))


def test_partition_matches_optax_and_labels_checked():
    params = make_params()
    grads = grads_seq(params, 4)
    labels = {"w": "adam", "b": "sgd", "s": "adam"}
    mine_tx = W.partition({"adam": adam(0.05), "sgd": sgd(0.1, momentum=0.9)}, labels)
    ref_tx = optax.partition({"adam": optax.adam(0.05), "sgd": optax.sgd(0.1, momentum=0.9)}, labels)
    mine, p1, state = run(mine_tx, params, grads)
    ref, p2, _ = run(ref_tx, params, grads, apply=optax.apply_updates)
    assert_trees_close(mine, ref)
    assert_trees_close(p1, p2)
    assert isinstance(state, W.PartitionState) and set(state.inner_states) == {"adam", "sgd"}
    # multi_transform is the same thing.
    alias, _, _ = run(W.multi_transform({"adam": adam(0.05), "sgd": sgd(0.1, momentum=0.9)}, labels), params, grads)
    assert_trees_close(alias, mine, rtol=0, atol=0)
    assert W.MultiTransformState is W.PartitionState

    with pytest.raises(ValueError, match=r"label 'sdg'.*known labels.*'adam'.*'sgd'"):
        W.partition({"adam": adam(0.1), "sgd": sgd(0.1)}, {"w": "adam", "b": "sdg", "s": "adam"}).init(params)
    with pytest.raises(ValueError, match=r"param_labels(.|\n)*param_labels: PyTreeDef(.|\n)*params: PyTreeDef"):
        W.partition({"adam": adam(0.1)}, {"w": "adam", "b": "adam"}).init(params)


def test_freeze_and_selective_transform():
    params = make_params()
    grads = grads_seq(params, 3)
    fmask = {"w": False, "b": True, "s": False}
    outs, _, _ = run(W.freeze(fmask), params, grads)
    for g, u in zip(grads, outs):
        np.testing.assert_array_equal(u["b"], 0.0)
        np.testing.assert_array_equal(u["w"], g["w"])

    tx = W.selective_transform(adam(0.1), freeze_mask=fmask)
    mine, p_end, state = run(tx, params, grads)
    np.testing.assert_array_equal(p_end["b"], params["b"])  # frozen
    ref, _, _ = run(
        optax.selective_transform(optax.adam(0.1), freeze_mask=fmask), params, grads, apply=optax.apply_updates
    )
    assert_trees_close(mine, ref)
    # Adam keeps moments only for the two trainable leaves: mu, nu for w and s (+ a count).
    adam_state = state.inner_states["train"].inner_state
    assert sum(x.size for x in jax.tree.leaves(adam_state)) == 2 * (6 + 1) + 1
    # A callable freeze mask gives the same result.
    by_fn, _, _ = run(W.selective_transform(adam(0.1), freeze_mask=lambda p: fmask), params, grads)
    assert_trees_close(by_fn, mine, rtol=0, atol=0)
    # Freezing everything with a single bool.
    outs, _, _ = run(W.freeze(True), params, grads[:1])
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(outs[0]))


# ----------------------------------------------------------------------------
# MultiSteps and apply_every.
# ----------------------------------------------------------------------------


def _regression_problem(seed=0, n=12):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 3)))
    y = jnp.asarray(rng.normal(size=(n,)))
    params = {"w": jnp.asarray(rng.normal(size=(3,))), "b": jnp.asarray(0.3)}

    def loss(p, xb, yb):
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    return params, x, y, loss


def test_multisteps_equals_big_batch_step():
    params, x, y, loss = _regression_problem()
    k = 4
    ms = W.MultiSteps(adam(0.1), every_k_schedule=k, accumulator_dtype=jnp.float64)
    state = ms.init(params)
    p_ms, p_big = params, params
    big_tx = adam(0.1)
    big_state = big_tx.init(params)
    update = jax.jit(ms.update)
    for _ in range(3):  # three real steps
        for xb, yb in zip(jnp.split(x, k), jnp.split(y, k)):
            u, state = update(jax.grad(loss)(p_ms, xb, yb), state, p_ms)
            p_ms = apply_updates(p_ms, u)
        u, big_state = big_tx.update(jax.grad(loss)(p_big, x, y), big_state, p_big)
        p_big = apply_updates(p_big, u)
        assert_trees_close(p_ms, p_big, rtol=1e-10, atol=1e-12)
    assert int(state.gradient_step) == 3 and int(state.mini_step) == 0
    # One accumulator the size of the params, nothing else besides the inner state.
    assert jax.tree.structure(state.acc_grads) == jax.tree.structure(params)
    assert [a.shape for a in jax.tree.leaves(state.acc_grads)] == [p.shape for p in jax.tree.leaves(params)]
    assert state.skip_state == ()


def test_multisteps_matches_optax_and_has_updated():
    params = make_params(dtype=jnp.float32)
    grads = grads_seq(params, 9)
    ms = W.MultiSteps(adam(0.1), 3)
    ref = optax.MultiSteps(optax.adam(0.1), 3)
    s1, s2 = ms.init(params), ref.init(params)
    flags = []
    update1, update2 = jax.jit(ms.update), jax.jit(ref.update)
    for g in grads:
        u1, s1 = update1(g, s1, params)
        u2, s2 = update2(g, s2, params)
        assert_trees_close(u1, u2, rtol=1e-6, atol=1e-7)
        assert jax.tree.map(lambda a: a.dtype, u1) == jax.tree.map(lambda a: a.dtype, g)
        flags.append(bool(ms.has_updated(s1)))
        assert flags[-1] == bool(ref.has_updated(s2))
    assert flags == [False, False, True] * 3
    assert s1.acc_grads["w"].dtype == jnp.float32  # default accumulator dtype


def test_multisteps_sum_schedule_and_chain():
    params = {"x": jnp.zeros(2)}
    grads = [{"x": jnp.full(2, float(i + 1))} for i in range(6)]
    # k = 1 for the first real step, then 2, 3, ...: grads 1 | 2, 3 | 4, 5, 6.
    ms = W.MultiSteps(scale(1.0), every_k_schedule=lambda step: step + 1, use_grad_mean=False)
    tx = ms.gradient_transformation()
    outs, _, state = run(tx, params, grads, jit=True)
    emitted = [float(u["x"][0]) for u in outs]
    assert emitted == [1.0, 0.0, 5.0, 0.0, 0.0, 15.0]
    assert int(state.gradient_step) == 3
    # Usable inside a chain.
    chained, _, _ = run(chain(tx, scale(-1.0)), params, grads)
    assert [float(u["x"][0]) for u in chained] == [-e for e in emitted]


@pytest.mark.parametrize("k", [0, -2])
def test_multisteps_rejects_nonpositive_k(k):
    with pytest.raises(ValueError, match="every_k_schedule must be a positive"):
        W.MultiSteps(sgd(0.1), k)
    with pytest.raises(ValueError, match="every_k_schedule must be a positive"):
        W.MultiSteps(sgd(0.1), lambda step: k)
    # A schedule that turns non-positive later is caught when evaluated eagerly.
    ms = W.MultiSteps(sgd(0.1), lambda step: jnp.where(step > 0, k, 1))
    params = {"x": jnp.ones(2)}
    state = ms.init(params)
    _, state = ms.update(params, state, params)
    with pytest.raises(ValueError, match="every_k_schedule"):
        ms.update(params, state, params)
    with pytest.raises(TypeError, match="MultiSteps: every_k_schedule must be an integer, got 2.5"):
        W.MultiSteps(sgd(0.1), 2.5)


def test_multisteps_skip_functions():
    params = {"x": jnp.ones(3)}
    good = {"x": jnp.asarray([1.0, 2.0, 3.0])}
    bad = {"x": jnp.asarray([1.0, jnp.nan, jnp.inf])}
    ms = W.MultiSteps(sgd(1.0), 2, should_skip_update_fn=W.skip_not_finite)
    state = ms.init(params)
    assert int(state.skip_state["num_not_finite"]) == 0
    u, state = ms.update(good, state, params)
    u, state2 = ms.update(bad, state, params)
    assert bool(state2.skip_state["should_skip"]) and int(state2.skip_state["num_not_finite"]) == 2
    assert_trees_close(u, {"x": jnp.zeros(3)})
    assert int(state2.mini_step) == 1 and int(state2.gradient_step) == 0
    assert_trees_close(state2.acc_grads, state.acc_grads, rtol=0, atol=0)
    u, state3 = ms.update(good, state2, params)  # completes the round with finite grads only
    assert_trees_close(u, {"x": -good["x"]})
    assert bool(ms.has_updated(state3))

    skip_big = functools.partial(W.skip_large_updates, max_squared_norm=10.0)
    ms = W.MultiSteps(sgd(1.0), 1, should_skip_update_fn=skip_big)
    state = ms.init(params)
    u, state = ms.update(good, state, params)  # |g|^2 = 14 >= 10: skipped
    assert bool(state.skip_state["should_skip"]) and float(state.skip_state["norm_squared"]) == 14.0
    assert_trees_close(u, {"x": jnp.zeros(3)})
    u, state = ms.update({"x": jnp.ones(3)}, state, params)
    assert_trees_close(u, {"x": -jnp.ones(3)})


def test_apply_every_matches_optax_and_hand():
    params = make_params()
    grads = grads_seq(params, 7)
    mine, _, state = run(W.apply_every(3), params, grads)
    ref, _, _ = run(optax.apply_every(3), params, grads, apply=optax.apply_updates)
    assert_trees_close(mine, ref)
    np.testing.assert_allclose(mine[2]["w"], grads[0]["w"] + grads[1]["w"] + grads[2]["w"])
    np.testing.assert_array_equal(mine[3]["w"], 0.0)
    assert isinstance(state, W.ApplyEvery) and int(state.count) == 1
    with pytest.raises(ValueError, match="k must be a positive"):
        W.apply_every(0)


# ----------------------------------------------------------------------------
# apply_if_finite.
# ----------------------------------------------------------------------------


def test_apply_if_finite_skips_nan_steps_without_corruption():
    params = make_params()
    grads = grads_seq(params, 6)
    bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan) if g.ndim == 0 else g.at[0].set(jnp.nan), grads[0])
    with_bad = grads[:3] + [bad, bad] + grads[3:]
    tx = W.apply_if_finite(adam(0.1), max_consecutive_errors=3)
    state = tx.init(params)
    p = params
    update = jax.jit(tx.update)
    for i, g in enumerate(with_bad):
        before_state, before_p = state, p
        u, state = update(g, state, p)
        p = apply_updates(p, u)
        if i in (3, 4):
            assert_trees_close(p, before_p, rtol=0, atol=0)
            assert_trees_close(state.inner_state, before_state.inner_state, rtol=0, atol=0)
            assert not bool(state.last_finite)
            assert int(state.notfinite_count) == i - 2
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((p, state)))
    assert int(state.total_notfinite) == 2 and int(state.notfinite_count) == 0 and bool(state.last_finite)
    # Training continued exactly as if the bad steps had never happened.
    _, p_clean, _ = run(adam(0.1), params, grads)
    assert_trees_close(p, p_clean)
    # Same as Optax, step by step.
    mine, _, _ = run(tx, params, with_bad)
    ref, _, _ = run(optax.apply_if_finite(optax.adam(0.1), 3), params, with_bad, apply=optax.apply_updates)
    assert_trees_close(mine, ref)


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
    params = {"x": jnp.ones(2)}
    bad = {"x": jnp.asarray([jnp.inf, 1.0])}
    tx = W.apply_if_finite(sgd(1.0), max_consecutive_errors=2)
    outs, _, state = run(tx, params, [bad] * 3, apply=lambda p, u: p)
    assert np.all(np.asarray(outs[0]["x"]) == 0) and np.all(np.asarray(outs[1]["x"]) == 0)
    assert np.isinf(np.asarray(outs[2]["x"][0]))  # third in a row: passed on
    assert int(state.total_notfinite) == 3
    eager, _, eager_state = run(tx, params, [bad] * 3, apply=lambda p, u: p, jit=False)
    assert_trees_close(eager, outs, rtol=0, atol=0)
    assert_trees_close(eager_state, state, rtol=0, atol=0)


# ----------------------------------------------------------------------------
# inject_hyperparams.
# ----------------------------------------------------------------------------


def test_inject_hyperparams_matches_plain_and_optax_with_schedule():
    params = make_params()
    grads = grads_seq(params, 5)
    plain, _, _ = run(adam(0.05, b1=0.8), params, grads)
    injected, _, state = run(W.inject_hyperparams(adam)(0.05, b1=0.8), params, grads, jit=True)
    assert_trees_close(injected, plain)
    assert set(state.hyperparams) == {"learning_rate", "b1", "b2", "eps", "eps_root"}
    assert state.hyperparams["learning_rate"].dtype == jnp.float64 and int(state.count) == 5

    sched = lambda count: 0.1 / (1.0 + count)  # noqa: E731
    mine, _, state = run(W.inject_hyperparams(adam)(learning_rate=sched), params, grads)
    ref, _, _ = run(optax.inject_hyperparams(optax.adam)(learning_rate=sched), params, grads, apply=optax.apply_updates)
    assert_trees_close(mine, ref)
    # The stored value is the one used by the last step (count 4).
    np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.1 / 5)
    # A library schedule (warm-up then cosine decay) for the learning rate, and one for b1.
    from jaxopt_lite.schedules import linear_schedule, warmup_cosine_decay_schedule

    mine_tx = W.inject_hyperparams(adam)(
        learning_rate=warmup_cosine_decay_schedule(0.0, 0.1, 2, 5), b1=linear_schedule(0.9, 0.5, 4)
    )
    ref_tx = optax.inject_hyperparams(optax.adam)(
        learning_rate=optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 5), b1=optax.linear_schedule(0.9, 0.5, 4)
    )
    mine, _, _ = run(mine_tx, params, grads)
    ref, _, _ = run(ref_tx, params, grads, apply=optax.apply_updates)
    assert_trees_close(mine, ref, rtol=1e-5, atol=1e-8)  # Optax's schedules return float32 values
    # The schedule is evaluated at count = 0 on the first step: one SGD step with lr = sched(0).
    tx = W.inject_hyperparams(sgd)(learning_rate=lambda c: 0.5 + c)
    u, s = tx.update(grads[0], tx.init(params), params)
    assert_trees_close(u, jax.tree.map(lambda g: -0.5 * g, grads[0]))
    u, _ = tx.update(grads[0], s, params)
    assert_trees_close(u, jax.tree.map(lambda g: -1.5 * g, grads[0]))


def test_inject_hyperparams_set_lr_changes_result_without_recompiling():
    calls = []

    def factory(learning_rate, momentum=0.9):
        calls.append(1)
        return sgd(learning_rate, momentum=momentum)

    params = make_params()
    g = grads_seq(params, 1)[0]
    tx = W.inject_hyperparams(factory)(0.1)
    state = tx.init(params)
    step = jax.jit(tx.update)
    u1, _ = step(g, state, params)
    traces = len(calls)
    u2, _ = step(g, W.set_hyperparams(state, learning_rate=0.01), params)
    new_hp = dict(state.hyperparams, learning_rate=jnp.asarray(0.3, jnp.float64))
    u3, _ = step(g, state._replace(hyperparams=new_hp), params)
    assert len(calls) == traces  # no retrace, hence no recompilation
    assert_trees_close(u2, jax.tree.map(lambda u: 0.1 * u, u1))
    assert_trees_close(u3, jax.tree.map(lambda u: 3.0 * u, u1))
    with pytest.raises(KeyError, match=r"'lr'.*known.*learning_rate"):
        W.set_hyperparams(state, lr=0.1)


def test_inject_hyperparams_vmap_over_learning_rate_equals_loop():
    params = make_params()
    grads = grads_seq(params, 3)
    tx = W.inject_hyperparams(adam)(0.1)
    lrs = jnp.asarray([0.01, 0.1, 0.3])

    def train(lr):
        state = W.set_hyperparams(tx.init(params), learning_rate=lr)
        p = params
        for g in grads:
            u, state = tx.update(g, state, p)
            p = apply_updates(p, u)
        return p

    batched = jax.vmap(train)(lrs)
    for i, lr in enumerate(lrs):
        _, p_loop, _ = run(adam(float(lr)), params, grads)
        assert_trees_close(jax.tree.map(lambda x: x[i], batched), p_loop)
    # Building the optimizer inside vmap (the hyperparameter is a tracer) works too.
    batched2 = jax.vmap(lambda lr: run(W.inject_hyperparams(adam)(lr), params, grads)[1])(lrs)
    assert_trees_close(batched2, batched)


def test_inject_hyperparams_detects_static_arguments():
    seen = {}

    def factory(learning_rate: float, n_repeats: int = 2, nesterov: bool = False, name: str = "x", extra=None,
                mask: Callable | None = None, dims=(1, 2)):
        # Each of these must be a concrete Python value here, even under jit.
        seen.update(n=n_repeats, nesterov=nesterov, name=name, extra=extra, dims=dims)
        txs = [scale(learning_rate) for _ in range(n_repeats)]  # needs a Python int
        return chain(*txs) if mask is None else W.masked(chain(*txs), mask)

    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    # A function for a parameter annotated as neither float nor schedule is not a schedule.
    mask_fn = lambda p: {"a": True, "b": False}  # noqa: E731
    tx = W.inject_hyperparams(factory)(0.5, 3, True, "y", None, mask_fn)
    state = tx.init(params)
    assert set(state.hyperparams) == {"learning_rate"}
    u, _ = jax.jit(tx.update)(params, state, params)
    assert seen == dict(n=3, nesterov=True, name="y", extra=None, dims=(1, 2))
    np.testing.assert_allclose(u["a"], 0.125)
    np.testing.assert_allclose(u["b"], 1.0)
    # adamw's mask function is static as well; its float weight decay is injected.
    tx = W.inject_hyperparams(adamw)(0.1, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 0, p))
    state = tx.init(make_params())
    assert "mask" not in state.hyperparams and float(state.hyperparams["weight_decay"]) == 0.5
    ref, _, _ = run(adamw(0.1, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 0, p)),
                    make_params(), grads_seq(make_params(), 2))
    mine, _, _ = run(tx, make_params(), grads_seq(make_params(), 2))
    assert_trees_close(mine, ref)
    # An int for a float-declared argument is injected; static_args still works.
    state = W.inject_hyperparams(sgd)(1).init(params)
    assert state.hyperparams["learning_rate"].dtype == jnp.float64
    state = W.inject_hyperparams(adam, static_args=("b1",))(0.1, b1=0.9).init(params)
    assert "b1" not in state.hyperparams
    with pytest.raises(ValueError, match=r"static_args.*'beta'.*parameters"):
        W.inject_hyperparams(adam, static_args="beta")


def test_inject_hyperparams_dtype():
    params = {"a": jnp.ones(2, jnp.float32)}
    state = W.inject_hyperparams(adam)(0.1).init(params)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32
    tx = W.inject_hyperparams(adam, hyperparam_dtype=jnp.float64)(0.1)
    state = tx.init(params)
    assert all(v.dtype == jnp.float64 for v in state.hyperparams.values())
    u, _ = tx.update(params, state, params)
    assert u["a"].dtype == jnp.float32


# ----------------------------------------------------------------------------
# lookahead.
# ----------------------------------------------------------------------------


def test_lookahead_hand_computed_and_matches_optax():
    params = {"x": jnp.asarray([1.0, -2.0])}
    g = {"x": jnp.asarray([0.5, 1.0])}
    lr, alpha, k = 0.1, 0.5, 3
    tx = W.lookahead(sgd(lr), sync_period=k, slow_step_size=alpha)
    lp = W.LookaheadParams.init_synced(params)
    state = tx.init(lp)
    for _ in range(2 * k):
        u, state = tx.update(g, state, lp)
        lp = apply_updates(lp, u)
    # Hand: each round the fast weights take k steps of -lr*g from slow; slow moves alpha of the way.
    slow = np.asarray(params["x"])
    for _ in range(2):
        slow = slow + alpha * (-k * lr * np.asarray(g["x"]))
    np.testing.assert_allclose(lp.slow["x"], slow)
    np.testing.assert_allclose(lp.fast["x"], slow)  # synced
    assert int(state.steps_since_sync) == 0

    p = make_params()
    grads = grads_seq(p, 7)
    for reset in (False, True):
        mine_tx = W.lookahead(adam(0.1), 3, 0.5, reset_state=reset)
        ref_tx = optax.lookahead(optax.adam(0.1), 3, 0.5, reset_state=reset)
        a, b = W.LookaheadParams.init_synced(p), optax.LookaheadParams.init_synced(p)
        s1, s2 = mine_tx.init(a), ref_tx.init(b)
        update1, update2 = jax.jit(mine_tx.update), jax.jit(ref_tx.update)
        for gi in grads:
            u1, s1 = update1(gi, s1, a)
            u2, s2 = update2(gi, s2, b)
            a, b = apply_updates(a, u1), optax.apply_updates(b, u2)
            assert_trees_close(tuple(a), tuple(b))
        if reset:
            assert int(s1.fast_state[0].count) == 1  # reset at the sync after step 6, then one step


def test_lookahead_errors():
    with pytest.raises(ValueError, match="sync_period"):
        W.lookahead(sgd(0.1), 0, 0.5)
    with pytest.raises(ValueError, match="slow_step_size"):
        W.lookahead(sgd(0.1), 2, 1.5)
    tx = W.lookahead(sgd(0.1), 2, 0.5)
    params = {"x": jnp.ones(2)}
    with pytest.raises(TypeError, match="LookaheadParams"):
        tx.update(params, tx.init(params), params)


# ----------------------------------------------------------------------------
# flatten.
# ----------------------------------------------------------------------------


def test_flatten_matches_plain_and_optax():
    params = make_params()
    grads = grads_seq(params, 4)
    mine, _, state = run(W.flatten(adam(0.1)), params, grads)
    plain, _, _ = run(adam(0.1), params, grads)
    ref, _, _ = run(optax.flatten(optax.adam(0.1)), params, grads, apply=optax.apply_updates)
    assert_trees_close(mine, plain)
    assert_trees_close(mine, ref)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert state[0].mu.shape == (n,)  # one flat buffer


def test_flatten_keeps_mixed_dtypes():
    params = {"a": jnp.ones((2, 2), jnp.float32), "b": jnp.ones(3, jnp.float64)}
    u, _ = W.flatten(sgd(0.5)).update(params, W.flatten(sgd(0.5)).init(params), params)
    assert u["a"].dtype == jnp.float32 and u["a"].shape == (2, 2) and u["b"].dtype == jnp.float64
    np.testing.assert_allclose(u["a"], -0.5)


# ----------------------------------------------------------------------------
# params_ema.
# ----------------------------------------------------------------------------


def test_params_ema_hand_computed_and_overwrite():
    params = {"x": jnp.asarray([0.0, 1.0])}
    seq = [np.asarray([float(i), 2.0 * i]) for i in range(1, 7)]
    ema = W.params_ema(0.5, overwrite_every=3)
    state = ema.init(params)
    expected = np.asarray(params["x"])
    update = jax.jit(ema.update)
    for i, new in enumerate(seq, start=1):
        out, state = update({"x": jnp.asarray(new)}, state)
        expected = 0.5 * expected + 0.5 * new
        np.testing.assert_allclose(state.ema["x"], expected)
        np.testing.assert_allclose(ema.average(state, params)["x"], expected)
        if i % 3 == 0:
            np.testing.assert_allclose(out["x"], expected)  # live params replaced by the average
        else:
            np.testing.assert_array_equal(out["x"], new)
    assert int(state.count) == 6

    # Warm-up schedule for the decay, and a float32 accumulator for bfloat16 params.
    ema = W.params_ema(lambda t: jnp.minimum(0.9, t / (t + 1.0)), accumulator_dtype=jnp.float32)
    p16 = {"x": jnp.ones(2, jnp.bfloat16)}
    state = ema.init(p16)
    assert state.ema["x"].dtype == jnp.float32
    out, state = ema.update({"x": jnp.full(2, 3.0, jnp.bfloat16)}, state)  # decay(0) = 0: copy
    np.testing.assert_allclose(state.ema["x"], 3.0)
    assert out["x"].dtype == jnp.bfloat16 and ema.average(state, p16)["x"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="decay"):
        W.params_ema(1.5)
    with pytest.raises(ValueError, match="overwrite_every"):
        W.params_ema(0.9, overwrite_every=0)


# ----------------------------------------------------------------------------
# Properties over random pytrees.
# ----------------------------------------------------------------------------

_SHAPES = [(), (1,), (3,), (2, 3), (2, 1, 2)]


@st.composite
def pytrees(draw):
    n = draw(st.integers(2, 4))
    shapes = draw(st.lists(st.sampled_from(_SHAPES), min_size=n, max_size=n))
    dtypes = draw(st.lists(st.sampled_from([jnp.float32, jnp.float64]), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(rng.normal(size=s), d) for s, d in zip(shapes, dtypes)]
    nested = draw(st.booleans())
    if nested:
        tree = {"first": leaves[0], "rest": {f"l{i}": x for i, x in enumerate(leaves[1:])}}
    else:
        tree = [leaves[0], tuple(leaves[1:])]
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), tree) for _ in range(2)]
    return tree, grads


def _wrapped_transforms(params):
    leaves = jax.tree.leaves(params)
    mask = jax.tree.unflatten(jax.tree.structure(params), [i % 2 == 0 for i in range(len(leaves))])
    labels = jax.tree.map(lambda m: "a" if m else "b", mask)
    return {
        "masked": W.masked(adam(0.1), mask),
        "partition": W.partition({"a": adam(0.1), "b": sgd(0.1, momentum=0.9)}, labels),
        "freeze": W.freeze(mask),
        "selective": W.selective_transform(trace(0.9), freeze_mask=mask),
        "multisteps": W.MultiSteps(adam(0.1), 2, should_skip_update_fn=W.skip_not_finite).gradient_transformation(),
        "apply_every": W.apply_every(2),
        "apply_if_finite": W.apply_if_finite(adam(0.1), 2),
        "inject": W.inject_hyperparams(sgd)(0.1, momentum=0.5),
        "flatten": W.flatten(adam(0.1)),
    }


def _dtypes(tree):
    return jax.tree.map(lambda x: jnp.result_type(x), tree)


@settings(max_examples=3, deadline=None)
@given(pytrees())
def test_property_structure_dtypes_jit_and_eval_shape(data):
    params, grads = data
    for name, tx in _wrapped_transforms(params).items():
        state = tx.init(params)
        shapes = jax.eval_shape(tx.init, params)
        assert jax.tree.structure(shapes) == jax.tree.structure(state), name
        assert all(
            s.shape == jnp.shape(x) and s.dtype == jnp.result_type(x)
            for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(state))
        ), name
        eager_state = jit_state = state
        p_e = p_j = params
        update_j = jax.jit(tx.update)
        for g in grads:
            u_e, eager_state = tx.update(g, eager_state, p_e)
            u_j, jit_state = update_j(g, jit_state, p_j)
            assert jax.tree.structure(u_e) == jax.tree.structure(params), name
            assert _dtypes(u_e) == _dtypes(params), name
            assert _dtypes(u_j) == _dtypes(params), name
            assert jax.tree.structure(eager_state) == jax.tree.structure(state), name
            assert _dtypes(eager_state) == _dtypes(state), name
            assert_trees_close(u_e, u_j, rtol=1e-5, atol=1e-6)
            p_e, p_j = apply_updates(p_e, u_e), apply_updates(p_j, u_j)


@settings(max_examples=3, deadline=None)
@given(pytrees())
def test_property_lookahead_and_ema(data):
    params, grads = data
    tx = W.lookahead(adam(0.1), 2, 0.5)
    lp = W.LookaheadParams.init_synced(params)
    state = tx.init(lp)
    assert jax.tree.structure(jax.eval_shape(tx.init, lp)) == jax.tree.structure(state)
    for g in grads:
        u, state = jax.jit(tx.update)(g, state, lp)
        assert _dtypes(u) == _dtypes(lp)
        lp = apply_updates(lp, u)
    ema = W.params_ema(0.9, overwrite_every=2)
    s = ema.init(params)
    assert jax.tree.structure(jax.eval_shape(ema.init, params)) == jax.tree.structure(s)
    p_e, s_e = params, s
    for g in grads:
        p_e, s_e = ema.update(apply_updates(p_e, g), s_e)
        assert _dtypes(p_e) == _dtypes(params) and _dtypes(s_e.ema) == _dtypes(params)
    p_j, s_j = params, s
    for g in grads:
        p_j, s_j = jax.jit(ema.update)(apply_updates(p_j, g), s_j)
    assert_trees_close(p_e, p_j, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- #
# swa
# --------------------------------------------------------------------------- #


def _np_swa(snapshots_of, start_step, every):
    """The mean of the params at updates k >= start_step with (k - start_step) % every == 0 (k from 1)."""
    taken = [p for k, p in enumerate(snapshots_of, start=1) if k >= start_step and (k - start_step) % every == 0]
    return np.mean(taken, axis=0) if taken else snapshots_of[-1]


def _swa_run(averager, params_seq):
    state = averager.init(jax.tree.map(jnp.zeros_like, params_seq[0]))
    step = jax.jit(averager.update)
    averages = []
    for p in params_seq:
        out, state = step(p, state)
        assert jax.tree.structure(out) == jax.tree.structure(p)
        averages.append(state.average)
    return averages, state


@pytest.mark.parametrize("start_step, every", [(0, 1), (5, 3), (40, 7)])
def test_swa_is_the_mean_of_its_snapshots(start_step, every):
    rng = np.random.default_rng(0)
    seq = [{"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)} for _ in range(30)]
    averages, state = _swa_run(W.swa(start_step, every), [jax.tree.map(jnp.asarray, p) for p in seq])
    for k in range(1, 31):
        for key in ("w", "b"):
            want = _np_swa([p[key] for p in seq[:k]], start_step, every)
            np.testing.assert_allclose(averages[k - 1][key], want, rtol=1e-12, atol=1e-14, err_msg=f"{key} at {k}")
    expected_n = len([k for k in range(1, 31) if k >= start_step and (k - start_step) % every == 0])
    assert int(state.n_averaged) == expected_n and int(state.count) == 30


def test_swa_matches_torch_averaged_model():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel

    rng = np.random.default_rng(1)
    seq = [rng.standard_normal(4) for _ in range(12)]
    model = torch.nn.Linear(4, 1, bias=False).double()
    averaged = AveragedModel(model)
    for p in seq:
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(p[None, :]))
        averaged.update_parameters(model)
    averages, _ = _swa_run(W.swa(), [jnp.asarray(p) for p in seq])
    np.testing.assert_allclose(averages[-1], averaged.module.weight.detach().numpy()[0], rtol=1e-12)


def test_swa_start_step_traced_under_vmap_equals_a_loop():
    seq = [jnp.full((2,), float(k)) for k in range(1, 16)]

    def final(start):
        state = W.swa(start, 2).init(seq[0])
        for p in seq:
            _, state = W.swa(start, 2).update(p, state)
        return state.average

    starts = jnp.asarray([1, 4, 9])
    np.testing.assert_allclose(jax.vmap(final)(starts), np.stack([final(int(s)) for s in starts]), rtol=1e-12)


def test_swa_bad_arguments_and_state_are_named():
    with pytest.raises(ValueError, match="^swa: start_step"):
        W.swa(-1)
    with pytest.raises(ValueError, match="^swa: every"):
        W.swa(0, 0)
    averager = W.swa()
    with pytest.raises(ValueError, match="params and swa state must have the same leaf shapes"):
        averager.update({"w": jnp.ones(3)}, averager.init({"w": jnp.ones(2)}))
