"""Optax compatibility where the names already exist (issue 14), with Optax 0.2.8 as the oracle."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol

# --------------------------------------------------------------------------- #
# 1. Complex parameters: every alias Optax runs on complex numbers.
# --------------------------------------------------------------------------- #

COMPLEX_ALIASES = {
    "sgd": {"learning_rate": 0.05, "momentum": 0.9},
    "adagrad": {"learning_rate": 0.5},
    "rmsprop": {"learning_rate": 0.05},
    "adam": {"learning_rate": 0.1},
    "adamw": {"learning_rate": 0.1},
    "amsgrad": {"learning_rate": 0.1},
    "adamax": {"learning_rate": 0.1},
    "adamaxw": {"learning_rate": 0.1},
    "nadam": {"learning_rate": 0.1},
    "nadamw": {"learning_rate": 0.1},
    "radam": {"learning_rate": 0.1},
    "adabelief": {"learning_rate": 0.1},
    "lamb": {"learning_rate": 0.05},
    "lars": {"learning_rate": 1.0},
}
TARGET = jnp.asarray([1.0, -1.0, 1.0], jnp.complex64) * (1 + 1j)


def _objective(p):
    return jnp.sum(jnp.real((p - TARGET) * jnp.conj(p - TARGET)))


def _run_complex(lib, name, kwargs, steps=150):
    opt = getattr(lib, name)(**kwargs)
    p0 = jnp.asarray([-1.0, 10.0, 1.0], jnp.complex64)

    def body(carry, _):
        p, s = carry
        g = jnp.conj(jax.grad(_objective)(p))  # the descent direction of a real loss of complex params
        u, s = opt.update(g, s, p)
        return (lib.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), None, length=steps)
    return p


@pytest.mark.parametrize("name", sorted(COMPLEX_ALIASES))
def test_complex64_converges_and_matches_optax(name):
    ours = _run_complex(jol, name, COMPLEX_ALIASES[name])
    theirs = _run_complex(optax, name, COMPLEX_ALIASES[name])
    assert ours.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-3, atol=2e-3)
    start = float(_objective(jnp.asarray([-1.0, 10.0, 1.0], jnp.complex64)))
    assert float(_objective(ours)) <= max(1.5 * float(_objective(theirs)), 1e-4 * start)


def test_tree_norm_of_complex_is_real_modulus():
    norm = jol.tree.norm([jnp.asarray(1 + 2j), jnp.asarray(3 - 1j)])
    assert not jnp.iscomplexobj(norm)
    np.testing.assert_allclose(norm, np.sqrt(15.0), rtol=1e-6)
    np.testing.assert_allclose(norm, optax.tree.norm([jnp.asarray(1 + 2j), jnp.asarray(3 - 1j)]), rtol=1e-6)


# --------------------------------------------------------------------------- #
# 2. Hyperparameters as arrays of any float dtype; inject_hyperparams.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_hyperparameters_as_arrays_of_any_float_dtype(dtype):
    tx = jol.scale_by_adam(b2=jnp.asarray(0.95, dtype))
    p = {"w": jnp.ones(3, jnp.float32)}
    u, _ = tx.update(p, tx.init(p))
    assert u["w"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(u["w"])))
    with pytest.raises(ValueError, match=r"scale_by_adam: b2 must be in \[0, 1\), got 1.5"):
        jol.scale_by_adam(b2=jnp.asarray(1.5, dtype))


def _hp_dtypes(state):
    return {k: (jnp.result_type(v), getattr(v, "weak_type", False)) for k, v in state.hyperparams.items()}


INJECT_CASES = [
    ({}, {"learning_rate": 0.1}, jnp.float32),
    ({}, {"learning_rate": 0.1}, jnp.bfloat16),
    ({}, {"learning_rate": jnp.asarray(0.1, jnp.bfloat16), "b2": jnp.asarray(0.95, jnp.float32)}, jnp.float32),
    ({"hyperparam_dtype": jnp.float16}, {"learning_rate": jnp.asarray(0.1, jnp.bfloat16)}, jnp.float32),
    ({"hyperparam_dtype": jnp.float64}, {"learning_rate": 0.1}, jnp.float32),
    ({}, {"learning_rate": optax.linear_schedule(0.1, 0.0, 10)}, jnp.float64),
]


def _layout(tree):
    """Leaf paths (NamedTuple field names included) and dtypes: two libraries' states compare equal when laid
    out alike (their PyTreeDefs never do, since their NamedTuple classes differ)."""
    return [(jax.tree_util.keystr(p), jnp.result_type(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.mark.parametrize("wrap_kwargs,kwargs,param_dtype", INJECT_CASES)
def test_injected_hyperparameter_dtypes_match_optax(wrap_kwargs, kwargs, param_dtype):
    params = {"w": jnp.ones(3, param_dtype)}
    ours = jol.inject_hyperparams(jol.adam, **wrap_kwargs)(**kwargs)
    if param_dtype == jnp.bfloat16 and not wrap_kwargs:
        # Optax's rule stores b2=0.999 in bfloat16, where it rounds to 1.0, and Optax runs on with a
        # second moment that never moves. We keep the rule but refuse the rounded value.
        with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\), got 1"):
            ours.init(params)
        ours = jol.inject_hyperparams(jol.adam, hyperparam_dtype=jnp.float32)(**kwargs)
        assert ours.init(params).hyperparams["b2"].dtype == jnp.float32
        return
    theirs = optax.inject_hyperparams(optax.adam, **wrap_kwargs)(**kwargs)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert type(s_ours).__name__ == type(s_theirs).__name__ == "InjectStatefulHyperparamsState"
    assert s_ours._fields == s_theirs._fields
    assert _hp_dtypes(s_ours) == _hp_dtypes(s_theirs)
    assert _layout(s_ours.hyperparams_states) == _layout(s_theirs.hyperparams_states)
    u_ours, s_ours = ours.update(params, s_ours, params)
    u_theirs, s_theirs = theirs.update(params, s_theirs, params)
    np.testing.assert_allclose(np.asarray(u_ours["w"], np.float64), np.asarray(u_theirs["w"], np.float64), rtol=1e-2)


def test_inject_names_at_optax_places():
    assert jol.InjectHyperparamsState is jol.InjectStatefulHyperparamsState
    for name in ("inject_hyperparams", "inject_stateful_hyperparams", "InjectHyperparamsState",
                 "InjectStatefulHyperparamsState", "WrappedSchedule", "StatefulSchedule"):
        assert getattr(jol.schedules, name) is getattr(jol.schedules, name)
        assert hasattr(optax.schedules, name)
    assert jol.schedules.inject_hyperparams is jol.inject_hyperparams
    assert isinstance(jol.WrappedSchedule(lambda c: c), jol.schedules.StatefulSchedule)


class _LossScaledSchedule:
    """A stateful schedule: the learning rate halves at each step where ``loss`` exceeds 1."""

    def init(self):
        return {"lr": jnp.asarray(0.4)}

    def update(self, state, loss=0.0, **extra):
        return {"lr": jnp.where(loss > 1.0, 0.5 * state["lr"], state["lr"])}

    def __call__(self, state, **extra):
        return state["lr"]


def test_inject_accepts_stateful_schedules_and_prng_keys():
    params = {"w": jnp.ones(2)}
    for lib in (jol, optax):
        tx = lib.inject_hyperparams(lib.sgd)(learning_rate=_LossScaledSchedule())
        s = tx.init(params)
        u1, s = tx.update(params, s, params, loss=5.0)
        u2, s = tx.update(params, s, params, loss=5.0)
        np.testing.assert_allclose(u1["w"], -0.4)
        np.testing.assert_allclose(u2["w"], -0.2)
    for key in (jax.random.PRNGKey(3), jax.random.key(3)):
        tx = jol.inject_hyperparams(jol.noisy_sgd)(learning_rate=0.1, key=key)
        s = tx.init(params)
        assert set(s.hyperparams) == {"learning_rate", "eta", "gamma"}
        u, _ = jax.jit(tx.update)(params, s, params)
        assert bool(jnp.all(jnp.isfinite(u["w"])))


# --------------------------------------------------------------------------- #
# 3. None and empty leaves.
# --------------------------------------------------------------------------- #


def test_none_leaves_through_apply_updates_like_optax():
    params = {"a": jnp.ones(2), "b": None, "c": jnp.ones(1)}
    updates = {"a": jnp.full(2, 0.5), "b": None, "c": jnp.full(1, 0.25)}
    ours, theirs = jol.apply_updates(params, updates), optax.apply_updates(params, updates)
    assert ours["b"] is None and theirs["b"] is None
    np.testing.assert_array_equal(ours["a"], theirs["a"])
    np.testing.assert_array_equal(ours["c"], theirs["c"])
    # Beyond Optax (which raises there): a None update leaves its parameter as it is.
    np.testing.assert_array_equal(jol.apply_updates(params, {**updates, "c": None})["c"], params["c"])
    new, old = {"a": jnp.ones(2), "b": None}, {"a": jnp.zeros(2), "b": None}
    np.testing.assert_allclose(jol.incremental_update(new, old, 0.25)["a"], optax.incremental_update(new, old, 0.25)["a"])
    assert jol.incremental_update(new, old, 0.25)["b"] is None
    masked = {"a": jnp.ones(2), "n": jol.MaskedNode()}
    out = jol.apply_updates(masked, {"a": jnp.ones(2), "n": jol.MaskedNode()})
    assert isinstance(out["n"], jol.MaskedNode)


def test_none_leaves_in_tree_helpers_and_weight_decay():
    a, b = {"x": jnp.ones(2), "y": None}, {"x": jnp.ones(2), "y": None}
    assert jol.tree.add_scale(a, 2.0, b)["y"] is None
    np.testing.assert_allclose(jol.tree.add_scale(a, 2.0, b)["x"], 3.0)
    for fn in (jol.tree.update_moment, jol.tree.update_moment_per_elem_norm):
        out = fn(a, b, 0.9, 2)
        assert out["y"] is None
        np.testing.assert_allclose(out["x"], optax.tree.update_moment(a, b, 0.9, 2)["x"])
    assert jol.tree.update_infinity_moment(a, b, 0.9, 1e-8)["y"] is None
    np.testing.assert_allclose(jol.tree.add_scale(1.0, 2, 3), 7.0)
    np.testing.assert_allclose(jol.tree.bias_correction(1.0, 0.9, 1), optax.tree.bias_correction(1.0, 0.9, 1))
    np.testing.assert_allclose(jol.tree.bias_correction({"m": 1.0}, 0.5, 2)["m"], 1 / 0.75)


# --------------------------------------------------------------------------- #
# 4. Signatures.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("mode", ["hard", "smooth", "refined"])
def test_lion_modes_match_optax(mode):
    g = {"w": jnp.asarray([3.0, -0.2, 0.0, 0.5])}
    ours, theirs = jol.scale_by_lion(mode=mode, smooth_beta=2.0), optax.scale_by_lion(mode=mode, smooth_beta=2.0)
    s1, s2 = ours.init(g), theirs.init(g)
    for _ in range(3):
        u1, s1 = ours.update(g, s1)
        u2, s2 = theirs.update(g, s2)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
    with pytest.raises(ValueError, match=r"scale_by_lion: unknown lion mode 'soft'.*'hard', 'smooth', 'refined'"):
        jol.scale_by_lion(mode="soft")


def test_unitwise_norm_and_agc_axis_match_optax():
    x = jnp.arange(24.0).reshape(2, 3, 4) - 10
    for axis in (0, (0, 2), None):
        if axis is None:
            x2 = x.reshape(6, 4)
            np.testing.assert_allclose(jol.unitwise_norm(x2), optax.transforms.unitwise_norm(x2), rtol=1e-6)
            continue
        theirs = optax.transforms.unitwise_norm(x, axis=axis)
        np.testing.assert_allclose(jol.unitwise_norm(x, axis=axis), theirs, rtol=1e-6)
        p, g = {"w": x}, {"w": 5.0 * jnp.cos(x)}
        ours, _ = jol.adaptive_grad_clip(0.05, axis=axis).update(g, jol.EmptyState(), p)
        theirs, _ = optax.adaptive_grad_clip(0.05, axis=axis).update(g, optax.EmptyState(), p)
        np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-5)


def test_tree_add_many_and_associative_sum():
    t = {"a": jnp.ones(2), "b": jnp.arange(3.0)}
    np.testing.assert_allclose(jol.tree.add(t, t, t, t)["b"], 4 * jnp.arange(3.0))
    with pytest.raises(ValueError, match="tree structure"):
        jol.tree.add(t, t, {"a": 1.0})
    np.testing.assert_allclose(jol.tree.sum(t, associative_reduction=True), optax.tree.sum(t))
    np.testing.assert_allclose(jol.tree.sum(t, associative_reduction=False), 5.0)


# --------------------------------------------------------------------------- #
# 5. What Optax accepts meaningfully.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "make", [lambda: jol.exponential_decay(2.0, -3, 0.5), lambda: jol.polynomial_schedule(2.0, 0.0, 1.0, -3),
             lambda: jol.linear_schedule(2.0, 0.0, -3), lambda: jol.schedules.inverse_time_decay(2.0, -3, 0.1),
             lambda: jol.schedules.natural_exp_decay(2.0, -3, 0.1)]
)
def test_negative_transition_steps_give_a_constant_schedule_with_a_warning(make):
    with pytest.warns(UserWarning, match="transition_steps = -3 is negative; the schedule is the constant"):
        schedule = make()
    np.testing.assert_allclose([schedule(t) for t in (0, 5, 50)], 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(jol.exponential_decay(2.0, 0, 0.5)(7), 2.0)  # 0: constant, silently


def test_negative_transition_steps_after_warmup_like_optax():
    with pytest.warns(UserWarning, match="warmup_exponential_decay_schedule: transition_steps = -10 is negative"):
        ours = jol.warmup_exponential_decay_schedule(0.0, 1.0, 5, -10, 0.5)
    theirs = optax.warmup_exponential_decay_schedule(0.0, 1.0, 5, -10, 0.5)
    np.testing.assert_allclose([ours(t) for t in range(0, 40, 3)], [theirs(t) for t in range(0, 40, 3)], rtol=1e-6)


def test_trace_with_decay_one_is_a_running_sum_like_optax():
    g = {"w": jnp.asarray([1.0, -2.0])}
    ours, theirs = jol.trace(1.0), optax.trace(1.0)
    s1, s2 = ours.init(g), theirs.init(g)
    for _ in range(4):
        u1, s1 = ours.update(g, s1)
        u2, s2 = theirs.update(g, s2)
    np.testing.assert_allclose(u1["w"], u2["w"])
    np.testing.assert_allclose(u1["w"], [4.0, -8.0])


def test_integer_parameters_are_refused_with_how_to_mask_them():
    with pytest.raises(TypeError, match=r"adam.*\['step'\].*int32.*masked\(tx, mask\)"):
        jol.adam(0.1).init({"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)})
    opt = jol.masked(jol.adam(0.1), {"w": True, "step": False})
    params = {"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)}
    updates, _ = opt.update({"w": jnp.ones(2), "step": None}, opt.init(params), params)
    assert updates["step"] is None
    assert jol.apply_updates(params, updates)["step"].dtype == jnp.int32


# --------------------------------------------------------------------------- #
# 6. Introspection; 7. masked with a stand-in params tree.
# --------------------------------------------------------------------------- #

ALIASES = ["sgd", "noisy_sgd", "sign_sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "amsgrad", "adamax",
           "adamaxw", "nadam", "nadamw", "radam", "lion", "adabelief", "lamb", "lars"]


@pytest.mark.parametrize("name", ALIASES)
def test_learning_rate_annotation_is_the_real_type(name):
    annotation = inspect.signature(getattr(jol, name)).parameters["learning_rate"].annotation
    assert not isinstance(annotation, str)
    assert annotation == jol.ScalarOrSchedule or annotation == (jol.ScalarOrSchedule | None)
    assert inspect.signature(jol.kernels.adamw_step).parameters["learning_rate"].annotation == jol.ScalarOrSchedule


def test_masked_works_with_optax_tree_map_params():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    opt = jol.masked(jol.adam(0.1), lambda p: {"w": True, "b": False})
    state = opt.init(params)
    doubled = optax.tree_utils.tree_map_params(opt, lambda x: 2 * x, state, transform_non_params=lambda x: x)
    assert jax.tree.structure(doubled) == jax.tree.structure(state)
    with pytest.raises(ValueError, match=r"masked: mask must have the tree structure of params"):
        opt.update({"w": jnp.ones((2, 2))}, state, {"w": jnp.ones((2, 2))})
