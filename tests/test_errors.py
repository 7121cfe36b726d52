"""Bad input gets a clear error that names the problem; valid input never gives a silent NaN.

Every check of a hyperparameter happens when the optimizer is built, on concrete
values only: traced values (inside ``jit``/``vmap``/``grad``) are not checked
and never forced to the host.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import OPTIMIZERS, make_tree, tree_specs
from test_properties import build as build_any

import jaxopt_lite as jol
from jaxopt_lite import schedules as sch

# name -> (constructor, fixed keyword arguments); every alias, and both NAdam definitions.
ALIASES = {
    "sgd": (jol.sgd, {}),
    "sgd_momentum": (jol.sgd, {"momentum": 0.9}),
    "sgd_nesterov": (jol.sgd, {"momentum": 0.9, "nesterov": True}),
    "sgd_momentum_dampening": (jol.sgd, {"momentum": 0.9, "dampening": 0.5}),
    "noisy_sgd": (jol.noisy_sgd, {}),
    "sign_sgd": (jol.sign_sgd, {}),
    "adagrad": (jol.adagrad, {}),
    "adadelta": (jol.adadelta, {}),
    "rmsprop": (jol.rmsprop, {}),
    "rmsprop_centered_momentum": (jol.rmsprop, {"centered": True, "momentum": 0.9}),
    "adam": (jol.adam, {}),
    "adamw": (jol.adamw, {}),
    "amsgrad": (jol.amsgrad, {}),
    "adamax": (jol.adamax, {}),
    "adamaxw": (jol.adamaxw, {}),
    "nadam": (jol.nadam, {}),
    "nadam_momentum_decay": (jol.nadam, {"momentum_decay": 0.004}),
    "nadamw": (jol.nadamw, {}),
    "radam": (jol.radam, {}),
    "lion": (jol.lion, {}),
    "adabelief": (jol.adabelief, {}),
    "lamb": (jol.lamb, {}),
    "lars": (jol.lars, {}),
}
NAMES = sorted(ALIASES)
# Aliases whose state has one leaf per parameter (so an updates/state mismatch is detectable).
STATEFUL = [n for n in NAMES if n not in ("sgd", "sign_sgd", "noisy_sgd")]


def build(name, learning_rate=0.1, **kwargs):
    fn, fixed = ALIASES[name]
    return fn(learning_rate, **{**fixed, **kwargs})


def with_chain(name):
    """The alias, and the alias behind a clip in a chain (errors must survive composition)."""
    return [build(name), jol.chain(jol.clip_by_global_norm(1.0), build(name))]


PARAMS = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
GRADS = {"w": jnp.full((3, 2), 0.5, jnp.float32), "b": jnp.full((2,), -0.5, jnp.float32)}
# Same leaves, another structure: an extra leaf, and a list instead of a dict.
GRADS_EXTRA_LEAF = {**GRADS, "extra": jnp.ones((2,), jnp.float32)}
GRADS_AS_LIST = [GRADS["b"], GRADS["w"]]
STRUCTURE_MSG = r"updates and params must have the same tree structure"


# --------------------------------------------------------------------------- #
# Tree structure mismatches
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [GRADS_EXTRA_LEAF, GRADS_AS_LIST], ids=["extra_leaf", "list"])
@pytest.mark.parametrize("name", NAMES)
def test_update_rejects_updates_and_params_of_different_structure(name, bad):
    for opt in with_chain(name):
        state = opt.init(PARAMS)
        with pytest.raises(ValueError, match=STRUCTURE_MSG) as info:
            opt.update(bad, state, PARAMS)
        # The message says where and how the structures differ: the extra key, or a list against a dict.
        message = str(info.value)
        assert "'extra'" in message or ("updates has a list of 2" in message and "params has a dict of 2" in message)


@pytest.mark.parametrize("bad", [GRADS_EXTRA_LEAF, GRADS_AS_LIST], ids=["extra_leaf", "list"])
def test_apply_updates_rejects_updates_of_different_structure(bad):
    with pytest.raises(ValueError, match=STRUCTURE_MSG):
        jol.apply_updates(PARAMS, bad)


@pytest.mark.parametrize("name", STATEFUL)
def test_update_rejects_updates_that_do_not_match_the_state(name):
    """The state was built for other params: the transform owning the state says so."""
    for opt in with_chain(name):
        state = opt.init(PARAMS)
        # params match the updates, so only the state can be blamed.
        other_params = jax.tree.map(jnp.ones_like, GRADS_EXTRA_LEAF)
        with pytest.raises(ValueError, match=r"updates and .*state must have the same tree structure"):
            opt.update(GRADS_EXTRA_LEAF, state, other_params)


@pytest.mark.parametrize("name", STATEFUL)
def test_update_without_params_rejects_updates_that_do_not_match_the_state(name):
    if name in ("adadelta", "adamw", "adamaxw", "nadamw", "lion", "lamb", "lars"):
        pytest.skip("weight decay and trust ratios need params: covered by test_*_without_params")
    opt = build(name)
    state = opt.init(PARAMS)
    with pytest.raises(ValueError, match=r"updates and .*state must have the same tree structure"):
        opt.update(GRADS_AS_LIST, state)


def test_chain_rejects_the_state_of_another_optimizer():
    opt = jol.sgd(0.1, momentum=0.9)
    wrong_state = jol.chain(jol.clip(1.0), jol.adam(0.1), jol.scale(1.0)).init(PARAMS)
    with pytest.raises(ValueError, match=r"^sgd: chain: expected a state tuple of 2 entries"):
        opt.update(GRADS, wrong_state, PARAMS)
    # Same length, other types: the optimizer called, both state types and where they differ.
    with pytest.raises(ValueError, match=r"^adam: the state passed to update is not one adam's init makes .*"
                                         r"at state\[0\] adam's init makes a ScaleByAdamState .* has a TraceState"):
        jol.adam(0.1).update(GRADS, opt.init(PARAMS), PARAMS)


def test_the_state_check_reuses_the_structure_init_made():
    """``update`` compares the state's structure with the one ``init`` makes; after ``init`` on parameters of that
    structure and those shapes it needs no second (abstract) ``init``, which is a third of a 1000-leaf trace."""
    calls = []

    def init(params):
        calls.append(1)
        return jol.ScaleByAdamState(jnp.zeros([], jnp.int32), params, params)

    opt = jol.base.with_owner("probe", jol.GradientTransformation(init, lambda u, s, p=None: (u, s)))
    state = opt.init(PARAMS)
    jax.jit(opt.update)(GRADS, state, PARAMS)
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"^probe: the state passed to update is not one probe's init makes"):
        opt.update(GRADS, jol.sgd(0.1, momentum=0.9).init(PARAMS), PARAMS)  # still refused (diagnosed by an init)
    other = {k: jnp.ones((4, *v.shape)) for k, v in PARAMS.items()}
    before = len(calls)
    opt.update(other, jax.tree.map(jnp.zeros_like, opt.init(PARAMS)._replace(mu=other, nu=other)), other)
    assert len(calls) == before + 2  # the init called here, and one abstract init for shapes it never saw
    opt.update(other, opt.init(other), other)
    assert len(calls) == before + 3  # the init called here only


# --------------------------------------------------------------------------- #
# Every optimizer: a foreign state, swapped arguments, params of another shape
# --------------------------------------------------------------------------- #


def _owner(name):
    """The public constructor's name, which its errors start with (``None`` for the tests' own wrappers)."""
    fn = OPTIMIZERS[name][0]
    return None if fn.__name__.startswith("_") or fn.__name__ == "build" else fn.__name__


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_foreign_or_swapped_state_is_named_with_the_optimizer(name):
    opt = build_any(name)
    state = opt.init(PARAMS)
    owner = _owner(name)
    for state_arg, params_arg in (({"not_a_state": jnp.zeros(())}, PARAMS), (PARAMS, state)):
        with pytest.raises((ValueError, TypeError)) as info:
            opt.update(GRADS, state_arg, params_arg)
        message = str(info.value)
        assert "state" in message, message
        if owner is not None:
            assert message.startswith(f"{owner}: "), message
            assert "swapped" in message, message


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_params_of_another_shape_are_refused_not_broadcast(name):
    """A (1, 2) parameter for a (3, 2) gradient would broadcast into weight decay or a trust ratio."""
    opt = build_any(name)
    state = opt.init(PARAMS)
    bad = {**PARAMS, "w": jnp.ones((1, 2), jnp.float32)}
    with pytest.raises(ValueError, match=r"updates and params must have the same leaf shapes, but at \['w'\]") as info:
        opt.update(GRADS, state, bad)
    owner = _owner(name)
    assert owner is None or str(info.value).startswith(f"{owner}: "), str(info.value)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=tree_specs, seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(OPTIMIZERS)), data=st.data())
def test_random_trees_with_one_gradient_of_another_shape_are_refused(spec, seed, name, data):
    """Any optimizer, any tree: one gradient leaf with an extra axis is named, never broadcast."""
    params = make_tree(spec, np.random.default_rng(seed))
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    i = data.draw(st.integers(0, len(paths_and_leaves) - 1), label="leaf")
    path, leaf = paths_and_leaves[i]
    grads = [x for _, x in paths_and_leaves]
    grads[i] = jnp.ones((*leaf.shape, 2) if leaf.ndim else (2, 2), leaf.dtype)  # (2,) would be a per-example batch
    opt = build_any(name)
    with pytest.raises(ValueError, match="shape") as info:
        opt.update(treedef.unflatten(grads), opt.init(params), params)
    assert jax.tree_util.keystr(path) in str(info.value), str(info.value)


def test_a_structure_mismatch_names_the_first_differing_key():
    """60 layers: the message names the layer that differs, not two truncated tree dumps."""
    params = {f"layer_{i:02d}": {"w": jnp.ones(2), "b": jnp.ones(1)} for i in range(60)}
    grads = {**params, "layer_37": {"w": jnp.ones(2), "bias": jnp.ones(1)}}
    opt = jol.adam(0.1)
    with pytest.raises(ValueError, match=r"^adam: updates and params .* differ at \['layer_37'\]: .*\['bias'\]"):
        opt.update(grads, opt.init(params), params)


@pytest.mark.parametrize("wrapper, state_type", [
    (lambda inner: jol.MultiSteps(inner, 2), "MultiStepsState"),
    (lambda inner: jol.apply_if_finite(inner, 3), "ApplyIfFiniteState"),
    (lambda inner: jol.masked(inner, {"w": True, "b": False}), "MaskedState"),
], ids=["MultiSteps", "apply_if_finite", "masked"])
def test_wrappers_name_themselves_and_their_state_type(wrapper, state_type):
    opt = wrapper(jol.adam(0.1))
    with pytest.raises(ValueError, match=rf"must be of type {state_type} .* got tuple"):
        opt.update(GRADS, jol.sgd(0.1, momentum=0.9).init(PARAMS), PARAMS)


def test_multisteps_refuses_a_gradient_that_would_broadcast_into_its_accumulator():
    opt = jol.MultiSteps(jol.sgd(0.1), 2)
    with pytest.raises(ValueError, match=r"MultiSteps's accumulated gradients .* same leaf shapes"):
        opt.update({**GRADS, "w": jnp.ones((1, 2), jnp.float32)}, opt.init(PARAMS), PARAMS)


def test_kernel_step_refuses_another_state():
    step = jol.kernels.adamw_step(0.1)
    with pytest.raises(ValueError, match=r"adamw_step: .* must be of type ScaleByAdamState"):
        step.step(PARAMS, GRADS, jol.sgd(0.1, momentum=0.9).init(PARAMS))


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "rmsprop", "adamax"])
def test_update_rejects_updates_whose_leaf_shapes_do_not_match_the_state(name):
    """Same structure, wrong leaf shape: a (1,) gradient would silently broadcast against a
    (3, 2) moment and the update would change the parameter's shape."""
    opt = build(name)
    state = opt.init(PARAMS)
    bad = {"w": jnp.ones((1,), jnp.float32), "b": GRADS["b"]}
    with pytest.raises(ValueError, match=r"shape"):
        opt.update(bad, state)


