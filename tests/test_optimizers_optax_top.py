"""Adan, Yogi and Rprop: 200 float64 steps against NumPy references written from the papers
and against Optax 0.2.8, and Rprop against ``torch.optim.Rprop``.

Every run is one jitted ``lax.scan`` over the steps of a smooth problem whose gradient
is ``curv * (p - target) + 0.1 sin(0.7 t + phase)`` (the sine keeps signs changing).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol
from jaxopt_lite.optimizers.fromage import fromage
from jaxopt_lite.optimizers.novograd import ScaleByNovogradState, novograd, scale_by_novograd
from jaxopt_lite.optimizers.optimistic import (
    ScaleByOptimisticGradientState,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    scale_by_optimistic_gradient,
)
from jaxopt_lite.optimizers.polyak import polyak_sgd, scale_by_polyak
from jaxopt_lite.optimizers.signum import signum

STEPS = 200
# Polyak "sps+" on tree "A": with the step doubled (scaling 0.5 enters squared) the loss falls below f_min.
POLYAK_PLUS = {"max_learning_rate": 10.0, "scaling": 0.5, "f_min": 0.1}
TREES = {
    "A": {"w": (3, 4), "b": (5,), "s": ()},
    "B": {"conv": (2, 3, 4), "layers": [(4, 3), (6,)]},
}


@functools.cache
def problem(tree_name):
    """Start params, target, curvature and phase, as trees of float64 NumPy arrays."""
    rng = np.random.default_rng(len(tree_name) + ord(tree_name[0]))
    spec = TREES[tree_name]
    shape_leaf = lambda x: isinstance(x, tuple)  # noqa: E731

    def draw(fn):
        return jax.tree.map(lambda shape: np.asarray(fn(shape), np.float64), spec, is_leaf=shape_leaf)

    return (
        draw(lambda s: rng.normal(size=s)),
        draw(lambda s: rng.normal(size=s)),
        draw(lambda s: rng.uniform(0.5, 2.0, size=s)),
        draw(lambda s: rng.uniform(0.0, 2 * np.pi, size=s)),
    )


def gradient(xp, params, target, curv, phase, t):
    return jax.tree.map(lambda p, y, c, f: c * (p - y) + 0.1 * xp.sin(0.7 * t + f), params, target, curv, phase)


def loss_value(xp, params, target, curv):
    """The value passed to Polyak's step size (any function of the params would do)."""
    return sum(xp.sum(0.5 * c * (p - y) ** 2) for p, y, c in zip(*map(jax.tree.leaves, (params, target, curv))))


def trajectory(opt, tree_name, apply_updates, with_value=False, steps=STEPS):
    """The params after each of ``steps`` steps, as a tree of ``(steps, ...)`` arrays.

    One jitted step called in a Python loop: compiling it costs less than compiling a scan.
    """
    target, curv, phase = (jax.tree.map(jnp.asarray, x) for x in problem(tree_name)[1:])

    @jax.jit
    def step(p, s, t):
        g = gradient(jnp, p, target, curv, phase, t)
        extra = {"value": loss_value(jnp, p, target, curv)} if with_value else {}
        u, s = opt.update(g, s, p, **extra)
        return apply_updates(p, u), s

    p = jax.tree.map(jnp.asarray, problem(tree_name)[0])
    s = opt.init(p)
    history = []
    for t in range(steps):
        p, s = step(p, s, jnp.asarray(t, jnp.float64))
        history.append(p)
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *history)


def reference_trajectory(step, init, tree_name, steps=STEPS):
    """The NumPy reference: ``step(leaves, grads, state, t, value)`` on the list of leaves, ``t`` from 1."""
    p0, target, curv, phase = problem(tree_name)
    treedef = jax.tree.structure(p0)
    leaves = [x.copy() for x in jax.tree.leaves(p0)]
    state = init(leaves)
    history = []
    for t in range(1, steps + 1):
        params = treedef.unflatten(leaves)
        grads = jax.tree.leaves(gradient(np, params, target, curv, phase, float(t - 1)))
        leaves, state = step(leaves, grads, state, t, loss_value(np, params, target, curv))
        history.append([x.copy() for x in leaves])
    return jax.tree.map(lambda *xs: np.stack(xs), *[treedef.unflatten(h) for h in history])


