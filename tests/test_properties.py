"""Property tests over random pytrees and every optimizer alias.

For every alias (and a clip + Adam + schedule chain) these check, over random
nested dict/list/tuple trees of float32, bfloat16 and float64 leaves (scalars
and zero-size leaves included), that:

- updates keep the tree structure and dtype of the gradients, and the state
  after any number of steps has exactly the avals of the initial state (the
  property ``lax.scan`` and a non-retracing ``jit`` rely on);
- ``jax.eval_shape(opt.init, params)`` works and matches ``opt.init``;
- a jitted ``lax.scan`` over the steps equals the eager Python loop (random
  trees), and a jitted update equals the eager one step by step (a fixed
  mixed-dtype tree), with tolerances per dtype;
- ``apply_updates`` keeps every parameter's dtype;
- a jitted update called again with new values and with its own output state
  is traced once;
- ``vmap`` over every numeric hyperparameter equals a Python loop over its
  values (the optimizer is built inside the vmapped function);
- derivatives of a loss after a few unrolled steps with respect to the
  learning rate (and every other float hyperparameter) are finite;
- ``vmap`` over every numeric argument of every schedule equals a loop, and
  optimizers driven by schedules with traced arguments behave the same way;
- ``tree.norm`` (used by the clipping transforms) works under ``jit``/``vmap``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxopt_lite as jol
from jaxopt_lite import schedules as sch

LR = 0.1


# --------------------------------------------------------------------------- #
# The optimizers under test
# --------------------------------------------------------------------------- #


def _clip_adam_schedule(
    learning_rate=LR, max_norm=1.0, init_value=0.01, warmup_steps=2, decay_steps=10, end_value=0.001, b1=0.9, b2=0.999
):
    """``chain(clip_by_global_norm, adam(warmup_cosine_decay_schedule))``; every number traceable."""
    schedule = sch.warmup_cosine_decay_schedule(init_value, learning_rate, warmup_steps, decay_steps, end_value)
    return jol.chain(jol.clip_by_global_norm(max_norm), jol.adam(schedule, b1=b1, b2=b2))


ADAM_HPS = ("learning_rate", "b1", "b2", "eps", "eps_root")


# --- parameter-free and contrib optimizers: wrappers exposing every float as a keyword ---
def _prodigy(learning_rate=LR, b1=0.9, b2=0.999, **kwargs):
    return jol.contrib.prodigy(learning_rate, betas=(b1, b2), **kwargs)


def _dadapt_adamw(learning_rate=LR, b1=0.9, b2=0.999, **kwargs):
    return jol.contrib.dadapt_adamw(learning_rate, betas=(b1, b2), **kwargs)


def _dog(learning_rate=LR, reps_rel=1e-2, **kwargs):
    return jol.contrib.dog(learning_rate, init_step=("heuristic", reps_rel), **kwargs)


def _ldog(learning_rate=LR, reps_rel=1e-2, eps=1e-8):
    return jol.chain(jol.scale_by_distance_over_gradients(reps_rel, eps, param_dtype=None), jol.scale(-learning_rate))


def _mechanize_sgd(learning_rate=LR, **kwargs):
    return jol.contrib.mechanize(jol.sgd(learning_rate), **kwargs)


def _momo_given_value(alias):
    """MoMo fed ``value=0.025 ||g||^2`` (a tenth of the quadratic's loss), so the Polyak step is below the cap."""

    def build(learning_rate=LR, **kwargs):
        opt = alias(learning_rate, **kwargs)

        def update(updates, state, params=None):
            return opt.update(updates, state, params, value=0.025 * jol.tree.norm(updates, squared=True))

        return jol.GradientTransformation(opt.init, update)

    return build


def _polyak_sgd(learning_rate=LR, **kwargs):
    """``polyak_sgd`` capped at ``learning_rate``, fed the quadratic's value ``0.5 ||g||^2`` (``f_min = 0``)."""
    opt = jol.polyak_sgd(max_learning_rate=learning_rate, **kwargs)

    def update(updates, state, params=None):
        return opt.update(updates, state, params, value=0.5 * jol.tree.norm(updates, squared=True))

    return jol.GradientTransformation(opt.init, update)


def _cautious_sgd_momentum(learning_rate=LR, momentum=0.9, eps=1.0):
    """The wrapper around a whole alias: ``cautious(sgd(momentum))``, its ``eps`` traceable."""
    return jol.cautious(jol.sgd(learning_rate, momentum=momentum), eps)


def _sophia(learning_rate=LR, **kwargs):
    """Sophia on ``obj_fn = 50 ||p||^2``, whose Hutchinson estimate of the Hessian diagonal is exactly 100
    (large enough that ``m / (gamma h)`` stays inside the clip and ``b1`` matters)."""
    opt = jol.contrib.sophia(learning_rate, **kwargs)

    def update(updates, state, params=None):
        return opt.update(updates, state, params, obj_fn=lambda p: 50.0 * jol.tree.norm(p, squared=True))

    return jol.GradientTransformation(opt.init, update)


# --- end parameter-free and contrib wrappers ---

# name -> (constructor, fixed keyword arguments, numeric hyperparameters to sweep)
OPTIMIZERS = {
    "sgd": (jol.sgd, {}, ("learning_rate",)),
    "sgd_momentum": (jol.sgd, {"momentum": 0.9}, ("learning_rate", "momentum")),
    "sgd_nesterov": (jol.sgd, {"momentum": 0.9, "nesterov": True}, ("learning_rate", "momentum")),
    "sgd_momentum_dampening": (
        jol.sgd,
        {"momentum": 0.9, "dampening": 0.5},
        ("learning_rate", "momentum", "dampening"),
    ),
    "noisy_sgd": (jol.noisy_sgd, {"key": 0}, ("learning_rate", "eta", "gamma")),
    "sign_sgd": (jol.sign_sgd, {}, ("learning_rate",)),
    "adagrad": (jol.adagrad, {}, ("learning_rate", "initial_accumulator_value", "eps")),
    "adadelta": (jol.adadelta, {"weight_decay": 0.01}, ("learning_rate", "rho", "eps", "weight_decay")),
    "rmsprop": (jol.rmsprop, {}, ("learning_rate", "decay", "eps", "initial_scale")),
    "rmsprop_centered_momentum": (
        jol.rmsprop,
        {"centered": True, "momentum": 0.9},
        ("learning_rate", "decay", "eps", "initial_scale", "momentum"),
    ),
    "adam": (jol.adam, {}, ADAM_HPS),
    "adamw": (jol.adamw, {}, ADAM_HPS + ("weight_decay",)),
    "amsgrad": (jol.amsgrad, {}, ADAM_HPS),
    "adamax": (jol.adamax, {}, ("learning_rate", "b1", "b2", "eps")),
    "adamaxw": (jol.adamaxw, {}, ("learning_rate", "b1", "b2", "eps", "weight_decay")),
    "nadam": (jol.nadam, {}, ADAM_HPS),
    "nadam_momentum_decay": (jol.nadam, {"momentum_decay": 0.004}, ADAM_HPS + ("momentum_decay",)),
    "nadamw": (jol.nadamw, {}, ADAM_HPS + ("weight_decay",)),
    "nadamw_momentum_decay": (
        jol.nadamw,
        {"momentum_decay": 0.004},
        ADAM_HPS + ("weight_decay", "momentum_decay"),
    ),
    "radam": (jol.radam, {}, ADAM_HPS + ("threshold",)),
    "lion": (jol.lion, {}, ("learning_rate", "b1", "b2", "weight_decay")),
    "adabelief": (jol.adabelief, {}, ADAM_HPS),
    "lamb": (jol.lamb, {"weight_decay": 0.01}, ADAM_HPS + ("weight_decay",)),
    "lars": (
        jol.lars,
        {"weight_decay": 0.01},
        ("learning_rate", "weight_decay", "trust_coefficient", "eps", "momentum"),
    ),
    # --- adopt, ademamix, simplified_ademamix (contrib) ---
    "adopt": (jol.contrib.adopt, {}, ("learning_rate", "b1", "b2", "eps")),
    "ademamix": (jol.contrib.ademamix, {"weight_decay": 0.01}, ADAM_HPS + ("b3", "alpha", "weight_decay")),
    "simplified_ademamix": (
        jol.contrib.simplified_ademamix,
        {"weight_decay": 0.01},
        ("learning_rate", "b1", "b2", "alpha", "eps", "eps_root", "weight_decay"),
    ),
    # --- end adopt, ademamix, simplified_ademamix ---
    # --- parameter-free and contrib optimizers (schedule-free, prodigy, dadapt, dog, mechanic, cocob, ...) ---
    "schedule_free_sgd": (
        jol.contrib.schedule_free_sgd,
        {"warmup_steps": 2, "weight_decay": 0.01},  # a warmup, so that weight_lr_power matters
        ("learning_rate", "b1", "weight_decay", "weight_lr_power"),
    ),
    "schedule_free_adamw": (
        jol.contrib.schedule_free_adamw,
        {"warmup_steps": 2, "weight_decay": 0.01},
        ("learning_rate", "b1", "b2", "eps", "weight_decay", "weight_lr_power"),
    ),
    "prodigy": (
        _prodigy,
        {"weight_decay": 0.01},
        ("learning_rate", "b1", "b2", "beta3", "eps", "estim_lr0", "estim_lr_coef", "weight_decay"),
    ),
    "dadapt_adamw": (
        _dadapt_adamw, {"weight_decay": 0.01}, ("learning_rate", "b1", "b2", "eps", "estim_lr0", "weight_decay")
    ),
    "dog": (_dog, {"weight_decay": 0.01}, ("learning_rate", "reps_rel", "eps", "weight_decay")),
    "dowg": (jol.contrib.dowg, {"weight_decay": 0.01}, ("learning_rate", "init_estim_sq_dist", "eps", "weight_decay")),
    "ldog": (_ldog, {}, ("learning_rate", "reps_rel", "eps")),
    "mechanize_sgd": (_mechanize_sgd, {}, ("learning_rate", "weight_decay", "eps", "s_init")),
    "cocob": (jol.contrib.cocob, {"weight_decay": 0.01}, ("learning_rate", "alpha", "eps", "weight_decay")),
    "momo": (
        _momo_given_value(jol.contrib.momo),
        {"weight_decay": 0.01},
        ("learning_rate", "beta", "lower_bound", "weight_decay"),
    ),
    "momo_adam": (
        _momo_given_value(jol.contrib.momo_adam),
        {"weight_decay": 0.01},
        ("learning_rate", "b1", "b2", "eps", "lower_bound", "weight_decay"),
    ),
    "acprop": (jol.contrib.acprop, {"weight_decay": 0.01}, ADAM_HPS + ("weight_decay",)),
    "madgrad": (jol.contrib.madgrad, {"weight_decay": 0.01}, ("learning_rate", "momentum", "weight_decay", "eps")),
    # --- end parameter-free and contrib optimizers ---
    "adafactor": (
        jol.adafactor, {"min_dim_size_to_factor": 2}, ("learning_rate", "decay_rate", "eps", "clipping_threshold")
    ),
    "adafactor_momentum_wd": (
        jol.adafactor,
        {"min_dim_size_to_factor": 2, "momentum": 0.9, "weight_decay_rate": 0.01},
        ("learning_rate", "decay_rate", "momentum", "weight_decay_rate"),
    ),
    "sm3": (jol.sm3, {}, ("learning_rate", "momentum")),
    "novograd": (jol.novograd, {"weight_decay": 0.01}, ("learning_rate", "b1", "b2", "eps", "weight_decay")),
    "cautious_adamw": (jol.cautious_adamw, {}, ADAM_HPS + ("weight_decay", "cautious_eps")),
    "cautious_lion": (jol.cautious_lion, {}, ("learning_rate", "b1", "b2", "weight_decay", "cautious_eps")),
    "cautious_sgd_momentum": (_cautious_sgd_momentum, {}, ("learning_rate", "momentum", "eps")),
    "mars_adamw": (jol.mars_adamw, {"weight_decay": 0.01}, ADAM_HPS + ("weight_decay", "gamma", "max_norm")),
    "mars_adamw_global": (jol.mars_adamw, {"weight_decay": 0.01, "clip_scope": "global"},
                          ADAM_HPS + ("weight_decay", "gamma", "max_norm")),
    "fromage": (jol.fromage, {}, ("learning_rate", "min_norm")),
    "signum": (jol.signum, {}, ("learning_rate", "beta")),
    "optimistic_gradient_descent": (jol.optimistic_gradient_descent, {}, ("learning_rate", "alpha", "beta")),
    "optimistic_adam_v2": (jol.optimistic_adam_v2, {}, ("learning_rate", "alpha", "beta", "b1", "b2", "eps")),
    "polyak_sgd": (_polyak_sgd, {}, ("learning_rate", "scaling", "f_min", "eps")),
    "sophia": (
        _sophia,
        {"weight_decay": 0.01, "update_interval": 2},
        ("learning_rate", "b1", "b2", "eps", "gamma", "clip_threshold", "weight_decay"),
    ),
    # --- shampoo, soap (Kronecker-factored; soap's bases refreshed every step so shampoo_beta acts in 3 steps) ---
    "shampoo": (
        jol.shampoo,
        {"weight_decay": 0.01},
        ("learning_rate", "b1", "beta2", "matrix_eps", "graft_beta2", "graft_eps", "weight_decay"),
    ),
    "soap": (
        jol.soap,
        {"precondition_frequency": 1},
        ("learning_rate", "b1", "b2", "shampoo_beta", "eps", "weight_decay"),
    ),
    # --- end shampoo, soap ---
    # --- kron (PSGD-Kron; probability 1 so that every step updates the preconditioner) ---
    "kron": (
        jol.kron,
        {"preconditioner_update_probability": 1.0, "weight_decay": 0.01},
        ("learning_rate", "b1", "precond_lr", "precond_init_scale", "weight_decay"),
    ),
    # --- end kron ---
    # --- came, adam_mini ---
    "came": (
        jol.came,
        {"weight_decay": 0.01},
        ("learning_rate", "b1", "b2", "b3", "eps1", "eps2", "clip_threshold", "weight_decay"),
    ),
    "adam_mini": (jol.adam_mini, {"weight_decay": 0.01}, ("learning_rate", "b1", "b2", "eps", "weight_decay")),
    # --- end came, adam_mini ---
    "chain_clip_adam_schedule": (
        _clip_adam_schedule,
        {},
        ("learning_rate", "max_norm", "init_value", "warmup_steps", "decay_steps", "end_value", "b1", "b2"),
    ),
}
NAMES = sorted(OPTIMIZERS)

# Three valid values per hyperparameter (the middle one is a typical default).
SWEEP = {
    "cautious_eps": [0.0, 1.0, 2.0],  # cautious_adamw, cautious_lion
    "learning_rate": [0.01, 0.1, 0.3],
    "momentum": [0.0, 0.5, 0.9],
    "b1": [0.0, 0.5, 0.9],
    "b2": [0.9, 0.99, 0.999],
    "eps": [1e-8, 1e-4, 1e-1],
    "eps_root": [0.0, 1e-8, 1e-4],
    "decay": [0.5, 0.9, 0.99],
    "rho": [0.5, 0.9, 0.95],
    "initial_accumulator_value": [0.0, 0.1, 1.0],
    "initial_scale": [0.0, 0.1, 1.0],
    "weight_decay": [0.0, 0.01, 0.1],
    "threshold": [4.0, 5.0, 1000.0],
    "momentum_decay": [0.0, 0.004, 0.1],
    "eta": [0.0, 0.01, 0.3],
    "gamma": [0.0, 0.55, 1.0],
    "max_norm": [0.1, 1.0, 10.0],
    "dampening": [0.0, 0.5, 0.9],
    "trust_coefficient": [1e-4, 1e-3, 1e-2],
    "init_value": [0.0, 0.01, 0.05],
    "end_value": [0.0, 0.001, 0.01],
    "warmup_steps": [0, 2, 4],
    "decay_steps": [5, 8, 12],
    "b3": [0.9, 0.99, 0.9999],  # ademamix's slow EMA
    "alpha": [0.0, 2.0, 5.0],  # ademamix's mixing weight
    # --- parameter-free and contrib optimizers ---
    "weight_lr_power": [0.0, 2.0, 4.0],  # schedule-free
    "beta3": [0.9, 0.99, 0.999],  # prodigy
    "estim_lr0": [1e-6, 1e-3, 1e-1],  # prodigy, dadapt_adamw
    "estim_lr_coef": [0.5, 1.0, 2.0],
    "reps_rel": [1e-4, 1e-2, 1e-1],  # dog, ldog
    "init_estim_sq_dist": [1e-4, 1e-2, 1.0],  # dowg
    "s_init": [1e-8, 1e-6, 1e-2],  # mechanize
    "lower_bound": [-1.0, -0.5, 0.0],  # momo
    # --- end parameter-free and contrib optimizers ---
    "decay_rate": [0.5, 0.8, 1.0],  # adafactor
    "clipping_threshold": [0.5, 1.0, 10.0],
    "weight_decay_rate": [0.0, 0.01, 0.1],
    "beta": [0.0, 0.5, 0.9],  # momo, signum; optimistic gradient's weight of the last gradient
    "min_norm": [1e-6, 1e-3, 1e-1],  # fromage
    "scaling": [0.5, 1.0, 2.0],  # polyak_sgd
    "f_min": [-1.0, -0.1, 0.0],
    "clip_threshold": [0.1, 1.0, 10.0],  # sophia
    "beta2": [0.9, 0.99, 1.0],  # shampoo's factors (1: summed)
    "matrix_eps": [1e-8, 1e-6, 1e-2],
    "graft_beta2": [0.9, 0.99, 0.999],
    "graft_eps": [1e-8, 1e-4, 1e-1],
    "shampoo_beta": [0.9, 0.95, 0.99],  # soap
    "precond_lr": [0.05, 0.1, 0.5],  # kron
    "precond_init_scale": [0.3, 1.0, 3.0],
    "eps1": [1e-30, 1e-8, 1e-1],  # came: added to g^2
    "eps2": [1e-16, 1e-8, 1e-1],  # came: added to the instability (u - m)^2
}
STEP_COUNT_HPS = {"warmup_steps", "decay_steps"}
# The value a one-at-a-time sweep changes a hyperparameter to: SWEEP[hp][2], unless that
# barely moves the result of a few steps (Lion's b2 only feeds the sign of a sum).
ALTERNATIVE_FOR = {
    ("cautious_lion", "b2"): 0.0,
    ("lion", "b2"): 0.0,
    ("adafactor", "clipping_threshold"): 0.1,  # 1 and 10 are both above the update's RMS
    ("fromage", "min_norm"): 10.0,  # only a floor above the norms bites
    ("polyak_sgd", "f_min"): 100.0,  # above the loss: the Polyak step is 0 (below it, capped at the learning rate)
    ("polyak_sgd", "eps"): 1e6,  # a small eps leaves the step capped too
    ("signum", "b1"): 0.0,
    ("signum", "beta"): 0.0,  # the sign of the last gradient, not of the average
    ("adopt", "eps"): 10.0,  # eps floors sqrt(v) (as max, not a sum): 0.1 is below it on the table's gradients
}


def build(name, **hps):
    fn, fixed, _ = OPTIMIZERS[name]
    kwargs = {"learning_rate": LR, **fixed, **hps}
    return fn(**kwargs)


@functools.cache
def cached_opt(name):
    """One optimizer object per name, so jitted functions of it are reused across examples."""
    return build(name)


# --------------------------------------------------------------------------- #
# Random pytrees
# --------------------------------------------------------------------------- #

# A small pool of shapes keeps the eager per-primitive compilation caches warm.
SHAPES = [(), (0,), (3,), (2, 3), (2, 0, 2)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float64]

_leaf_specs = st.tuples(st.sampled_from(SHAPES), st.sampled_from(DTYPES))


def _extend(children):
    return st.one_of(
        st.lists(children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("abcde"), children, min_size=1, max_size=3),
    )


tree_specs = st.recursive(_leaf_specs, _extend, max_leaves=5)


def _is_spec_leaf(x):
    return (
        isinstance(x, tuple)
        and len(x) == 2
        and isinstance(x[0], tuple)
        and all(isinstance(d, int) for d in x[0])
        and any(x[1] is d for d in DTYPES)
    )


def make_tree(spec, rng, scale=1.0):
    """A pytree of random arrays following ``spec`` (leaves are ``(shape, dtype)``)."""
    return jax.tree.map(
        lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf[0]), leaf[1]), spec, is_leaf=_is_spec_leaf
    )