def test_apply_updates_rejects_updates_whose_leaf_shape_differs_from_the_param():
    """``(2,) + (3, 2)`` broadcasts: without a check the parameter silently changes shape."""
    bad = {"w": GRADS["w"], "b": jnp.ones((3, 2), jnp.float32)}
    with pytest.raises(ValueError, match=r"shape"):
        jol.apply_updates(PARAMS, bad)


def test_apply_updates_accepts_none_updates_as_documented():
    """``apply_updates``' docstring: "None updates leave their parameter as it is"."""
    out = jol.apply_updates(PARAMS, {"w": None, "b": GRADS["b"]})
    np.testing.assert_array_equal(out["w"], PARAMS["w"])
    np.testing.assert_array_equal(out["b"], PARAMS["b"] + GRADS["b"])


# --------------------------------------------------------------------------- #
# Integer parameters
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
def test_init_rejects_integer_params_naming_the_leaf(name):
    params = {"layer": {"kernel": jnp.ones((2, 2), jnp.float32), "step": jnp.zeros((), jnp.int32)}}
    owner = _owner(name)
    starts = rf"^{owner}: " if owner else ""
    with pytest.raises(TypeError, match=starts + r".*\['layer'\]\['step'\].*int32.*masked\(tx, mask\)"):
        build(name).init(params)


