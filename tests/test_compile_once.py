"""Optimizers, schedules and wrappers are pytrees of their numeric hyperparameters.

An optimizer passed as an *argument* to a jitted step is flattened like any
other pytree: its float hyperparameters (learning rates, betas, every schedule
argument) are leaves, traced; ints, bools, strings and functions are static.
So a new learning rate is a new leaf value, not a new program: these tests
count the traces (one for 20 learning rates), check that each run equals the
optimizer built directly with its value, that every alias of
``test_properties.OPTIMIZERS`` round-trips ``tree_unflatten`` with its
hyperparameters as named leaves, that ``vmap`` over a stacked batch of
optimizers equals a loop, and that a second process finds the step in JAX's
persistent compilation cache.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_properties import LR, OPTIMIZERS, SCHEDULES, build

import jaxopt_lite as jol

LRS = np.linspace(0.01, 0.2, 20).tolist()


def _params():
    return {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]]), "b": jnp.asarray([0.3, -0.7])}


def _grads(params):
    """The gradient of ``0.25 ||p||^2 - 0.2 sum(p)`` (a quadratic with its minimum at 0.4)."""
    return jax.tree.map(lambda p: 0.5 * p - 0.2, params)


def _close(actual, expected, what, rtol=1e-9, atol=1e-12):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(b, np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=f"{what} at {jax.tree_util.keystr(path)}",
        )


def _run_eager(opt, n_steps, extra=None):
    """``n_steps`` eager steps of ``opt`` from ``_params()``; the params after each step."""
    params, state, trajectory = _params(), None, []
    state = opt.init(params)
    for _ in range(n_steps):
        grads = _grads(params)
        updates, state = opt.update(grads, state, params, **(extra(grads) if extra else {}))
        params = jol.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory


def _counted_step(extra=None):
    """A jitted ``step(opt, params, state)`` and a list whose length is its number of traces."""
    traces = []

    @jax.jit
    def step(opt, params, state):
        traces.append(None)
        grads = _grads(params)
        updates, state = opt.update(grads, state, params, **(extra(grads) if extra else {}))
        return jol.apply_updates(params, updates), state

    return step, traces


def _counted_run(n_steps, extra=None):
    """A jitted ``run(opt)``: init and ``n_steps`` steps from ``_params()``; and the list of its traces."""
    traces = []

    @jax.jit
    def run(opt):
        traces.append(None)
        params = _params()
        state = opt.init(params)
        for _ in range(n_steps):
            grads = _grads(params)
            updates, state = opt.update(grads, state, params, **(extra(grads) if extra else {}))
            params = jol.apply_updates(params, updates)
        return params

    return run, traces


def _check_one_compile_for_twenty_learning_rates(make, n_steps=3):
    step, traces = _counted_step()
    for lr in LRS:
        opt = make(lr)
        params = _params()
        state = opt.init(params)
        expected = _run_eager(make(lr), n_steps)  # the optimizer built directly with this value
        for i in range(n_steps):
            params, state = step(opt, params, state)
            _close(params, expected[i], f"learning rate {lr}, step {i}")
    assert len(traces) == 1, f"{len(traces)} traces for {len(LRS)} learning rates"
    assert step._cache_size() == 1


# --------------------------------------------------------------------------- #
# One compilation for 20 learning rates
# --------------------------------------------------------------------------- #


def test_adam_twenty_learning_rates_one_compile():
    _check_one_compile_for_twenty_learning_rates(lambda lr: jol.adam(lr))


def test_chain_with_a_schedule_twenty_learning_rates_one_compile():
    def make(lr):
        schedule = jol.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=2, decay_steps=10, end_value=0.1 * lr)
        return jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(schedule, weight_decay=1e-2))

    _check_one_compile_for_twenty_learning_rates(make, n_steps=4)


def test_multisteps_twenty_learning_rates_one_compile():
    _check_one_compile_for_twenty_learning_rates(lambda lr: jol.MultiSteps(jol.adam(lr), every_k_schedule=2), 4)


def test_inject_hyperparams_twenty_learning_rates_one_compile():
    # A new inject_hyperparams(...) each time: equal factories and options give equal structures.
    def make(lr):
        return jol.inject_hyperparams(jol.sgd)(learning_rate=jol.linear_schedule(lr, 0.1 * lr, 3), momentum=0.9)

    _check_one_compile_for_twenty_learning_rates(make)


def test_other_wrappers_twenty_learning_rates_one_compile():
    def make(lr):
        inner = jol.partition({"adam": jol.adam(lr), "sgd": jol.sgd(2 * lr, momentum=0.5)}, {"w": "adam", "b": "sgd"})
        return jol.apply_if_finite(jol.named_chain(("clip", jol.clip(1.0)), ("opt", inner)), 3)

    _check_one_compile_for_twenty_learning_rates(make)
    masked = lambda lr: jol.masked(jol.adamw(lr, weight_decay=0.1), {"w": True, "b": False})
    _check_one_compile_for_twenty_learning_rates(masked)


# --------------------------------------------------------------------------- #
# Every alias of the property tests
# --------------------------------------------------------------------------- #

# Rows whose builder wraps ``update`` (to pass an extra argument) are a plain transformation of
# that closure; the alias itself is the pytree: name -> (alias builder, extra arguments of update).
_DIRECT = {
    "momo": (
        lambda learning_rate=LR, **kw: jol.contrib.momo(learning_rate, weight_decay=0.01, **kw),
        lambda g: {"value": 0.025 * jol.tree.norm(g, squared=True)},
    ),
    "momo_adam": (
        lambda learning_rate=LR, **kw: jol.contrib.momo_adam(learning_rate, weight_decay=0.01, **kw),
        lambda g: {"value": 0.025 * jol.tree.norm(g, squared=True)},
    ),
    "polyak_sgd": (
        lambda learning_rate=LR, **kw: jol.polyak_sgd(max_learning_rate=learning_rate, **kw),
        lambda g: {"value": 0.5 * jol.tree.norm(g, squared=True)},
    ),
    "sophia": (
        lambda learning_rate=LR, **kw: jol.contrib.sophia(learning_rate, weight_decay=0.01, update_interval=2, **kw),
        lambda g: {"obj_fn": lambda p: 50.0 * jol.tree.norm(p, squared=True)},
    ),
}
# The leaf the jit test changes (tripled), when it is not ``learning_rate``: name -> (leaf, argument of the row's
# builder that sets it, the argument's value for a leaf value). ldog's row builds ``scale(-learning_rate)``;
# COCOB is invariant to the scale of its input, so its learning rate changes nothing: change alpha there.
_CHANGED = {
    "ldog": ("step_size", "learning_rate", lambda v: -v),
    "polyak_sgd": ("max_learning_rate", "learning_rate", lambda v: v),
    "chain_clip_adam_schedule": ("peak_value", "learning_rate", lambda v: v),
    "cocob": ("alpha", "alpha", lambda v: v),
}


def _make(name, **hps):
    if name in _DIRECT:
        return _DIRECT[name][0](**hps)
    return build(name, **hps)


def _extra(name):
    return _DIRECT[name][1] if name in _DIRECT else None


def _leaf_names(opt):
    """The argument name of each leaf (its path's last attribute)."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(opt)[0]:
        attrs = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
        names.append(attrs[-1] if attrs else jax.tree_util.keystr(path))
    return names


def test_every_alias_round_trips_and_its_leaves_are_its_named_float_hyperparameters():
    for name, (fn, fixed, hps) in OPTIMIZERS.items():
        opt = _make(name)
        assert isinstance(opt, jol.GradientTransformation), name
        leaves, treedef = jax.tree.flatten(opt)
        assert leaves, f"{name}: no leaves"
        assert all(isinstance(x, float) for x in leaves), f"{name}: leaves {leaves}"
        rebuilt = jax.tree.unflatten(treedef, leaves)
        assert type(rebuilt) is type(opt)
        assert jax.tree.structure(rebuilt) == treedef and jax.tree.leaves(rebuilt) == leaves, name
        # (What a rebuilt optimizer computes is checked under jit below, against the alias built directly.)
        names = set(_leaf_names(opt))
        assert _CHANGED.get(name, ("learning_rate",))[0] in names, f"{name}: leaves named {sorted(names)}"
        if getattr(fn, "__module__", "").startswith("jaxopt_lite"):  # the row calls the alias itself
            defaults = {n: q.default for n, q in inspect.signature(fn).parameters.items()}
            floats = {hp for hp in hps if isinstance({**defaults, "learning_rate": LR, **fixed}[hp], float)}
            assert floats <= names, f"{name}: {sorted(floats - names)} are not leaves; leaves: {sorted(names)}"


def test_every_alias_under_jit_changing_a_leaf_changes_the_result_without_a_retrace():
    """One trace for three optimizers: the alias, it with a leaf tripled (the learning rate; alpha for COCOB), and
    it built directly with the tripled value, which computes exactly what the changed one does."""
    for name in OPTIMIZERS:
        opt = _make(name)
        leaf, argument, value = _CHANGED.get(name, ("learning_rate", "learning_rate", lambda v: v))
        leaves, treedef = jax.tree.flatten(opt)
        hits = [n == leaf for n in _leaf_names(opt)]
        new_value = 3.0 * leaves[hits.index(True)]
        changed = jax.tree.unflatten(treedef, [new_value if hit else x for x, hit in zip(leaves, hits)])
        direct = _make(name, **{argument: value(new_value)})
        run, traces = _counted_run(2, _extra(name))
        results = [run(o) for o in (opt, changed, direct)]
        assert len(traces) == 1, f"{name}: {len(traces)} traces"
        assert not np.array_equal(results[0]["w"], results[1]["w"]), f"{name}: changing {leaf} changed nothing"
        for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[2])):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} with {argument}={value(new_value)}")