def n_leaves(spec):
    return len(jax.tree.leaves(spec, is_leaf=_is_spec_leaf))


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def avals(tree):
    """Structure plus (shape, dtype, weak_type) of every leaf: what jit and scan key on."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [
        (tuple(jnp.shape(x)), jnp.result_type(x), bool(getattr(jax.typeof(x), "weak_type", False))) for x in leaves
    ]


def assert_same_avals(actual, expected, what):
    ta, la = avals(actual)
    te, le = avals(expected)
    assert ta == te, f"{what}: tree structure changed\n  got      {ta}\n  expected {te}"
    assert la == le, f"{what}: leaf shapes/dtypes/weak types changed\n  got      {la}\n  expected {le}"


TOL = {  # (rtol, atol) by dtype, for updates of size ~LR
    jnp.dtype(jnp.float64): (1e-9, 1e-12),
    jnp.dtype(jnp.float32): (2e-5, 1e-6),
    jnp.dtype(jnp.bfloat16): (5e-2, 1e-2),
}


def assert_trees_close(actual, expected, what, tol=None):
    ta, te = jax.tree.structure(actual), jax.tree.structure(expected)
    assert ta == te, f"{what}: structures differ: {ta} vs {te}"
    for i, (a, e) in enumerate(zip(jax.tree.leaves(actual), jax.tree.leaves(expected))):
        assert jnp.result_type(a) == jnp.result_type(e), f"{what}: leaf {i} dtype {a.dtype} vs {e.dtype}"
        rtol, atol = tol or TOL.get(jnp.dtype(jnp.result_type(a)), (1e-9, 0))
        if jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            a64, e64 = np.asarray(jnp.asarray(a, jnp.float64)), np.asarray(jnp.asarray(e, jnp.float64))
            np.testing.assert_allclose(a64, e64, rtol=rtol, atol=atol, err_msg=f"{what}: leaf {i}")
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=f"{what}: leaf {i}")


def _state_tol(params):
    """State leaves (float32 accumulators of bfloat16 params included) are as accurate as the params' lowest dtype."""
    dtypes = [jnp.dtype(jnp.result_type(x)) for x in jax.tree.leaves(params)]
    return TOL[min(dtypes, key=lambda d: jnp.finfo(d).bits)] if dtypes else None