def test_apply_updates_rejects_integer_params():
    with pytest.raises(TypeError, match=r"int32"):
        jol.apply_updates({"n": jnp.arange(3, dtype=jnp.int32)}, {"n": jnp.ones(3)})


def test_apply_updates_integer_error_names_the_leaf():
    params = {"w": jnp.ones(3), "counters": {"n": jnp.arange(3, dtype=jnp.int32)}}
    with pytest.raises(TypeError, match=r"\['counters'\]\['n'\]"):
        jol.apply_updates(params, jax.tree.map(jnp.ones_like, params))


# --------------------------------------------------------------------------- #
# Hyperparameter ranges
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [-0.1, -1e-12, jnp.asarray(-1.0), np.float32(-2.0), math.nan])
@pytest.mark.parametrize("name", NAMES)
def test_negative_learning_rate_is_rejected(name, bad):
    with pytest.raises(ValueError, match=r"learning_rate"):
        build(name, learning_rate=bad)


def test_negative_learning_rate_in_a_batch_is_rejected():
    """A concrete sweep of learning rates is checked element by element."""
    with pytest.raises(ValueError, match=r"learning_rate.*-0.5"):
        jol.adam(jnp.asarray([0.1, -0.5, 0.01]))


def test_zero_learning_rate_is_valid():
    opt = jol.adam(0.0)
    updates, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


