"""Adafactor and SM3: 100 float64 steps against NumPy references written from the papers
(in Optax's conventions) and against Optax 0.2.8; state types and shapes as Optax's; vmap over the
learning rate; ``jit(init)`` under ``eval_shape``.

The tree has a (4, 6) matrix and a (2, 3, 5) tensor that factor once ``min_dim_size_to_factor=3``,
a vector and a scalar. The gradient is ``curv * (p - target) + 0.1 sin(0.7 t + phase)``.
Optax's ``sm3`` fails on scalar leaves (an ``IndexError`` in its update), so Optax runs SM3 on
the tree without the scalar; every leaf evolves on its own (the gradient and both optimizers act
leaf by leaf), so that run is compared with the other leaves of ours.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_lite.base import apply_updates, chain
from jaxopt_lite.optimizers.adafactor import FactoredState, adafactor, scale_by_factored_rms
from jaxopt_lite.optimizers.sm3 import ScaleBySM3State, scale_by_sm3, sm3
from jaxopt_lite.transforms.scaling import scale

STEPS = 100
SHAPES = {"w": (4, 6), "k": (2, 3, 5), "b": (5,), "s": ()}
MIN_DIM = 3  # factors "w" (axes 0, 1) and "k" (axes 1, 2; axis 0 is a batch axis)


@functools.cache
def problem(with_scalar=True):
    rng = np.random.default_rng(1804)
    out = [{k: np.asarray(fn(s), np.float64) for k, s in SHAPES.items()} for fn in (
        lambda s: rng.normal(size=s), lambda s: rng.normal(size=s),
        lambda s: rng.uniform(0.5, 2.0, size=s), lambda s: rng.uniform(0.0, 2 * np.pi, size=s))]
    if not with_scalar:
        out = [{k: v for k, v in d.items() if k != "s"} for d in out]
    return tuple(out)


def gradient(xp, params, target, curv, phase, t):
    return jax.tree.map(lambda p, y, c, f: c * (p - y) + 0.1 * xp.sin(0.7 * t + f), params, target, curv, phase)


def trajectory(opt, apply, with_scalar=True, steps=STEPS):
    """Params after each step (a tree of ``(steps, ...)`` arrays) and the final state; one jitted step."""
    p0, target, curv, phase = (jax.tree.map(jnp.asarray, x) for x in problem(with_scalar))

    @jax.jit
    def step(p, s, t):
        u, s = opt.update(gradient(jnp, p, target, curv, phase, t), s, p)
        return apply(p, u), s

    p, s, history = p0, opt.init(p0), []
    for t in range(steps):
        p, s = step(p, s, jnp.asarray(t, jnp.float64))
        history.append(p)
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *history), s


def reference_trajectory(step, steps=STEPS):
    """``step(params, grads, state, t)`` on dicts of NumPy arrays, ``t`` from 1; returns history and state."""
    p0, target, curv, phase = problem()
    params, state, history = {k: v.copy() for k, v in p0.items()}, {}, []
    for t in range(1, steps + 1):
        grads = gradient(np, params, target, curv, phase, float(t - 1))
        params = step(params, grads, state, t)
        history.append(params)
    return jax.tree.map(lambda *xs: np.stack(xs), *history), state


def assert_close(got, want, what, rtol=1e-12, atol=1e-13):
    assert sorted(got) == sorted(want), what
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=f"{what} [{k!r}]")
    assert any(np.max(np.abs(x[-1] - x[0])) > 1e-2 for x in got.values()), f"{what}: nothing moved"


# --------------------------------------------------------------------------- #
# NumPy references
# --------------------------------------------------------------------------- #


def _rms(x):
    return np.sqrt(np.mean(x**2))


def adafactor_ref(lr=None, min_dim=128, decay_rate=0.8, offset=0, param_scale=True, clip=1.0, momentum=None,
                  momentum_dtype=np.float32, wd=None, mask=None, eps=1e-30, factored=True):
    """Shazeer & Stern (2018), Algorithms 4 (factored) and 5, with the paper's row/column *sums*.

    In Optax's conventions: ``beta_t = 1 - t^(-decay_rate)`` in float32 with ``t = step - offset``;
    a tensor factors its two largest axes (the others are batch axes) when the second largest is at
    least ``min_dim``; the step is ``lr * max(RMS(p), 1e-3) * clip(U)`` (no ``lr`` factor when
    ``lr is None``, the paper would use ``min(1e-2, 1/sqrt(t))``); momentum is an EMA of that step
    stored in ``momentum_dtype`` (returned before that rounding); weight decay ``wd * p`` is added after the learning rate.
    """

    def step(params, grads, state, t):
        beta = float(1 - np.float32(t - offset) ** np.float32(-decay_rate))
        out = {}
        for k, p in params.items():
            g, st = grads[k], state.setdefault(k, {})
            g2 = g**2 + eps
            if factored and p.ndim >= 2 and sorted(p.shape)[-2] >= min_dim:
                b, a = (int(i) for i in np.argsort(p.shape)[-2:])  # second largest, largest
                st["R"] = beta * st.get("R", 0.0) + (1 - beta) * g2.sum(axis=a)  # keeps axis b
                st["C"] = beta * st.get("C", 0.0) + (1 - beta) * g2.sum(axis=b)  # keeps axis a
                total = st["R"].sum(axis=b - (b > a), keepdims=True)
                v_hat = np.expand_dims(st["R"] / total, a) * np.expand_dims(st["C"], b)
            else:
                st["V"] = v_hat = beta * st.get("V", 0.0) + (1 - beta) * g2
            u = g / np.sqrt(v_hat)
            if clip is not None:
                u = u / max(1.0, _rms(u) / clip)
            if lr is not None:
                u = lr * u
            if param_scale:
                u = max(_rms(p), 1e-3) * u
            if momentum is not None:
                # ``momentum * m`` runs in m's dtype (a Python float meets a float32 array), then adds in float64.
                new = momentum * st.get("m", np.zeros_like(p, momentum_dtype)) + (1 - momentum) * u
                st["m"], u = new.astype(momentum_dtype), new
            if wd is not None and (mask is None or mask[k]):
                u = u + wd * p
            out[k] = p - u
        return out

    return step


def sm3_ref(lr, b1=0.9, b2=1.0, eps=1e-8):
    """Anil et al. (2019), SM3-II with the cover of a tensor by its axis slices (one accumulator per
    row, column, ...; per entry for a vector; one for a scalar), plus Optax's ``eps`` inside the root,
    ``0/0 = 0``, an EMA momentum ``b1`` of the preconditioned gradient and the ``b2 < 1`` decay."""

    def step(params, grads, state, t):
        out = {}
        for k, p in params.items():
            g = grads[k]
            mus = state.setdefault(k, {"mu": [np.zeros(n) for n in p.shape] or [np.zeros(())],
                                       "m": np.zeros_like(p)})["mu"]
            smallest = np.full(p.shape, np.inf)
            for i, m in enumerate(mus):  # min over the sets that contain the entry
                smallest = np.minimum(smallest, m.reshape([-1 if a == i else 1 for a in range(p.ndim)]))
            nu = (1.0 if b2 == 1.0 else 1 - b2) * g**2 + b2 * smallest
            state[k]["mu"] = [nu.max(axis=tuple(a for a in range(p.ndim) if a != i)) for i in range(p.ndim)] or [nu]
            u = np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu + eps, 1.0)), 0.0)
            state[k]["m"] = b1 * state[k]["m"] + (1 - b1) * u
            out[k] = p - lr * state[k]["m"]
        return out

    return step


# --------------------------------------------------------------------------- #
# Cases: (library optimizer, Optax optimizer, NumPy reference, Optax's tree has the scalar)
# --------------------------------------------------------------------------- #

MASK = {"w": True, "k": False, "b": True, "s": False}


def _adafactor_case(kwargs, ref_kwargs):
    return (lambda: adafactor(**kwargs), lambda: optax.adafactor(**kwargs), lambda: adafactor_ref(**ref_kwargs), True)


CASES = {
    "adafactor_lr": _adafactor_case({"learning_rate": 0.05, "min_dim_size_to_factor": MIN_DIM},
                                    {"lr": 0.05, "min_dim": MIN_DIM}),
    # lr=None (relative step), float32 momentum, masked weight decay, a decay offset and exponent.
    "adafactor_relative_momentum_wd": _adafactor_case(
        {"min_dim_size_to_factor": MIN_DIM, "momentum": 0.9, "weight_decay_rate": 1e-3, "weight_decay_mask": MASK,
         "decay_offset": -3, "decay_rate": 0.6, "clipping_threshold": 0.5},
        {"min_dim": MIN_DIM, "momentum": 0.9, "wd": 1e-3, "mask": MASK, "offset": -3, "decay_rate": 0.6, "clip": 0.5}),
    "adafactor_unfactored_noclip": _adafactor_case(
        {"learning_rate": 0.02, "factored": False, "clipping_threshold": None, "multiply_by_parameter_scale": False,
         "momentum": 0.5, "dtype_momentum": jnp.float64, "eps": 1e-20},
        {"lr": 0.02, "factored": False, "clip": None, "param_scale": False, "momentum": 0.5,
         "momentum_dtype": np.float64, "eps": 1e-20}),
    "sm3": (lambda: sm3(0.05), lambda: optax.sm3(0.05), lambda: sm3_ref(0.05), False),
    "scale_by_sm3_decayed": (lambda: chain(scale_by_sm3(b1=0.5, b2=0.99, eps=1e-6), scale(-0.05)),
                             lambda: optax.chain(optax.scale_by_sm3(b1=0.5, b2=0.99, eps=1e-6), optax.scale(-0.05)),
                             lambda: sm3_ref(0.05, b1=0.5, b2=0.99, eps=1e-6), False),
}


@functools.cache
def library_run(case_id):
    return trajectory(CASES[case_id][0](), apply_updates)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_numpy_reference_from_the_paper(case_id):
    want, _ = reference_trajectory(CASES[case_id][2]())
    assert_close(library_run(case_id)[0], want, f"{case_id} vs NumPy reference", rtol=1e-10, atol=1e-12)


def without_scalar(state):
    """``state`` with the entries of the scalar leaf ``"s"`` left out of every dict in it."""
    if isinstance(state, dict):
        return {k: without_scalar(v) for k, v in state.items() if k != "s"}
    if hasattr(state, "_fields"):
        return type(state)(*map(without_scalar, state))
    if isinstance(state, (list, tuple)):
        return type(state)(map(without_scalar, state))
    return state


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_optax(case_id):
    _, ox, _, with_scalar = CASES[case_id]
    got, got_state = library_run(case_id)
    want, want_state = trajectory(ox(), optax.apply_updates, with_scalar)
    if not with_scalar:
        got, got_state = {k: v for k, v in got.items() if k != "s"}, without_scalar(got_state)
    assert_close(got, want, f"{case_id} vs Optax")
    # The final states: the same nesting of state types (by name and fields) and the same numbers.
    assert describe(got_state) == describe(want_state)
    for g, w in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-11, atol=1e-300)


def test_adafactor_state_matches_reference_statistics():
    """``v_row``/``v_col`` are the paper's row/column sums divided by the size summed over."""
    _, state = library_run("adafactor_lr")
    _, ref_state = reference_trajectory(adafactor_ref(lr=0.05, min_dim=MIN_DIM))
    fs = state[0]
    assert int(fs.count) == STEPS
    np.testing.assert_allclose(fs.v_row["w"], ref_state["w"]["R"] / 6, rtol=1e-10)
    np.testing.assert_allclose(fs.v_col["w"], ref_state["w"]["C"] / 4, rtol=1e-10)
    np.testing.assert_allclose(fs.v_row["k"], ref_state["k"]["R"] / 5, rtol=1e-10)
    np.testing.assert_allclose(fs.v_col["k"], ref_state["k"]["C"] / 3, rtol=1e-10)
    np.testing.assert_allclose(fs.v["b"], ref_state["b"]["V"], rtol=1e-10)
    np.testing.assert_allclose(fs.v["s"], ref_state["s"]["V"], rtol=1e-10)