def _vmapped_run(stacked, n_steps, extra=None):
    def run(opt):
        params = _params()
        state = opt.init(params)
        for _ in range(n_steps):
            grads = _grads(params)
            updates, state = opt.update(grads, state, params, **(extra(grads) if extra else {}))
            params = jol.apply_updates(params, updates)
        return params

    return jax.jit(jax.vmap(run))(stacked)


def test_vmap_over_a_stacked_batch_of_optimizers_equals_a_loop():
    for name in ("adam", "chain_clip_adam_schedule", "lion", "adafactor", "prodigy", "sophia", "mechanize_sgd"):
        opts = [_make(name, learning_rate=v) for v in (0.5 * LR, LR, 2 * LR)]
        batched = _vmapped_run(jol.sweeps.stack(opts), 2, _extra(name))
        step, traces = _counted_step(_extra(name))
        for i, opt in enumerate(opts):  # the loop: one jitted step, the optimizer an argument
            params = _params()
            state = opt.init(params)
            for _ in range(2):
                params, state = step(opt, params, state)
            _close(jax.tree.map(lambda x, i=i: x[i], batched), params, f"{name}[{i}]", rtol=1e-7, atol=1e-10)
        assert len(traces) == 1


def test_vmap_over_stacked_wrappers_and_run_sweep():
    def make(lr):
        schedule = jol.warmup_cosine_decay_schedule(0.0, lr, 1, 6)
        return jol.MultiSteps(jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(schedule)), every_k_schedule=2)

    opts = [make(lr) for lr in (0.05, 0.1, 0.3)]
    stacked = jol.sweeps.stack(opts)
    assert jax.tree.leaves(stacked)[0].shape == (3,)
    batched = _vmapped_run(stacked, 4)
    for i, opt in enumerate(opts):
        _close(jax.tree.map(lambda x, i=i: x[i], batched), _run_eager(opt, 4)[-1], f"MultiSteps[{i}]")

    def train(opt):
        params = _params()
        return jax.tree.leaves(jol.apply_updates(params, opt.update(_grads(params), opt.init(params), params)[0]))

    swept = jol.sweeps.run_sweep(train, jol.sweeps.stack([jol.adam(lr) for lr in (0.1, 0.2)]))
    np.testing.assert_allclose(swept[0][1], train(jol.adam(0.2))[0])
    with pytest.raises(ValueError, match="item 1 differs in structure"):
        jol.sweeps.stack([jol.adam(0.1), jol.adam(0.1, nesterov=True)])