def assert_trajectories_close(got, want, what, rtol=1e-12, atol=1e-13):
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for path, g in jax.tree_util.tree_flatten_with_path(got)[0]:
        w = functools.reduce(lambda t, k: t[k.key if hasattr(k, "key") else k.idx], path, want)
        assert g.shape == w.shape, f"{what} {jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{what} {jax.tree_util.keystr(path)}")
    # The run went somewhere: the params moved away from where they started.
    assert any(np.max(np.abs(x[-1] - x[0])) > 1e-3 for x in jax.tree.leaves(got)), f"{what}: nothing moved"


# --------------------------------------------------------------------------- #
# NumPy references, written from the papers
# --------------------------------------------------------------------------- #


def adan_ref(lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, wd=0.0, paper=False):
    """Xie et al. (2022), Algorithm 1 in the code's ``b = 1 - beta`` form; ``w`` weighs the difference."""
    w = b2 if paper else 1 - b2

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            m, v, n, prev = state[i]
            d = np.zeros_like(g) if t == 1 else g - prev
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * d
            n = b3 * n + (1 - b3) * (g + w * d) ** 2
            m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
            u = (m_hat + w * v_hat) / (np.sqrt(n_hat + eps_root) + eps) + wd * p
            out.append(p - lr * u)
            state[i] = (m, v, n, g)
        return out, state

    return step, lambda leaves: [tuple(np.zeros_like(p) for _ in range(4)) for p in leaves]


def yogi_ref(lr, b1=0.9, b2=0.999, eps=1e-3, init_value=1e-6, bias_correction=True):
    """Zaheer et al. (2018), Algorithm 2 (plus Adam's bias corrections unless disabled)."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            m, v = state[i]
            m = b1 * m + (1 - b1) * g
            v = v - (1 - b2) * np.sign(v - g**2) * g**2
            m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
            out.append(p - lr * m_hat / (np.sqrt(v_hat) + eps))
            state[i] = (m, v)
        return out, state

    return step, lambda leaves: [(np.full_like(p, init_value), np.full_like(p, init_value)) for p in leaves]


def rprop_ref(lr, eta_minus=0.5, eta_plus=1.2, min_step=1e-6, max_step=50.0, delayed=True):
    """iRprop- (Igel & Husken, 2000); ``delayed`` applies each step one call late, as Optax."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            s, prev_g, pending = state[i]
            c = g * prev_g
            s = np.where(c > 0, np.minimum(s * eta_plus, max_step), np.where(c < 0, np.maximum(s * eta_minus, min_step), s))
            g = np.where(c < 0, 0.0, g)  # after a sign change: no step, and forget the sign
            new_step = s * np.sign(g)
            applied = np.where(c < 0, 0.0, pending) if delayed else new_step
            out.append(p - applied)
            state[i] = (s, g, new_step)
        return out, state

    return step, lambda leaves: [(np.full_like(p, lr), np.zeros_like(p), np.zeros_like(p)) for p in leaves]


# NovoGrad, Fromage, Signum, optimistic methods and Polyak's step size


def novograd_ref(lr, b1=0.9, b2=0.25, eps=1e-6, wd=0.0):
    """Ginsburg et al. (2019), Algorithm 1: one second moment per layer (leaf), started at ``||g_1||^2``."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            m, v = state[i]
            v = np.sum(g**2) if t == 1 else b2 * v + (1 - b2) * np.sum(g**2)
            m = b1 * m + (g / (np.sqrt(v) + eps) + wd * p)
            out.append(p - lr * m)
            state[i] = (m, v)
        return out, state

    return step, lambda leaves: [(np.zeros_like(p), 0.0) for p in leaves]


def fromage_ref(lr, min_norm=1e-6):
    """Bernstein et al. (2020), Algorithm 1: ``w <- (w - lr ||w|| / ||g|| g) / sqrt(1 + lr^2)`` per layer.

    ``lr`` is a number or a function of the step index (from 0); norms floored at ``min_norm``.
    """

    def step(leaves, grads, state, t, value):
        eta = lr(t - 1) if callable(lr) else lr
        out = []
        for p, g in zip(leaves, grads):
            p_norm, g_norm = max(np.linalg.norm(p), min_norm), max(np.linalg.norm(g), min_norm)
            ratio = 1.0 if p_norm == 0 or g_norm == 0 else p_norm / g_norm
            out.append((p - eta * ratio * g) / np.sqrt(1 + eta**2))
        return out, state

    return step, lambda leaves: None


def signum_ref(lr, beta=0.9):
    """Bernstein et al. (2018), Algorithm 2 (Signum): the sign of an (undebiased) moving average."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            state[i] = beta * state[i] + (1 - beta) * g
            out.append(p - lr * np.sign(state[i]))
        return out, state

    return step, lambda leaves: [np.zeros_like(p) for p in leaves]