def take(tree, i):
    """Entry ``i`` of every leaf of a batched tree."""
    return jax.tree.map(lambda x: x[i], tree)


def quadratic_loss(params, target):
    return sum(
        jnp.sum(jnp.square(jnp.asarray(p, jnp.float32) - t))
        for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target))
    )


# --------------------------------------------------------------------------- #
# Structure, dtypes, eval_shape, jit vs eager, scan vs loop
# --------------------------------------------------------------------------- #

N_STEPS = 3


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=2,  # per optimizer: 48 random trees in all
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=tree_specs, seed=st.integers(0, 2**31 - 1))
def test_structure_dtypes_jit_and_scan(name, spec, seed):
    assert 1 <= n_leaves(spec) <= 5
    opt = cached_opt(name)
    rng = np.random.default_rng(seed)
    params = make_tree(spec, rng)
    grads = [make_tree(spec, rng) for _ in range(N_STEPS)]
    params_treedef = jax.tree.structure(params)
    param_dtypes = [x.dtype for x in jax.tree.leaves(params)]

    state0 = opt.init(params)

    # eval_shape matches init exactly (no concrete value needed to build the state).
    shapes = jax.eval_shape(opt.init, params)
    assert jax.tree.structure(shapes) == jax.tree.structure(state0)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(state0)):
        assert (s.shape, s.dtype) == (x.shape, x.dtype)

    # Eager steps: structure and dtypes of updates, params and state are kept.
    p, s = params, state0
    eager_updates = []
    for k, g in enumerate(grads):
        u, s = opt.update(g, s, p)
        assert jax.tree.structure(u) == params_treedef, f"step {k}: updates tree changed"
        assert [x.dtype for x in jax.tree.leaves(u)] == param_dtypes, f"step {k}: update dtypes changed"
        assert [x.shape for x in jax.tree.leaves(u)] == [x.shape for x in jax.tree.leaves(p)]
        assert_same_avals(s, state0, f"{name} state after eager step {k + 1}")
        p = jol.apply_updates(p, u)
        assert jax.tree.structure(p) == params_treedef
        assert [x.dtype for x in jax.tree.leaves(p)] == param_dtypes, f"step {k}: apply_updates changed a dtype"
        eager_updates.append(u)
    eager_params = p

    # lax.scan over the steps, jitted, equals the eager Python loop (tolerance per dtype).
    def body(carry, g):
        p, s = carry
        u, s = opt.update(g, s, p)
        return (jol.apply_updates(p, u), s), u

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
    (scan_params, scan_state), scan_updates = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(
        (params, state0), stacked
    )
    assert_same_avals(scan_state, state0, f"{name} state after scan")
    comparable = _without_bfloat16 if name in SIGN_MASKED else (lambda tree: tree)
    tol = _state_tol(params) if name in COUPLED else None
    for k in range(N_STEPS):
        u_k = take(scan_updates, k)
        assert_trees_close(comparable(u_k), comparable(eager_updates[k]),
                           f"{name} jitted scan vs eager loop, step {k + 1}", tol=tol)
    assert_trees_close(comparable(scan_params), comparable(eager_params), f"{name} params, jitted scan vs eager loop",
                       tol=tol)
    assert_trees_close(comparable(scan_state), comparable(s), f"{name} state, jitted scan vs eager loop",
                       tol=_state_tol(params))