def test_every_schedule_is_a_pytree_and_vmap_over_stacked_schedules_equals_a_loop():
    counts = jnp.arange(0, 25, dtype=jnp.int32)
    for name, (builder, base, values) in SCHEDULES.items():
        schedule = builder(**base)
        leaves, treedef = jax.tree.flatten(schedule)
        assert leaves and all(isinstance(x, float) for x in leaves), f"{name}: leaves {leaves}"
        np.testing.assert_array_equal(jax.tree.unflatten(treedef, leaves)(counts), schedule(counts), err_msg=name)
        # Vary every float argument (ints are static, so they stay): three schedules of one structure.
        variants = [
            builder(**{k: (vals[i] if isinstance(base[k], float) else base[k]) for k, vals in values.items()})
            for i in range(3)
        ]
        batched = jax.jit(jax.vmap(lambda s: s(counts)))(jol.sweeps.stack(variants))
        for i, s in enumerate(variants):
            np.testing.assert_allclose(batched[i], s(counts), rtol=1e-12, atol=1e-12, err_msg=f"{name}[{i}]")


# --------------------------------------------------------------------------- #
# What is static, and what Optax users rely on
# --------------------------------------------------------------------------- #


def test_static_arguments_are_the_structure():
    step, traces = _counted_step()
    params = _params()

    def run(opt):
        step(opt, params, opt.init(params))

    run(jol.adam(0.1))
    run(jol.adam(0.2, b1=0.5))  # floats: the same program
    assert len(traces) == 1
    run(jol.adam(0.1, nesterov=True))  # a bool: another program
    assert len(traces) == 2
    run(jol.MultiSteps(jol.adam(0.1), 3))  # ints (every_k_schedule) are static
    run(jol.MultiSteps(jol.adam(0.3), 3))
    assert len(traces) == 3
    run(jol.MultiSteps(jol.adam(0.1), 4))
    assert len(traces) == 4
    schedule = lambda count: 0.1 / (1 + count)  # a user function: static, compared by identity
    run(jol.sgd(schedule))
    run(jol.sgd(schedule))
    assert len(traces) == 5
    run(jol.sgd(lambda count: 0.1 / (1 + count)))  # a new function object: a new program
    assert len(traces) == 6
    run(jol.sgd(jnp.asarray(0.1)))  # arrays are leaves: another dtype/weak type, another signature
    run(jol.sgd(jnp.asarray(0.2)))
    assert len(traces) == 7
    assert jax.tree.leaves(jol.linear_schedule(1.0, 0.0, 10)) == [1.0, 0.0]  # transition_steps=10: static
    assert len(jax.tree.leaves(jol.linear_schedule(1.0, 0.0, jnp.asarray(10)))) == 3  # an array: a leaf