def optimistic_gd_ref(lr, alpha=1.0, beta=1.0):
    """Mokhtari et al. (2019): ``w <- w - lr ((alpha + beta) g_t - beta g_{t-1})``, with ``g_0 = g_1`` (Optax)."""

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            prev = g if t == 1 else state[i]
            out.append(p - lr * ((alpha + beta) * g - beta * prev))
            state[i] = g
        return out, state

    return step, lambda leaves: [None for _ in leaves]


def optimistic_adam_ref(lr, alpha, beta, b1=0.9, b2=0.999, eps=1e-8, nesterov=True):
    """Daskalakis et al. (2018), Algorithm 1 (Optimistic Adam) in Optax's form: with ``r_t`` Adam's step,
    ``w <- w - lr ((alpha + beta) r_t - beta r_{t-1})``, ``r_0 = r_1``; the paper's is ``alpha = beta = 1``
    without Nesterov. ``nesterov`` uses NAdam's look-ahead
    ``b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``.
    """

    def step(leaves, grads, state, t, value):
        out = []
        for i, (p, g) in enumerate(zip(leaves, grads)):
            m, v, prev = state[i]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            if nesterov:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            else:
                m_hat = m / (1 - b1**t)
            r = m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
            prev = r if t == 1 else prev
            out.append(p - lr * ((alpha + beta) * r - beta * prev))
            state[i] = (m, v, r)
        return out, state

    return step, lambda leaves: [(np.zeros_like(p), np.zeros_like(p), None) for p in leaves]


def polyak_ref(max_learning_rate=1.0, scaling=1.0, f_min=0.0, eps=0.0, plus=False):
    """Loizou et al. (2021), SPS_max with ``c = 1`` (``plus``: Garrigos et al.'s ``(f - f*)_+``), over the whole
    tree: ``w <- w - s gamma g``, ``gamma = min((f - f*) / (s^2 ||g||^2 + eps), max_learning_rate)``. The ``s^2``
    is Optax's: its chain scales the gradient by ``s = scaling`` before measuring it (its docstring has ``||g||^2``).
    """

    def step(leaves, grads, state, t, value):
        sq = scaling**2 * sum(np.sum(g**2) for g in grads)
        gap = max(value - f_min, 0.0) if plus else value - f_min
        gamma = 0.0 if sq + eps <= np.finfo(np.float64).eps else min(gap / (sq + eps), max_learning_rate)
        state.append(gap)
        return [p - scaling * gamma * g for p, g in zip(leaves, grads)], state

    return step, lambda leaves: []


# --------------------------------------------------------------------------- #
# The cases: (library constructor, Optax constructor, NumPy reference), by id
# --------------------------------------------------------------------------- #


def _case(name, kwargs, ref=None, tree="A"):
    lib = functools.partial(getattr(jol, name), **kwargs)
    ox = functools.partial(getattr(optax, name), **kwargs)
    return {"lib": lib, "optax": ox, "ref": ref, "tree": tree, "value": False}


def _quiet(fn, **kwargs):
    """``fn(**kwargs)`` without its ``DeprecationWarning`` (``optimistic_adam`` warns, as Optax)."""

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return fn(**kwargs)

    return build


def _case_from(fn, kwargs, ref, tree="A", value=False):
    """A case for a name not yet exported at the top level: ``fn`` from its module, Optax's by its name."""
    return {"lib": _quiet(fn, **kwargs), "optax": _quiet(getattr(optax, fn.__name__), **kwargs), "ref": ref,
            "tree": tree, "value": value}


def _schedule(count):
    return 0.02 / (1.0 + 0.01 * count)