# The cautious mask keeps a coordinate by the sign of its step and rescales the leaf by how many it
# kept: a bfloat16 step near 0 may round to either sign under jit and eagerly, and the rescale spreads
# that over the leaf. Their bfloat16 leaves are compared for structure and dtype only.
SIGN_MASKED = {"cautious_adamw", "cautious_lion", "cautious_sgd_momentum"}


def _without_bfloat16(tree):
    return jax.tree.map(lambda x: jnp.zeros((), jnp.float32) if jnp.result_type(x) == jnp.bfloat16 else x, tree)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=tree_specs,
    seed=st.integers(0, 2**31 - 1),
    update_dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float64]),
)
def test_apply_updates_keeps_param_dtypes_whatever_the_update_dtype(spec, seed, update_dtype):
    rng = np.random.default_rng(seed)
    params = make_tree(spec, rng)
    updates = jax.tree.map(lambda x: x.astype(update_dtype), make_tree(spec, rng))
    new = jol.apply_updates(params, updates)
    assert jax.tree.structure(new) == jax.tree.structure(params)
    for p, n, u in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(updates)):
        assert n.dtype == p.dtype and n.shape == p.shape
        expected = (np.asarray(p, np.float64) + np.asarray(u, np.float64)).astype(np.float64)
        rtol = 1e-2 if jnp.bfloat16 in (p.dtype, update_dtype) else 1e-5
        np.testing.assert_allclose(np.asarray(n, np.float64), expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("ord", [1, 2, "inf"])
def test_tree_norm_under_jit_and_vmap_equals_eager(ord):
    """The norms used by the clipping transforms work on traced trees of several leaves."""
    tree = {
        "a": jnp.asarray([3.0, -4.0], jnp.float32),
        "b": [jnp.asarray(-12.0, jnp.float32), jnp.zeros((0, 2), jnp.float32)],
    }
    eager = jol.tree.norm(tree, ord)
    expected = {1: 19.0, 2: 13.0, "inf": 12.0}[ord]
    assert float(eager) == pytest.approx(expected)
    assert float(jax.jit(lambda t: jol.tree.norm(t, ord))(tree)) == pytest.approx(expected)
    batched = jax.vmap(lambda t: jol.tree.norm(t, ord))(jax.tree.map(lambda x: jnp.stack([x, 2 * x]), tree))
    np.testing.assert_allclose(np.asarray(batched), [expected, 2 * expected], rtol=1e-6)


# --------------------------------------------------------------------------- #
# No recompilation
# --------------------------------------------------------------------------- #


def _fixed_tree(rng, scale=1.0):
    spec = {
        "w": ((3, 2), jnp.float32),
        "b": ((2,), jnp.float32),
        "nested": [((), jnp.float64), ((2, 2), jnp.bfloat16)],
    }
    return make_tree(spec, rng, scale)


# Steps coupled across leaves through scalars computed from every leaf in its own dtype (global norms of
# MARS's corrected gradients, DoWG's and MoMo's norms and inner products, schedule-free's float32 weights):
# XLA may round a low-precision leaf's terms differently under jit (fused multiply-adds), and every leaf,
# float64 ones included, inherits that through the shared scalar. Compared at the tree's lowest precision.
COUPLED = {"mars_adamw_global", "dowg", "momo", "momo_adam", "schedule_free_sgd", "schedule_free_adamw"}


@pytest.mark.parametrize("name", NAMES)
def test_jitted_update_traces_once_and_equals_eager(name):
    opt = build(name)
    rng = np.random.default_rng(0)
    params = _fixed_tree(rng)
    grads = [_fixed_tree(rng) for _ in range(3)]  # new values each call, same avals
    traces = []

    def update(g, s, p):
        traces.append(None)  # runs only while tracing
        return opt.update(g, s, p)

    jupdate = jax.jit(update)
    state0 = opt.init(params)
    p_jit, s_jit = params, state0
    p_eager, s_eager = params, state0
    jit_updates = []
    for k, g in enumerate(grads):
        u_jit, s_jit = jupdate(g, s_jit, p_jit)
        u_eager, s_eager = opt.update(g, s_eager, p_eager)
        assert_same_avals(s_jit, state0, f"{name} state after jitted step {k + 1}")
        tol = _state_tol(params) if name in COUPLED else None
        assert_trees_close(u_jit, u_eager, f"{name} jit vs eager, step {k + 1}", tol=tol)
        p_jit, p_eager = jol.apply_updates(p_jit, u_jit), jol.apply_updates(p_eager, u_eager)
        jit_updates.append(u_jit)
    assert len(traces) == 1, f"{name}: jitted update traced {len(traces)} times over {len(grads)} calls"
    if hasattr(jupdate, "_cache_size"):
        assert jupdate._cache_size() == 1
    assert_trees_close(s_jit, s_eager, f"{name} state, jit vs eager", tol=_state_tol(params))
    # The calls did different work (new gradients give new updates).
    assert not np.allclose(np.asarray(jit_updates[0]["w"]), np.asarray(jit_updates[-1]["w"]))


# --------------------------------------------------------------------------- #
# vmap over every numeric hyperparameter equals a loop
# --------------------------------------------------------------------------- #

VMAP_STEPS = 3
# RAdam leaves its momentum-only phase (where b2 and the threshold matter) after ~5 steps;
# the chain's schedule only starts decaying (decay_steps matters) after its warmup.
N_STEPS_FOR = {"radam": 6, "chain_clip_adam_schedule": 5, "signum": 6}


def _run(name, params, target, n_steps=None, **hps):
    """Final params after ``n_steps`` steps on a quadratic, the optimizer built from ``hps``."""
    if n_steps is None:
        n_steps = N_STEPS_FOR.get(name, VMAP_STEPS)
    opt = build(name, **hps)
    p, s = params, opt.init(params)
    for k in range(n_steps):
        # The target flips sign every step so gradients change sign (momentum matters).
        t_k = target if k % 2 == 0 else jax.tree.map(jnp.negative, target)
        g = jax.tree.map(lambda x, t: 2.0 * (x - t), p, t_k)  # the gradient of quadratic_loss(p, t_k)
        u, s = opt.update(g, s, p)
        p = jol.apply_updates(p, u)
    return p


def _small_problem(seed=1):
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(2), jnp.float32),
    }
    target = {
        "w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(2), jnp.float32),
    }
    return params, target