def test_grad_with_respect_to_an_optimizer_is_an_optimizer_of_derivatives():
    def loss_after_steps(opt):
        params = _params()
        state = opt.init(params)
        for _ in range(3):
            updates, state = opt.update(_grads(params), state, params)
            params = jol.apply_updates(params, updates)
        return jol.tree.norm(params, squared=True)

    grad = jax.grad(loss_after_steps)(jol.sgd(0.1, momentum=0.9))
    assert type(grad) is type(jol.sgd(0.1)) and _leaf_names(grad) == ["learning_rate", "momentum", "dampening"]
    by_value = jax.grad(lambda lr, m: loss_after_steps(jol.sgd(lr, momentum=m)), argnums=(0, 1))(0.1, 0.9)
    np.testing.assert_allclose([grad.learning_rate, grad.momentum], by_value, rtol=1e-12)


def test_key_paths_name_the_arguments():
    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.linear_schedule(0.0, 1e-3, 5), weight_decay=1e-4))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt)[0]]
    assert paths == [  # transition_steps=5 and transition_begin=0 are ints: static
        ".transforms[0].max_norm",
        ".transforms[1].learning_rate.init_value",
        ".transforms[1].learning_rate.end_value",
        ".transforms[1].b1",
        ".transforms[1].b2",
        ".transforms[1].eps",
        ".transforms[1].eps_root",
        ".transforms[1].weight_decay",
    ]
    assert opt.transforms[1].learning_rate.end_value == 1e-3  # the arguments read as attributes
    assert "adamw(learning_rate=linear_schedule(" in repr(opt)


def test_optax_surface_of_a_pytree_optimizer():
    opt = jol.adam(0.1)
    params = _params()
    assert isinstance(opt, jol.GradientTransformationExtraArgs) and isinstance(opt, tuple) and len(opt) == 2
    init, update = opt
    assert opt[0] is init or callable(opt[0])
    state = init(params)
    u1, _ = update(_grads(params), state, params)
    u2, _ = opt.update(_grads(params), opt.init(params), params)
    _close(u1, u2, "unpacked")
    same = opt
    assert opt == same and hash(opt) == hash(same) and opt != jol.adam(0.1)  # identity, as Optax's closures
    replaced = opt._replace(update=lambda u, s, p=None, **kw: (u, s))
    assert type(replaced) is jol.GradientTransformationExtraArgs  # a plain transformation: no longer a record
    assert jax.tree.leaves(copy.copy(opt)) == jax.tree.leaves(opt)
    plain = jol.scale_by_adam()
    assert isinstance(plain, jol.GradientTransformation) and not isinstance(plain, jol.GradientTransformationExtraArgs)
    assert type(jol.with_extra_args_support(plain)) is jol.GradientTransformationExtraArgs
    # A plain (user-built) transformation inside a chain is static: the chain still works and flattens.
    user = jol.GradientTransformation(lambda p: (), lambda u, s, p=None: (jax.tree.map(lambda x: 2 * x, u), s))
    chained = jol.chain(user, jol.sgd(0.5))
    assert jax.tree.leaves(chained) == jax.tree.leaves(jol.sgd(0.5))  # the user transformation: no leaves
    _close(chained.update(_grads(params), chained.init(params))[0], jax.tree.map(lambda g: -g, _grads(params)), "user")