TOP_CASES = {
    "novograd": _case_from(novograd, {"learning_rate": 0.01}, lambda: novograd_ref(0.01)),
    "novograd_wd": _case_from(novograd,
                              {"learning_rate": 0.01, "b1": 0.8, "b2": 0.5, "eps": 1e-4, "weight_decay": 0.05},
                              lambda: novograd_ref(0.01, b1=0.8, b2=0.5, eps=1e-4, wd=0.05), tree="B"),
    "fromage": _case_from(fromage, {"learning_rate": 0.02}, lambda: fromage_ref(0.02), tree="B"),
    "fromage_schedule": _case_from(fromage, {"learning_rate": _schedule}, lambda: fromage_ref(_schedule)),
    "signum": _case_from(signum, {"learning_rate": 0.01, "beta": 0.8}, lambda: signum_ref(0.01, beta=0.8)),
    "optimistic_gradient_descent": _case_from(optimistic_gradient_descent, {"learning_rate": 0.01},
                                              lambda: optimistic_gd_ref(0.01)),
    "optimistic_gradient_descent_ab": _case_from(optimistic_gradient_descent,
                                                 {"learning_rate": 0.01, "alpha": 0.5, "beta": 0.8},
                                                 lambda: optimistic_gd_ref(0.01, 0.5, 0.8), tree="B"),
    # Optax's first interface: alpha = learning_rate, beta = optimism (default: learning_rate), unit step.
    "optimistic_adam": _case_from(optimistic_adam, {"learning_rate": 0.01},
                                  lambda: optimistic_adam_ref(1.0, 0.01, 0.01)),
    "optimistic_adam_paper": _case_from(optimistic_adam, {"learning_rate": 0.01, "optimism": 0.02, "nesterov": False},
                                        lambda: optimistic_adam_ref(1.0, 0.01, 0.02, nesterov=False), tree="B"),
    "optimistic_adam_v2": _case_from(optimistic_adam_v2, {"learning_rate": 0.01, "alpha": 0.5, "beta": 0.8, "b2": 0.99},
                                     lambda: optimistic_adam_ref(0.01, 0.5, 0.8, b2=0.99)),
    "polyak_sgd": _case_from(polyak_sgd, {}, lambda: polyak_ref(), value=True),
    "polyak_sgd_scaled": _case_from(polyak_sgd, {"max_learning_rate": 0.3, "scaling": 0.5, "f_min": -1.0, "eps": 1e-3},
                                    lambda: polyak_ref(0.3, 0.5, -1.0, 1e-3), tree="B", value=True),
    # The gap turns negative (see the test below): then sps+ stops.
    "polyak_sgd_plus": _case_from(polyak_sgd, {**POLYAK_PLUS, "variant": "sps+"},
                                  lambda: polyak_ref(**POLYAK_PLUS, plus=True), value=True),
}


CASES = {
    "adan": _case("adan", {"learning_rate": 0.01}, ref=lambda: adan_ref(0.01)),
    "yogi": _case("yogi", {"learning_rate": 0.01}, ref=lambda: yogi_ref(0.01)),
    "rprop": _case("rprop", {"learning_rate": 0.01}, ref=lambda: rprop_ref(0.01)),
}
CASES.update(TOP_CASES)


@functools.cache
def library_trajectory(case_id):
    case = CASES[case_id]
    return trajectory(case["lib"](), case["tree"], jol.apply_updates, with_value=case["value"])


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_numpy_reference_from_the_paper(case_id):
    case = CASES[case_id]
    want = reference_trajectory(*case["ref"](), case["tree"])
    assert_trajectories_close(library_trajectory(case_id), want, f"{case_id} vs NumPy reference", rtol=1e-10)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_optax(case_id):
    case = CASES[case_id]
    want = trajectory(case["optax"](), case["tree"], optax.apply_updates, with_value=case["value"])
    assert_trajectories_close(library_trajectory(case_id), want, f"{case_id} vs Optax")


@pytest.mark.parametrize("ours, theirs", [(jol.ScaleByAdanState, optax.ScaleByAdanState),
                                          (jol.ScaleByRpropState, optax.ScaleByRpropState)])
def test_state_types_have_optax_names_and_fields(ours, theirs):
    assert ours.__name__ == theirs.__name__
    assert ours._fields == theirs._fields


# --------------------------------------------------------------------------- #
# NovoGrad, Fromage, Signum, optimistic methods, Polyak: states and arguments
# --------------------------------------------------------------------------- #