def one_at_a_time(base, alternatives, n_rows):
    """Rows of arguments: row 0 is ``base``; row ``j`` changes only the ``j``-th argument.

    Padded with copies of ``base`` to ``n_rows`` rows: one batch size for every test keeps
    the eager per-shape compilation caches warm.
    """
    rows = [dict(base)]
    for key, value in alternatives.items():
        rows.append({**base, key: value})
    assert len(rows) <= n_rows
    return rows + [dict(base)] * (n_rows - len(rows))


def columns(rows, dtype_of):
    """The rows as one array per argument (a batch for ``vmap``)."""
    return {key: jnp.asarray([row[key] for row in rows], dtype_of(key)) for key in rows[0]}


def _hp_dtype(hp):
    return jnp.int32 if hp in STEP_COUNT_HPS else jnp.float32


# Learned step sizes that start tiny (Mechanic's s_init = 1e-8, Prodigy's d0 = 1e-6): over the test's few
# float32 steps the params do not move at all, so these cannot show an effect here (vmap still equals the
# loop for them). test_contrib_parameter_free runs both over 200 float64 steps against references.
SILENT_IN_FEW_STEPS = {("mechanize_sgd", "weight_decay"), ("prodigy", "beta3"), ("prodigy", "estim_lr_coef")}


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_every_hyperparameter_equals_loop(name):
    """Every numeric hyperparameter is batched at once; row ``j`` of the batch changes only
    hyperparameter ``j``, so each one is checked against the loop and shown to matter."""
    params, target = _small_problem()
    hps = OPTIMIZERS[name][2]
    assert "learning_rate" in hps
    base = {hp: SWEEP[hp][1] for hp in hps}
    rows = one_at_a_time(base, {hp: ALTERNATIVE_FOR.get((name, hp), SWEEP[hp][2]) for hp in hps}, n_rows=9)
    batch = columns(rows, _hp_dtype)
    batched = jax.vmap(lambda v: _run(name, params, target, **v))(batch)
    for j in range(len(hps) + 1):
        concrete = {hp: batch[hp][j] for hp in hps}  # concrete arrays: the eager, validated path
        looped = _run(name, params, target, **concrete)
        what = f"{name}: vmap vs loop, row {j} ({'base' if j == 0 else 'changed ' + hps[j - 1]})"
        assert_trees_close(take(batched, j), looped, what, tol=(2e-5, 1e-6))
        if j > 0 and (name, hps[j - 1]) not in SILENT_IN_FEW_STEPS:
            w = np.asarray(batched["w"])
            assert not np.array_equal(w[j], w[0]), f"{name}: {hps[j - 1]} had no effect"
        else:
            base_result = looped
    for j in range(len(hps) + 1, len(rows)):  # the padding rows repeat the base row
        assert_trees_close(take(batched, j), base_result, f"{name}: padding row {j}", tol=(2e-5, 1e-6))