# (alias, argument) for every decay rate of every alias; each must lie in [0, 1).
DECAYS = [
    ("sgd_momentum", "momentum"),
    ("sgd_nesterov", "momentum"),
    ("rmsprop", "decay"),
    ("rmsprop_centered_momentum", "decay"),
    ("rmsprop_centered_momentum", "momentum"),
    ("adadelta", "rho"),
    ("lion", "b1"),
    ("lion", "b2"),
    ("lars", "momentum"),
] + [
    (name, beta)
    for name in (
        "adam",
        "adamw",
        "amsgrad",
        "adamax",
        "adamaxw",
        "nadam",
        "nadam_momentum_decay",
        "nadamw",
        "radam",
        "adabelief",
        "lamb",
    )
    for beta in ("b1", "b2")
]


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, math.nan])
@pytest.mark.parametrize("name,arg", DECAYS, ids=[f"{n}-{a}" for n, a in DECAYS])
def test_decay_rates_outside_unit_interval_are_rejected(name, arg, bad):
    with pytest.raises(ValueError, match=rf"\b{arg}\b.*\[0, 1\)"):
        build(name, **{arg: bad})


@pytest.mark.parametrize("name,arg", DECAYS, ids=[f"{n}-{a}" for n, a in DECAYS])
def test_decay_rates_at_the_edges_of_the_unit_interval_are_valid(name, arg):
    for ok in (0.0, 0.999):
        opt = build(name, **{arg: ok})
        updates, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_dampening_outside_closed_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"\bdampening\b.*\[0, 1\]"):
        jol.sgd(0.1, momentum=0.9, dampening=bad)


# (alias, argument) for every non-negative constant of every alias.
NONNEGATIVES = [
    ("adagrad", "eps"),
    ("adagrad", "initial_accumulator_value"),
    ("adadelta", "eps"),
    ("adadelta", "weight_decay"),
    ("rmsprop", "eps"),
    ("rmsprop", "initial_scale"),
    ("rmsprop_centered_momentum", "eps"),
    ("noisy_sgd", "eta"),
    ("noisy_sgd", "gamma"),
    ("adamax", "eps"),
    ("adamaxw", "eps"),
    ("adamaxw", "weight_decay"),
    ("adamw", "weight_decay"),
    ("nadamw", "weight_decay"),
    ("lion", "weight_decay"),
    ("nadam_momentum_decay", "momentum_decay"),
    ("lamb", "weight_decay"),
    ("lars", "weight_decay"),
    ("lars", "trust_coefficient"),
    ("lars", "eps"),
] + [
    (name, e)
    for name in ("adam", "adamw", "amsgrad", "nadam", "nadam_momentum_decay", "nadamw", "radam", "adabelief", "lamb")
    for e in ("eps", "eps_root")
]