def test_unflattening_with_placeholders_builds_nothing_and_errors_still_name_the_alias():
    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adam(jol.cosine_decay_schedule(0.1, 10)))
    # JAX unflattens with placeholders (vmap's axis specs do); nothing is built until used.
    placeholders = jax.tree.map(lambda _: object(), opt)
    assert len(jax.tree.leaves(placeholders)) == len(jax.tree.leaves(opt))
    batched = jax.tree.map(lambda x: jnp.full((2,), x), opt)
    params = _params()
    out = jax.vmap(lambda o, p: o.update(_grads(p), o.init(p), p)[0], in_axes=(0, None))(batched, params)
    assert out["w"].shape == (2, 3, 2)
    # Concrete leaves set by tree.map are validated when the rebuilt optimizer is first used.
    bad = jax.tree.map(lambda x: -1.0, jol.adam(0.1))
    with pytest.raises(ValueError, match="adam: "):
        bad.init(params)
    # An error inside a jitted step taking the optimizer names the alias, as before.
    step, _ = _counted_step()
    with pytest.raises(ValueError, match="adam: the state passed to update"):
        step(jol.adam(0.1), params, jol.adabelief(0.1).init(params))


def test_per_call_overhead_of_an_optimizer_argument_is_small():
    """Passing the optimizer costs its flatten and its leaves' transfer: tens of microseconds, not milliseconds."""
    import time

    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 50)))
    params = _params()
    state = opt.init(params)
    grads = _grads(params)
    as_argument = jax.jit(lambda o, p, s, g: o.update(g, s, p))
    closed_over = jax.jit(lambda p, s, g: opt.update(g, s, p))

    def best_of(f, *args, n=200):
        jax.block_until_ready(f(*args))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                out = f(*args)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / n)
        return min(times)

    overhead = best_of(as_argument, opt, params, state, grads) - best_of(closed_over, params, state, grads)
    assert overhead < 1e-3, f"{overhead * 1e6:.0f} us per call"  # measured: about 20 us for these 10 leaves
    flatten = best_of(lambda: jax.tree.flatten(opt), n=2000)
    assert flatten < 1e-4, f"flattening takes {flatten * 1e6:.1f} us"  # measured: about 2 us


# --------------------------------------------------------------------------- #
# The persistent compilation cache
# --------------------------------------------------------------------------- #

_CACHE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import numpy as np
    import jaxopt_lite as jol

    events = {}
    jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
    traces = []

    @jax.jit
    def train(opt, params, grads):
        traces.append(None)
        state = opt.init(params)
        for _ in range(3):
            updates, state = opt.update(grads, state, params)
            params = jol.apply_updates(params, updates)
        return params

    params = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    grads = {"w": np.full((4, 3), 0.1, np.float32), "b": np.full(3, -0.2, np.float32)}
    out = []
    for lr in np.linspace(1e-3, 1e-1, 20):
        schedule = jol.warmup_cosine_decay_schedule(0.0, float(lr), 2, 10)
        opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(schedule, weight_decay=1e-4))
        out.append(np.asarray(train(opt, params, grads)["w"]).tolist())
    print(json.dumps({"traces": len(traces), "events": events, "out": out}))
    """
)


def test_a_second_process_finds_the_step_in_the_persistent_compilation_cache(tmp_path):
    cache = tmp_path / "jax_cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "0"}
    env.pop("XLA_FLAGS", None)

    def run():
        done = subprocess.run(
            [sys.executable, "-c", _CACHE_SCRIPT, str(cache)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    files = sorted(os.listdir(cache))
    second = run()
    hits = "/jax/compilation_cache/cache_hits"
    misses = "/jax/compilation_cache/cache_misses"
    requests = "/jax/compilation_cache/compile_requests_use_cache"
    assert first["traces"] == second["traces"] == 1  # 20 learning rates, one trace in each process
    assert first["events"].get(misses, 0) == first["events"][requests] >= 1  # a fresh cache: everything compiled
    assert second["events"].get(misses, 0) == 0, second["events"]  # the second process compiles nothing
    assert second["events"].get(hits, 0) == second["events"][requests] == first["events"][requests]
    assert sorted(os.listdir(cache)) == files  # and writes no new entry
    assert second["out"] == first["out"]