# --------------------------------------------------------------------------- #
# Derivatives with respect to hyperparameters
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
def test_grad_wrt_learning_rate_and_every_float_hyperparameter_is_finite(name):
    params, target = _small_problem(4)
    float_hps = [hp for hp in OPTIMIZERS[name][2] if hp not in STEP_COUNT_HPS]
    point = {hp: jnp.asarray(SWEEP[hp][1], jnp.float32) for hp in float_hps}

    def final_loss(hps):
        return quadratic_loss(_run(name, params, target, n_steps=3, **hps), target)

    grads = jax.grad(final_loss)(point)
    assert set(grads) == set(float_hps)
    for hp, d in grads.items():
        assert jnp.isfinite(d), f"{name}: d loss / d {hp} = {d}"
    assert grads["learning_rate"] != 0, f"{name}: the loss after 3 steps does not depend on the learning rate"


# --------------------------------------------------------------------------- #
# Schedules: vmap over every numeric argument equals a loop
# --------------------------------------------------------------------------- #

_PIECES = {3: 0.5, 7: 0.2}

# name -> (builder taking keyword arguments, base arguments, {argument: three values})
SCHEDULES = {
    "constant": (sch.constant_schedule, {"value": 0.5}, {"value": [0.1, 0.5, 2.0]}),
    "linear": (
        sch.linear_schedule,
        {"init_value": 1.0, "end_value": 0.1, "transition_steps": 10, "transition_begin": 2},
        {
            "init_value": [0.5, 1.0, 2.0],
            "end_value": [0.0, 0.1, 3.0],
            "transition_steps": [0, 5, 10],
            "transition_begin": [0, 3, 7],
        },
    ),
    "polynomial": (
        sch.polynomial_schedule,
        {"init_value": 1.0, "end_value": 0.1, "power": 2.0, "transition_steps": 10, "transition_begin": 2},
        {
            "init_value": [0.5, 1.0, 2.0],
            "end_value": [0.0, 0.1, 3.0],
            "power": [0.5, 1.0, 3.0],
            "transition_steps": [0, 5, 10],
            "transition_begin": [0, 3, 7],
        },
    ),
    "cosine_decay": (
        sch.cosine_decay_schedule,
        {"init_value": 1.0, "decay_steps": 10, "alpha": 0.1, "exponent": 1.0},
        {
            "init_value": [0.5, 1.0, 2.0],
            "decay_steps": [1, 5, 10],
            "alpha": [0.0, 0.1, 0.5],
            "exponent": [0.5, 1.0, 2.0],
        },
    ),
    "warmup_constant": (
        sch.warmup_constant_schedule,
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 4},
        {"init_value": [0.0, 0.1, 0.5], "peak_value": [0.5, 1.0, 2.0], "warmup_steps": [0, 2, 5]},
    ),
    "warmup_cosine_decay": (
        sch.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 3, "decay_steps": 12, "end_value": 0.1, "exponent": 1.0},
        {
            "init_value": [0.0, 0.1, 0.5],
            "peak_value": [0.0, 1.0, 2.0],
            "warmup_steps": [0, 3, 5],
            "decay_steps": [6, 12, 20],
            "end_value": [0.0, 0.1, 0.3],
            "exponent": [0.5, 1.0, 2.0],
        },
    ),
    "linear_onecycle": (
        sch.linear_onecycle_schedule,
        {
            "transition_steps": 20,
            "peak_value": 1.0,
            "pct_start": 0.3,
            "pct_final": 0.85,
            "div_factor": 25.0,
            "final_div_factor": 1e4,
        },
        {
            "transition_steps": [10, 20, 23],
            "peak_value": [0.5, 1.0, 2.0],
            "pct_start": [0.2, 0.3, 0.45],
            "pct_final": [0.6, 0.85, 0.9],
            "div_factor": [5.0, 25.0, 100.0],
            "final_div_factor": [10.0, 1e2, 1e4],
        },
    ),
    "cosine_onecycle": (
        sch.cosine_onecycle_schedule,
        {"transition_steps": 20, "peak_value": 1.0, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
        {
            "transition_steps": [10, 20, 23],
            "peak_value": [0.5, 1.0, 2.0],
            "pct_start": [0.2, 0.3, 0.45],
            "div_factor": [5.0, 25.0, 100.0],
            "final_div_factor": [10.0, 1e2, 1e4],
        },
    ),
    "piecewise_constant": (
        lambda init_value, s3, s7: sch.piecewise_constant_schedule(init_value, {3: s3, 7: s7}),
        {"init_value": 1.0, "s3": 0.5, "s7": 0.2},
        {"init_value": [0.5, 1.0, 2.0], "s3": [0.0, 0.5, 2.0], "s7": [0.1, 0.2, 1.0]},
    ),
    "piecewise_interpolate_linear": (
        lambda init_value, s3, s7: sch.piecewise_interpolate_schedule("linear", init_value, {3: s3, 7: s7}),
        {"init_value": 1.0, "s3": 0.5, "s7": 0.2},
        {"init_value": [0.5, 1.0, 2.0], "s3": [0.0, 0.5, 2.0], "s7": [0.1, 0.2, 1.0]},
    ),
    "piecewise_interpolate_cosine": (
        lambda init_value, s3, s7: sch.piecewise_interpolate_schedule("cosine", init_value, {3: s3, 7: s7}),
        {"init_value": 1.0, "s3": 0.5, "s7": 0.2},
        {"init_value": [0.5, 1.0, 2.0], "s3": [0.0, 0.5, 2.0], "s7": [0.1, 0.2, 1.0]},
    ),
    "join": (
        lambda a, b, boundary: sch.join_schedules(
            [sch.linear_schedule(a, 0.0, 10), sch.constant_schedule(b)], [boundary]
        ),
        {"a": 1.0, "b": 0.3, "boundary": 5},
        {"a": [0.5, 1.0, 2.0], "b": [0.0, 0.3, 1.0], "boundary": [0, 5, 9]},
    ),
    "sgdr": (
        lambda peak, warmup, decay: sch.sgdr_schedule(
            [
                {"init_value": 0.0, "peak_value": peak, "warmup_steps": warmup, "decay_steps": decay},
                {"init_value": 0.1, "peak_value": 0.5 * peak, "warmup_steps": 1, "decay_steps": 6},
            ]
        ),
        {"peak": 1.0, "warmup": 2, "decay": 8},
        {"peak": [0.5, 1.0, 2.0], "warmup": [0, 2, 4], "decay": [5, 8, 12]},
    ),
}
for _decay_name, _fn in [
    ("exponential_decay", sch.exponential_decay),
    ("natural_exp_decay", sch.natural_exp_decay),
    ("inverse_time_decay", sch.inverse_time_decay),
]:
    for _staircase in (False, True):
        SCHEDULES[f"{_decay_name}{'_staircase' if _staircase else ''}"] = (
            functools.partial(_fn, staircase=_staircase),
            {"init_value": 1.0, "transition_steps": 4, "decay_rate": 0.5, "transition_begin": 2, "end_value": 0.2},
            {
                "init_value": [0.5, 1.0, 2.0],
                "transition_steps": [0, 3, 5],
                "decay_rate": [0.0, 0.5, 2.0],
                "transition_begin": [0, 2, 6],
                "end_value": [0.0, 0.2, 0.6],
            },
        )