@pytest.mark.parametrize("name,arg", NONNEGATIVES, ids=[f"{n}-{a}" for n, a in NONNEGATIVES])
def test_negative_constants_are_rejected(name, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b must be in [(\[]0, inf\), got -0.001"):
        build(name, **{arg: -1e-3})


@pytest.mark.parametrize(
    "make,arg",
    [
        (lambda v: jol.clip(v), "max_delta"),
        (lambda v: jol.clip_by_norm(v), "max_norm"),
        (lambda v: jol.clip_by_global_norm(v), "max_norm"),
        (lambda v: jol.adaptive_grad_clip(v), "clipping"),
        (lambda v: jol.adaptive_grad_clip(0.1, eps=v), "eps"),
        (lambda v: jol.trace(v), "decay"),
        (lambda v: jol.ema(v), "decay"),
        (lambda v: jol.add_decayed_weights(v), "weight_decay"),
        (lambda v: jol.add_noise(v, 0.55), "eta"),
    ],
    ids=[
        "clip",
        "clip_by_norm",
        "clip_by_global_norm",
        "agc_clipping",
        "agc_eps",
        "trace",
        "ema",
        "add_decayed_weights",
        "add_noise",
    ],
)
def test_transforms_reject_negative_constants(make, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        make(-1.0)


@pytest.mark.parametrize(
    "make", [lambda: jol.amsgrad(0.1, max_over="max"), lambda: jol.scale_by_amsgrad(max_over=None)]
)
def test_bad_max_over_is_rejected(make):
    with pytest.raises(ValueError, match=r"max_over must be 'debiased' or 'raw'"):
        make()


def test_radam_threshold_below_four_is_rejected_or_harmless():
    """The rectifier ``sqrt((rho-4)(rho-2)...)`` is imaginary for ``2 < rho < 4``: a threshold
    below 4 must be refused (naming ``threshold``) or must not produce NaN."""
    try:
        opt = jol.radam(0.1, threshold=3.0)
    except ValueError as e:
        assert "threshold" in str(e)
        return
    state = opt.init(PARAMS)
    for step in range(8):
        updates, state = opt.update(GRADS, state, PARAMS)
        for u in jax.tree.leaves(updates):
            assert bool(jnp.all(jnp.isfinite(u))), f"radam(threshold=3.0): NaN update at step {step + 1}"


# --------------------------------------------------------------------------- #
# Composition and missing params
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [3, None, "adam", jol.adam], ids=["int", "None", "str", "uncalled_factory"])
def test_chain_rejects_a_non_transform(bad):
    with pytest.raises(TypeError, match=r"chain: argument 1 is not a GradientTransformation"):
        jol.chain(jol.clip(1.0), bad)


def test_named_chain_rejects_a_non_transform():
    with pytest.raises(TypeError, match=r"not a GradientTransformation"):
        jol.named_chain(("clip", jol.clip(1.0)), ("adam", jol.adam))


def test_named_chain_rejects_duplicate_names():
    with pytest.raises(ValueError, match=r"names must be unique"):
        jol.named_chain(("a", jol.clip(1.0)), ("a", jol.adam(0.1)))


def test_adaptive_grad_clip_without_params():
    opt = jol.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: params must be passed"):
        opt.update(GRADS, opt.init(PARAMS))
    chained = jol.chain(jol.adaptive_grad_clip(0.1), jol.sgd(0.1))
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: params must be passed"):
        chained.update(GRADS, chained.init(PARAMS))


@pytest.mark.parametrize(
    "opt",
    [
        jol.add_decayed_weights(1e-4),
        jol.add_decayed_weights(lambda count: 1e-4),
        jol.adamw(0.1),
        jol.adamaxw(0.1),
        jol.nadamw(0.1),
        jol.lion(0.1),
    ],
    ids=["add_decayed_weights", "add_decayed_weights_schedule", "adamw", "adamaxw", "nadamw", "lion"],
)
def test_weight_decay_without_params(opt):
    with pytest.raises(ValueError, match=r"add_decayed_weights: params must be passed"):
        opt.update(GRADS, opt.init(PARAMS))


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_trust_ratio_without_params(name):
    opt = build(name)
    with pytest.raises(ValueError, match=r"params must be passed"):
        opt.update(GRADS, opt.init(PARAMS))


def test_keep_params_nonnegative_without_params():
    opt = jol.keep_params_nonnegative()
    with pytest.raises(ValueError, match=r"keep_params_nonnegative: params must be passed"):
        opt.update(GRADS, opt.init(PARAMS))


def test_scale_by_schedule_rejects_a_non_callable():
    with pytest.raises(TypeError, match=r"step_size_fn must be callable"):
        jol.scale_by_schedule(0.1)


def test_add_noise_rejects_key_and_seed():
    with pytest.raises(ValueError, match=r"either key or seed"):
        jol.add_noise(0.01, 0.55, key=0, seed=1)


# --------------------------------------------------------------------------- #
# Schedules
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: sch.join_schedules([sch.constant_schedule(1.0)] * 3, [5, 2]), r"join_schedules: boundaries\[0\]"),
        (lambda: sch.join_schedules([sch.constant_schedule(1.0)] * 2, [-1]), r"join_schedules: boundaries\[0\]"),
        (lambda: sch.join_schedules([sch.constant_schedule(1.0)] * 3, [5]), r"one entry fewer than schedules"),
        (lambda: sch.join_schedules([sch.constant_schedule(1.0), 0.5], [5]), r"schedules\[1\] must be callable"),
        (lambda: sch.join_schedules([], []), r"schedules must not be empty"),
        (lambda: sch.piecewise_constant_schedule(1.0, {-3: 0.5}), r"piecewise_constant_schedule: boundaries"),
        (lambda: sch.piecewise_constant_schedule(1.0, {3: -0.5}), r"piecewise_constant_schedule: .*scale"),
        (lambda: sch.piecewise_constant_schedule(1.0, [(3, 0.5)]), r"boundaries_and_scales must be a dict"),
        (lambda: sch.piecewise_constant_schedule(1.0, {"3": 0.5}), r"keys must be step numbers"),
        (lambda: sch.piecewise_interpolate_schedule("cubic", 1.0, {3: 0.5}), r"interpolate_type"),
        (lambda: sch.piecewise_interpolate_schedule("linear", 1.0, {-1: 0.5}), r"boundaries"),
        (lambda: sch.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), r"warmup_steps must be < decay_steps"),
        (lambda: sch.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10), r"warmup_steps"),
        (lambda: sch.cosine_decay_schedule(1.0, 0), r"decay_steps"),
        # linear_schedule(1.0, 0.0, -5) is no longer an error (issue 14): as in Optax it is the constant 1.0,
        # with a warning (tests/test_compat.py). A non-finite transition_steps still is.
        (lambda: sch.linear_schedule(1.0, 0.0, float("inf")), r"transition_steps must be finite"),
        (lambda: sch.exponential_decay(1.0, 10, -0.5), r"decay_rate"),
        (lambda: sch.exponential_decay(1.0, 10, 0.5, transition_begin=-1), r"transition_begin"),
        (
            lambda: sch.linear_onecycle_schedule(100, 1.0, pct_start=0.5, pct_final=0.4),
            r"pct_start must be < pct_final",
        ),
        (lambda: sch.cosine_onecycle_schedule(100, 1.0, pct_start=1.0), r"pct_start"),
        (lambda: sch.sgdr_schedule([{"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 1}]), r"decay_steps"),
        (
            lambda: sch.sgdr_schedule([{"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 5, "decay_steps": 3}]),
            r"cosine_kwargs\[0\]",
        ),
    ],
    ids=[
        "join_decreasing",
        "join_negative",
        "join_count",
        "join_non_callable",
        "join_empty",
        "piecewise_negative_boundary",
        "piecewise_negative_scale",
        "piecewise_not_dict",
        "piecewise_str_key",
        "interpolate_type",
        "interpolate_negative_boundary",
        "warmup_cosine_order",
        "warmup_cosine_negative",
        "cosine_zero_steps",
        "linear_negative_steps",
        "exponential_negative_rate",
        "exponential_negative_begin",
        "onecycle_pct_order",
        "onecycle_pct_start",
        "sgdr_missing_decay_steps",
        "sgdr_bad_cycle",
    ],
)
def test_schedules_reject_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_staircase_must_be_a_python_bool():
    with pytest.raises(TypeError, match=r"staircase must be a Python bool"):
        sch.exponential_decay(1.0, 10, 0.5, staircase=jnp.asarray(True))


def test_traced_schedule_boundaries_are_not_validated():
    """Decreasing boundaries are only detectable when concrete; traced ones build fine."""

    @jax.jit
    def value(b0, b1, count):
        return sch.join_schedules(
            [sch.constant_schedule(1.0), sch.constant_schedule(2.0), sch.constant_schedule(3.0)], [b0, b1]
        )(count)

    assert float(value(5, 2, 0)) == 1.0
    assert float(value(2, 5, 3)) == 2.0


# --------------------------------------------------------------------------- #
# Traced values are not validated (no error, no host transfer)
# --------------------------------------------------------------------------- #


def _one_step(name, lr, hp_name, hp, params, grads):
    opt = build(name, learning_rate=lr, **({hp_name: hp} if hp_name else {}))
    updates, _ = opt.update(grads, opt.init(params), params)
    return updates


INVALID_TRACED = [  # (alias, argument, value that is rejected when concrete)
    ("adam", "b1", 1.5),
    ("adam", "eps", -1.0),
    ("sgd_momentum", "momentum", 1.0),
    ("rmsprop", "decay", -0.5),
    ("adadelta", "rho", 2.0),
    ("lion", "b2", 1.0),
    ("sgd", None, None),
]


@pytest.mark.parametrize("name,arg,bad", INVALID_TRACED, ids=[f"{n}-{a}" for n, a, _ in INVALID_TRACED])
def test_traced_hyperparameters_are_not_validated_under_jit(name, arg, bad):
    params = jax.device_put(PARAMS)
    grads = jax.device_put(GRADS)
    lr = jax.device_put(jnp.asarray(-0.1, jnp.float32))  # invalid, but traced
    hp = None if arg is None else jax.device_put(jnp.asarray(bad, jnp.float32))
    # Concrete, the same values are rejected.
    with pytest.raises(ValueError, match=r"learning_rate"):
        build(name, learning_rate=-0.1)
    if arg is not None:
        with pytest.raises(ValueError, match=rf"\b{arg}\b|decay"):
            build(name, **{arg: bad})
    fn = jax.jit(lambda lr, hp, p, g: _one_step(name, lr, arg, hp, p, g))
    # No transfer between host and device may happen while tracing and running it.
    with jax.transfer_guard("disallow"):
        updates = fn(lr, hp, params, grads)
        jax.block_until_ready(updates)
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


@pytest.mark.parametrize("name,arg,bad", INVALID_TRACED[:-1], ids=[f"{n}-{a}" for n, a, _ in INVALID_TRACED[:-1]])
def test_traced_hyperparameters_are_not_validated_under_vmap(name, arg, bad):
    good = {"b1": 0.9, "eps": 1e-8, "momentum": 0.9, "decay": 0.9, "rho": 0.9, "b2": 0.99}[arg]
    values = jnp.asarray([good, bad], jnp.float32)
    lrs = jnp.asarray([0.1, -0.1], jnp.float32)
    updates = jax.vmap(lambda lr, hp: _one_step(name, lr, arg, hp, PARAMS, GRADS))(lrs, values)
    assert updates["w"].shape == (2, 3, 2)
    # The valid row equals the concrete computation.
    expected = _one_step(name, 0.1, arg, good, PARAMS, GRADS)
    np.testing.assert_allclose(updates["w"][0], expected["w"], rtol=1e-6)
    # And under jit(vmap) nothing crosses between host and device either.
    fn = jax.jit(jax.vmap(lambda lr, hp, p, g: _one_step(name, lr, arg, hp, p, g), in_axes=(0, 0, None, None)))
    args = jax.device_put((lrs, values, PARAMS, GRADS))
    with jax.transfer_guard("disallow"):
        jax.block_until_ready(fn(*args))


def test_traced_hyperparameters_are_not_validated_under_grad():
    def loss(b1):
        opt = jol.adam(0.1, b1=b1)
        updates, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
        return jnp.sum(updates["w"])

    assert bool(jnp.isfinite(jax.grad(loss)(0.9)))


# --------------------------------------------------------------------------- #
# No silent NaN from valid input
# --------------------------------------------------------------------------- #

ALL_WITH_CHAIN = NAMES + ["chain_clip_adam_schedule"]


def _build_any(name):
    if name == "chain_clip_adam_schedule":
        return jol.chain(jol.clip_by_global_norm(1.0), jol.adam(sch.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10, 0.0)))
    return build(name)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ALL_WITH_CHAIN)
def test_zero_gradients_give_finite_updates(name, dtype):
    params = {
        "w": jnp.asarray([[1.0, -2.0], [0.0, 3.0]], dtype),
        "b": jnp.zeros((3,), dtype),
        "empty": jnp.zeros((0, 2), dtype),
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = _build_any(name)
    state = opt.init(params)
    step = jax.jit(opt.update)
    for k in range(10):
        updates, state = step(zeros, state, params)
        for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
            assert u.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(u))), f"{name}: non-finite update {jax.tree_util.keystr(path)} at step {k}"
        params = jol.apply_updates(params, updates)
    for x in jax.tree.leaves(state):
        if jnp.issubdtype(jnp.result_type(x), jnp.floating):
            assert bool(jnp.all(jnp.isfinite(x))), f"{name}: non-finite state after 10 zero-gradient steps"


@pytest.mark.parametrize("name", ["adam", "adagrad", "rmsprop", "adadelta", "amsgrad", "radam", "nadam", "adabelief"])
def test_zero_eps_is_rejected_or_gives_finite_updates_for_zero_gradients(name):
    """A concrete ``eps=0`` passes validation, so it must either be refused (naming ``eps``)
    or not turn a zero gradient into ``0/0``."""
    kwargs = {"adagrad": {"initial_accumulator_value": 0.0}, "adabelief": {"eps_root": 0.0}}.get(name, {})
    try:
        opt = build(name, eps=0.0, **kwargs)
    except ValueError as e:
        assert "eps" in str(e)
        return
    state = opt.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    for _ in range(2):
        updates, state = opt.update(zeros, state, PARAMS)
        for u in jax.tree.leaves(updates):
            assert bool(jnp.all(jnp.isfinite(u))), f"{name}(eps=0): zero gradient gave {u}"


@pytest.mark.parametrize("name", sorted(name for name, (_, _, hps) in OPTIMIZERS.items() if "eps" in hps))
def test_every_optimizer_with_zero_eps_gives_finite_updates_for_zero_gradients(name):
    """Every optimizer with an ``eps`` (the table's): a concrete ``eps=0`` is refused naming it, or zero gradients,
    over three steps (moments still zero), give finite updates, never ``0 / 0``."""
    try:
        opt = build_any(name, eps=0.0)
    except ValueError as e:
        assert "eps" in str(e)
        return
    params = {"w": jnp.ones((3, 4), jnp.float32), "b": jnp.ones((4,), jnp.float32)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    for step in range(3):
        updates, state = opt.update(zeros, state, params)
        for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
            assert bool(jnp.all(jnp.isfinite(u))), f"{name}(eps=0) step {step}: {jax.tree_util.keystr(path)} is {u}"


def test_muon_with_zero_eps_gives_finite_updates_for_zero_gradients():
    """Muon's Newton-Schulz normalises a zero matrix by its zero norm when ``eps=0``: 0, not ``0 / 0``."""
    params = {"w": jnp.ones((3, 4), jnp.float32), "b": jnp.ones((4,), jnp.float32)}
    opt = jol.muon(0.1, eps=0.0)
    state = opt.init(params)
    for _ in range(2):
        updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates)), updates


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("magnitude", [1e20, 1e30])
def test_huge_gradient_through_clip_by_global_norm_is_finite_and_clipped(magnitude, dtype):
    """``||g||^2`` overflows float32 for these gradients; the clipped result must still be the
    gradient's direction with norm ``max_norm``, not zeros (or NaN)."""
    grads = {"w": jnp.asarray([[magnitude, -magnitude], [0.0, magnitude]], dtype), "b": jnp.asarray([magnitude], dtype)}
    opt = jol.clip_by_global_norm(1.0)
    clipped, _ = opt.update(grads, opt.init(grads))
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(clipped)]
    assert all(np.all(np.isfinite(x)) for x in leaves), clipped
    norm = math.sqrt(sum(float(np.sum(x**2)) for x in leaves))
    assert norm == pytest.approx(1.0, rel=2e-2), f"clipped norm {norm}, expected 1.0: {clipped}"
    np.testing.assert_allclose(np.asarray(clipped["w"], np.float64), np.array([[0.5, -0.5], [0.0, 0.5]]), rtol=2e-2)


def test_huge_gradient_through_clip_and_adam_is_finite():
    grads = {"w": jnp.full((3,), 1e30, jnp.float32)}
    opt = jol.chain(jol.clip_by_global_norm(1.0), jol.adam(0.1))
    updates, _ = opt.update(grads, opt.init(grads), grads)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    # Adam's first step is -lr * sign(g) whatever the scale of g, once clipped.
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1, rtol=1e-3)


def test_huge_gradient_through_clip_by_norm_is_finite_and_clipped():
    grads = {"w": jnp.full((4,), 1e30, jnp.float32)}
    clipped, _ = jol.clip_by_norm(2.0).update(grads, jol.clip_by_norm(2.0).init(grads))
    assert bool(jnp.all(jnp.isfinite(clipped["w"])))
    np.testing.assert_allclose(np.asarray(clipped["w"]), 1.0, rtol=1e-3)


def test_global_norm_of_huge_float32_tree_is_not_inf():
    g = {"w": jnp.full((4,), 1e30, jnp.float32)}
    norm = jol.global_norm(g)
    assert bool(jnp.isfinite(norm)), norm
    assert float(norm) == pytest.approx(2e30, rel=1e-5)