# --------------------------------------------------------------------------- #
# State types and shapes
# --------------------------------------------------------------------------- #


def describe(state):
    """A state as nested plain data: NamedTuples by type name and fields, arrays by shape and dtype."""
    if hasattr(state, "_fields"):
        return (type(state).__name__, tuple((f, describe(getattr(state, f))) for f in state._fields))
    if isinstance(state, dict):
        return {k: describe(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state).__name__, [describe(x) for x in state]
    return jnp.shape(state), jnp.result_type(state)


@pytest.mark.parametrize("ours, theirs", [(FactoredState, optax.FactoredState),
                                          (ScaleBySM3State, optax.ScaleBySM3State)])
def test_state_types_have_optax_names_and_fields(ours, theirs):
    assert ours.__name__ == theirs.__name__
    assert ours._fields == theirs._fields


def _mixed_params(with_scalar):
    p = {"w": jnp.ones((4, 6), jnp.float32), "k": jnp.ones((2, 3, 5), jnp.bfloat16), "b": jnp.ones(5), "z": jnp.ones((0, 3))}
    return {**p, "s": jnp.ones((), jnp.float32)} if with_scalar else p


@pytest.mark.parametrize("name", ["adafactor", "sm3"])
def test_init_under_eval_shape_and_state_avals_match_optax(name):
    if name == "adafactor":
        lib = adafactor(0.1, min_dim_size_to_factor=MIN_DIM, momentum=0.9, weight_decay_rate=0.1)
        ox = optax.adafactor(0.1, min_dim_size_to_factor=MIN_DIM, momentum=0.9, weight_decay_rate=0.1)
    else:
        lib, ox = sm3(0.1), optax.sm3(0.1)
    params = _mixed_params(with_scalar=name == "adafactor")
    state = lib.init(params)
    assert describe(jax.eval_shape(jax.jit(lib.init), params)) == describe(state)
    assert describe(state) == describe(ox.init(params))
    # One jitted update keeps every aval of the state and the dtype of every update.
    updates, new_state = jax.jit(lib.update)(params, state, params)
    assert describe(new_state) == describe(state)
    assert jax.tree.map(lambda x: x.dtype, updates) == jax.tree.map(lambda x: x.dtype, params)


def test_sm3_scalar_leaf_has_one_accumulator():
    state = sm3(0.1).init({"s": jnp.ones(()), "v": jnp.ones(3)})
    assert [x.shape for x in state[0].mu["s"]] == [()]
    assert [x.shape for x in state[0].mu["v"]] == [(3,)]


# --------------------------------------------------------------------------- #
# vmap over the learning rate, complex parameters, errors
# --------------------------------------------------------------------------- #

VMAP_BUILDERS = {
    "adafactor": lambda lr: adafactor(lr, min_dim_size_to_factor=MIN_DIM, momentum=0.9),
    "sm3": lambda lr: sm3(lr),
}


@pytest.mark.parametrize("name", sorted(VMAP_BUILDERS))
def test_vmap_over_learning_rate_equals_a_loop(name):
    """One jitted step with the optimizer built inside from a traced learning rate, vmapped over 3 rates."""
    p0, target, curv, phase = (jax.tree.map(jnp.asarray, {k: x[k] for k in ("w", "b", "s")}) for x in problem())

    def step(lr, p, s, t):
        u, s = VMAP_BUILDERS[name](lr).update(gradient(jnp, p, target, curv, phase, t), s, p)
        return apply_updates(p, u), s

    lrs = jnp.asarray([0.01, 0.05, 0.2])
    batched_step, single_step = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None))), jax.jit(step)
    s0 = VMAP_BUILDERS[name](0.1).init(p0)  # the state does not depend on the learning rate
    batched = jax.tree.map(lambda x: jnp.stack([x] * len(lrs)), (p0, s0))
    singles = [(p0, s0) for _ in lrs]
    for t in range(4):
        t = jnp.asarray(t, jnp.float64)
        batched = batched_step(lrs, *batched, t)
        singles = [single_step(lr, *ps, t) for lr, ps in zip(lrs, singles)]
    for i, (lr, want) in enumerate(zip(lrs, singles)):
        for got_leaf, want_leaf in zip(jax.tree.leaves(batched), jax.tree.leaves(want)):
            np.testing.assert_allclose(got_leaf[i], want_leaf, rtol=1e-12, atol=1e-14, err_msg=f"{name} lr={lr}")
    assert not np.allclose(batched[0]["w"][0], batched[0]["w"][2])