SCHEDULES["warmup_exponential_decay"] = (
    sch.warmup_exponential_decay_schedule,
    {
        "init_value": 0.0,
        "peak_value": 1.0,
        "warmup_steps": 3,
        "transition_steps": 4,
        "decay_rate": 0.5,
        "transition_begin": 1,
        "end_value": 0.2,
    },
    {
        "init_value": [0.0, 0.1, 0.5],
        "peak_value": [0.5, 1.0, 2.0],
        "warmup_steps": [0, 3, 5],
        "transition_steps": [0, 3, 5],
        "decay_rate": [0.0, 0.5, 2.0],
        "transition_begin": [0, 1, 4],
        "end_value": [0.0, 0.2, 0.6],
    },
)

COUNTS = jnp.arange(0, 30, dtype=jnp.int32)


def _sched_dtype_of(rows):
    def dtype_of(key):
        ints = all(isinstance(row[key], int) for row in rows)
        return jnp.int32 if ints else jnp.float64

    return dtype_of


@pytest.mark.parametrize("sched_name", sorted(SCHEDULES))
def test_schedule_vmap_over_every_argument_equals_loop(sched_name):
    """All numeric arguments batched at once, row ``j`` changing only argument ``j``."""
    fn, base, sweep = SCHEDULES[sched_name]
    assert set(sweep) <= set(base)
    alternatives = {arg: next(v for v in reversed(vals) if v != base[arg]) for arg, vals in sweep.items()}
    rows = one_at_a_time(base, alternatives, n_rows=8)
    batch = columns(rows, _sched_dtype_of(rows))
    args = list(alternatives)

    def curve(kwargs):
        return jax.vmap(fn(**kwargs))(COUNTS)

    batched = np.asarray(jax.vmap(curve)(batch))
    assert batched.shape == (len(rows), COUNTS.shape[0])
    assert np.all(np.isfinite(batched)), f"{sched_name}: non-finite values"
    for j in range(len(rows)):
        if j > len(args):  # padding: a copy of the base row
            np.testing.assert_allclose(batched[j], batched[0], rtol=1e-12, err_msg=f"{sched_name}: padding row {j}")
            continue
        looped = np.asarray(curve({key: batch[key][j] for key in batch}))
        what = f"{sched_name}: vmap vs loop, row {j} ({'base' if j == 0 else 'changed ' + args[j - 1]})"
        np.testing.assert_allclose(batched[j], looped, rtol=1e-6, atol=1e-9, err_msg=what)
        if j > 0:
            assert not np.allclose(batched[j], batched[0]), f"{sched_name}: {args[j - 1]} had no effect"
    # Python numbers give the same curve as concrete arrays.
    np.testing.assert_allclose(
        np.asarray(curve(base)), batched[0], rtol=1e-6, atol=1e-9, err_msg=f"{sched_name}: Python-number arguments"
    )