def _describe_state(state):
    """The state's nested NamedTuple names and fields, with each array's shape and dtype."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return (type(state).__name__, tuple((f, _describe_state(getattr(state, f))) for f in state._fields))
    if isinstance(state, (tuple, list)):
        return tuple(_describe_state(x) for x in state)
    if isinstance(state, dict):
        return {k: _describe_state(v) for k, v in state.items()}
    return (tuple(state.shape), jnp.dtype(state.dtype))


@pytest.mark.parametrize("case_id", sorted(set(TOP_CASES) - {"fromage_schedule"}))
def test_top_case_states_match_optax(case_id):
    """Same nested state types (names), fields, shapes and dtypes as Optax, before and after one update.

    (``fromage_schedule`` is left out: a weight-decay schedule's state is ``AddDecayedWeightsScheduleState``
    here, Optax's ``WeightDecaySchedule``.)
    """
    case = CASES[case_id]
    params = jax.tree.map(jnp.asarray, problem(case["tree"])[0])
    extra = {"value": jnp.asarray(1.0)} if case["value"] else {}

    def states(opt):  # traced only (eval_shape): nothing compiles
        init = jax.eval_shape(opt.init, params)
        after = jax.eval_shape(lambda p, s: opt.update(p, s, p, **extra)[1], params, init)
        return _describe_state(init), _describe_state(after)

    assert states(case["lib"]()) == states(case["optax"]())


@pytest.mark.parametrize("ours, theirs", [(ScaleByNovogradState, optax.ScaleByNovogradState),
                                          (ScaleByOptimisticGradientState,
                                           optax._src.transform.ScaleByOptimisticGradientState)])
def test_top_state_types_have_optax_names_and_fields(ours, theirs):
    assert ours.__name__ == theirs.__name__
    assert ours._fields == theirs._fields


@pytest.mark.parametrize("ours", [novograd, scale_by_novograd, fromage, signum, optimistic_gradient_descent,
                                  optimistic_adam, optimistic_adam_v2, scale_by_optimistic_gradient, polyak_sgd,
                                  scale_by_polyak])
def test_top_signatures_match_optax(ours):
    import inspect

    theirs = getattr(optax, ours.__name__)
    got = [(p.name, p.kind, p.default) for p in inspect.signature(ours).parameters.values()]
    want = [(p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()]
    assert got == want


def test_polyak_sps_plus_case_has_negative_gaps():
    """The ``sps+`` case differs from ``sps`` on that run (NumPy only): its ``max(gap, 0)`` matters."""
    plus = reference_trajectory(*polyak_ref(**POLYAK_PLUS, plus=True), "A")
    plain = reference_trajectory(*polyak_ref(**POLYAK_PLUS), "A")
    assert max(np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(plus), jax.tree.leaves(plain))) > 1e-3


def test_top_bad_arguments_name_the_optimizer():
    with pytest.raises(ValueError, match="novograd: b2"):
        novograd(0.1, b2=1.5)
    with pytest.raises(ValueError, match="fromage: learning_rate"):
        fromage(-0.1)
    with pytest.raises(ValueError, match="signum: beta"):
        signum(0.1, beta=1.0)
    with pytest.raises(ValueError, match="optimistic_gradient_descent: beta"):
        optimistic_gradient_descent(0.1, beta=-1.0)
    with pytest.raises(TypeError, match="optimistic_gradient_descent: alpha"):
        optimistic_gradient_descent(0.1, alpha=lambda count: 1.0)
    with pytest.raises(ValueError, match="^optimistic_adam_v2: scale_by_adam: b1"):
        optimistic_adam_v2(0.1, b1=-0.1)
    with pytest.raises(ValueError, match="polyak_sgd: variant"):
        polyak_sgd(variant="sps++")
    with pytest.raises(ValueError, match="polyak_sgd: max_learning_rate"):
        polyak_sgd(max_learning_rate=-1.0)


def test_optimistic_adam_warns_and_refuses_schedules_as_optax():
    with pytest.warns(DeprecationWarning, match="optimistic_adam_v2"):
        optimistic_adam(0.1)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="optimistic_adam_v2"):
        optimistic_adam(lambda count: 0.1)


def test_polyak_update_needs_value_and_params_free_chains_work():
    params = {"w": jnp.ones(3)}
    opt, tx = polyak_sgd(), scale_by_novograd()
    with pytest.raises(TypeError, match="value"):  # errors come at trace time: eval_shape compiles nothing
        jax.eval_shape(lambda p: opt.update(p, opt.init(p), p), params)
    with pytest.raises(ValueError, match="scale_by_novograd: params"):
        jax.eval_shape(lambda p: scale_by_novograd(weight_decay=0.1).update(p, tx.init(p), None), params)

    @jax.jit
    def run(p):
        zero = jax.tree.map(jnp.zeros_like, p)
        return opt.update(zero, opt.init(p), p, value=2.0)[0], tx.update(p, tx.init(p), None)[0]

    polyak_step, novograd_step = run(params)
    # Zero gradient: no step (Optax's guard on ||g||^2 + eps), not nan.
    np.testing.assert_array_equal(polyak_step["w"], np.zeros(3))
    # NovoGrad without weight decay needs no params; its first step is g / (||g|| + eps).
    np.testing.assert_allclose(novograd_step["w"], np.ones(3) / (np.sqrt(3.0) + 1e-8), rtol=1e-12)