def test_adafactor_complex_params_match_optax():
    """Optax keeps complex statistics (zero imaginary part) in the parameter's dtype; so do we."""
    rng = np.random.default_rng(0)
    p0 = {"w": jnp.asarray(rng.normal(size=(4, 6)) + 1j * rng.normal(size=(4, 6))),
          "b": jnp.asarray(rng.normal(size=5) + 1j * rng.normal(size=5))}

    def run(opt, apply):
        @jax.jit
        def step(p, s):
            u, s = opt.update(jax.tree.map(jnp.conj, p), s, p)
            return apply(p, u), s

        p, s = p0, opt.init(p0)
        for _ in range(20):
            p, s = step(p, s)
        return p, s

    got, got_state = run(adafactor(0.05, min_dim_size_to_factor=MIN_DIM), apply_updates)
    want, want_state = run(optax.adafactor(0.05, min_dim_size_to_factor=MIN_DIM), optax.apply_updates)
    assert describe(got_state) == describe(want_state)
    for k in p0:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(got["w"] - p0["w"])) > 1e-2


def test_errors_name_the_optimizer():
    with pytest.raises(ValueError, match="scale_by_sm3.*complex"):
        sm3(0.1).init({"w": jnp.ones(3, jnp.complex64)})
    with pytest.raises(ValueError, match="scale_by_sm3: b2"):
        scale_by_sm3(b2=1.5)
    with pytest.raises(ValueError, match="scale_by_factored_rms: epsilon"):
        adafactor(0.1, eps=-1.0)
    with pytest.raises(ValueError, match="adafactor: momentum"):
        adafactor(0.1, momentum=1.0)
    with pytest.raises(TypeError, match="scale_by_factored_rms: min_dim_size_to_factor"):
        jax.jit(lambda m: scale_by_factored_rms(min_dim_size_to_factor=m))(3)