@pytest.mark.parametrize("name", ["adamw", "sgd_momentum", "lion"])
def test_optimizer_with_traced_schedule_arguments_vmap_equals_loop(name):
    """An optimizer whose learning rate is a schedule built from traced arguments."""
    params, target = _small_problem(5)
    base = {"init_value": 0.01, "peak_value": 0.1, "warmup_steps": 2, "decay_steps": 8, "end_value": 0.001}
    alternatives = {"init_value": 0.05, "peak_value": 0.3, "warmup_steps": 4, "decay_steps": 12, "end_value": 0.01}
    rows = one_at_a_time(base, alternatives, n_rows=len(alternatives) + 1)
    batch = columns(rows, lambda k: jnp.int32 if k.endswith("_steps") else jnp.float32)
    args = list(alternatives)

    def run(v):
        lr = sch.warmup_cosine_decay_schedule(**v)
        return _run(name, params, target, n_steps=6, learning_rate=lr)

    batched = jax.vmap(run)(batch)
    for j in range(len(rows)):
        looped = run({key: batch[key][j] for key in batch})
        what = f"{name} with a schedule, row {j} ({'base' if j == 0 else 'changed ' + args[j - 1]})"
        assert_trees_close(take(batched, j), looped, what, tol=(2e-5, 1e-6))
        if j > 0:
            assert not np.array_equal(np.asarray(batched["w"][j]), np.asarray(batched["w"][0])), what


def test_grad_wrt_schedule_values_through_optimizer_is_finite():
    params, target = _small_problem(6)

    def final_loss(peak, end, init):
        lr = sch.warmup_cosine_decay_schedule(init, peak, 2, 6, end)
        return quadratic_loss(_run("adamw", params, target, n_steps=5, learning_rate=lr), target)

    grads = jax.grad(final_loss, argnums=(0, 1, 2))(jnp.asarray(0.1), jnp.asarray(0.0), jnp.asarray(0.0))
    assert all(bool(jnp.isfinite(g)) for g in grads), grads
    assert grads[0] != 0


def test_init_of_concrete_params_captured_by_jit_and_vmap():
    """Eager ``*_like`` places state like its (possibly sharded) param; inside a trace nothing is placed."""
    params = {"w": jnp.ones(3), "weak": jnp.full((2,), 0.1)}
    opt = jol.adam(0.1)
    assert jax.jit(lambda: opt.init(params))()[0].mu["w"].shape == (3,)
    assert jax.vmap(lambda lr: jol.adam(lr).init(params)[0].nu["weak"])(jnp.ones(2)).shape == (2, 2)
