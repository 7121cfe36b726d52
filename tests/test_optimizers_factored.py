"""Adafactor and SM3: 200 float64 steps against NumPy references written from the papers
(in Optax's conventions), against Optax 0.2.8 and (where torch is installed; CI has none) Adafactor
against ``torch.optim.Adafactor``; state types and shapes as Optax's; vmap over the learning rate;
``jit(init)`` under ``eval_shape``.

The tree has a (4, 6) matrix and a (2, 3, 5) tensor that factor once ``min_dim_size_to_factor=3``,
a vector and a scalar. The gradient is ``curv * (p - target) + 0.1 sin(0.7 t + phase)``.
Optax's ``sm3`` fails on scalar leaves (an ``IndexError`` in its update), so Optax runs SM3 on
the tree without the scalar; every leaf evolves on its own (the gradient and both optimizers act
leaf by leaf), so that run is compared with the other leaves of ours.

Each run jits one step and calls it ``STEPS`` times from Python: compiling is most of the time (a
200-step loop takes about 0.06 s on CPU), so a ``lax.scan`` would only compile a bigger program.
Every case is well conditioned over the run: nudging ``p0`` by 1e-15 (relative) moves the NumPy
reference's trajectory by less than 1e-2 of the test's tolerance for 400 steps. (That is why
``adafactor_lr`` has ``learning_rate=0.02``: at 0.05 the ``"k"`` leaf starts overshooting its moving
target after about 130 steps, a 2e-16 nudge of ``p0`` grows to 1e-10 by step 150 in the reference
alone, and ours and the reference differ by 4e-9 (relative) at some entries by step 155.)
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
from jaxopt_lite.transforms.block_scaling import clip_by_block_rms, scale_by_param_block_rms
from jaxopt_lite.transforms.regularization import add_decayed_weights
from jaxopt_lite.transforms.scaling import scale, scale_by_learning_rate

STEPS = 200
SHAPES = {"w": (4, 6), "k": (2, 3, 5), "b": (5,), "s": ()}
MIN_DIM = 3  # factors "w" (axes 0, 1) and "k" (axes 1, 2; axis 0 is a batch axis)


@functools.cache
def problem(with_scalar=True, shapes=None, seed=1804, scale=1.0):
    """``(p0, target, curv, phase)``, dicts of float64 NumPy arrays on ``shapes`` (``(name, shape)`` pairs, by
    default ``SHAPES``); ``p0`` and ``target`` are ``scale * N(0, 1)``."""
    shapes = tuple(SHAPES.items()) if shapes is None else shapes
    rng = np.random.default_rng(seed)
    out = [{k: np.asarray(fn(s), np.float64) for k, s in shapes} for fn in (
        lambda s: scale * rng.normal(size=s), lambda s: scale * rng.normal(size=s),
        lambda s: rng.uniform(0.5, 2.0, size=s), lambda s: rng.uniform(0.0, 2 * np.pi, size=s))]
    if not with_scalar:
        out = [{k: v for k, v in d.items() if k != "s"} for d in out]
    return tuple(out)


def gradient(xp, params, target, curv, phase, t):
    return jax.tree.map(lambda p, y, c, f: c * (p - y) + 0.1 * xp.sin(0.7 * t + f), params, target, curv, phase)


def trajectory(opt, apply, with_scalar=True, steps=STEPS, data=None):
    """Params after each step (a tree of ``(steps, ...)`` arrays) and the final state; one jitted step.

    ``data`` is a ``problem(...)`` tuple, by default ``problem(with_scalar)``.
    """
    data = problem(with_scalar) if data is None else data
    p0, target, curv, phase = (jax.tree.map(jnp.asarray, x) for x in data)

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
    "adafactor_lr": _adafactor_case({"learning_rate": 0.02, "min_dim_size_to_factor": MIN_DIM},
                                    {"lr": 0.02, "min_dim": MIN_DIM}),
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
    _, ref_state = reference_trajectory(CASES["adafactor_lr"][2]())
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


# --------------------------------------------------------------------------- #
# torch.optim.Adafactor (torch >= 2.5; skipped where torch is absent, as in CI)
# --------------------------------------------------------------------------- #
#
# torch's rule (``torch/optim/_adafactor.py``), per parameter, ``t`` from 1, no momentum:
#   beta2_t = 1 - t^beta2_decay in float64 (Python floats; ``beta2_decay=-0.8``);
#   rho_t = min(lr, 1/sqrt(t)): ``lr`` caps the paper's relative step size (default 1e-2);
#   alpha_t = max(eps2, RMS(p)) rho_t (``eps2=1e-3``), from ``p`` before the weight decay;
#   p <- (1 - lr weight_decay) p (decoupled, scaled by ``lr``, not by rho_t or RMS(p));
#   every tensor of 2+ dims is factored on its LAST TWO dims (others batch), whatever the sizes:
#     R, C = EMAs of g^2 meaned over the last / second-last dim, V = R C / max(mean(R), eps1);
#   1-D and 0-D: V = EMA of g^2;  U = g / max(sqrt(V), eps1) (``eps1`` = the dtype's machine
#   epsilon by default, not added to g^2);  p <- p - alpha_t U / max(1, RMS(U) / d).
# The same rule in jaxopt_lite is ``torch_rule`` below: ``scale_by_factored_rms`` with the
# schedule in float64 and ``min_dim_size_to_factor=0``, then ``clip_by_block_rms(d)``, the learning
# rate ``min(lr, 1/sqrt(t))``, ``scale_by_param_block_rms(eps2)`` and ``add_decayed_weights(lr *
# weight_decay)``. For a matrix, factoring either way round gives the same V (mean(R) = mean(C)), so
# only tensors of 3+ dims whose two largest dims are not the last two are factored differently.
# Means, not the paper's sums, on both sides.

TORCH_SHAPES = {"w": (4, 6), "wt": (6, 4), "k": (2, 3, 5), "b": (5,), "s": (), "z": (3,)}
TORCH_LR, TORCH_WD = 0.1, 0.1  # rho_t = 0.1 for t <= 100, then 1/sqrt(t); weight decay 1e-2 per step


@functools.cache
def torch_problem():
    """``problem`` on ``TORCH_SHAPES`` with ``p0`` and targets of scale 0.3, and ``"z"`` starting at its target 0.

    ``"z"`` moves by about 1e-4, so its RMS stays under ``eps2 = 1e-3``: the floor is used at every
    step. Scale 0.3, not 1: the step is about ``rho_t RMS(p)`` per entry, and at scale 1 (with
    ``rho_t = 0.1``) some entries overshoot their moving targets, so that a 1e-15 (relative) nudge of
    ``p0`` grows to 3e-11 (absolute) within 200 steps, torch against itself; at 0.3 it stays under
    1e-15 for 300 steps (and under 1e-3 of the test's tolerance for six seeds tried). Update
    clipping acts on every leaf in some of the steps (28 to 181 of the 200).
    """
    p0, target, curv, phase = problem(True, tuple(TORCH_SHAPES.items()), seed=2024, scale=0.3)
    p0, target = ({**d, "z": np.zeros(3)} for d in (p0, target))
    return p0, target, curv, phase


def _beta2_float64(count, decay_rate):
    """torch's ``beta2_t = 1 - t^(-decay_rate)``, ``t = count + 1``, in float64 (the default rounds to float32)."""
    return 1.0 - (jnp.asarray(count, jnp.float64) + 1.0) ** (-decay_rate)


def _torch_rho(lr):
    return lambda count: jnp.minimum(lr, 1.0 / jnp.sqrt(jnp.asarray(count, jnp.float64) + 1.0))


def torch_rule(lr, weight_decay=0.0, d=1.0, eps2=1e-3, beta2_decay=-0.8):
    """``torch.optim.Adafactor(lr=lr, beta2_decay=beta2_decay, eps=(None, eps2), d=d, weight_decay=weight_decay)``
    for gradients well above its ``eps1`` and tensors whose two largest dims are their last two."""
    return chain(
        scale_by_factored_rms(decay_rate=-beta2_decay, min_dim_size_to_factor=0, decay_rate_fn=_beta2_float64),
        clip_by_block_rms(d),
        scale_by_learning_rate(_torch_rho(lr), flip_sign=False),
        scale_by_param_block_rms(eps2),
        add_decayed_weights(lr * weight_decay),
        scale(-1.0),
    )


def torch_trajectory(data, steps=STEPS, **kwargs):
    """Params after each of ``steps`` steps of ``torch.optim.Adafactor(**kwargs)`` on ``data`` (float64)."""
    torch = pytest.importorskip("torch", minversion="2.5")
    p0, target, curv, phase = data
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p0.items()}
    opt = torch.optim.Adafactor(list(params.values()), **kwargs)
    history = []
    for t in range(steps):
        grads = gradient(np, {k: p.detach().numpy() for k, p in params.items()}, target, curv, phase, float(t))
        for k, p in params.items():
            p.grad = torch.as_tensor(np.asarray(grads[k]))
        opt.step()
        history.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return jax.tree.map(lambda *xs: np.stack(xs), *history)


@functools.cache
def torch_run(foreach=False):
    return torch_trajectory(torch_problem(), lr=TORCH_LR, weight_decay=TORCH_WD, foreach=foreach)


@functools.cache
def torch_rule_run():
    return trajectory(torch_rule(TORCH_LR, TORCH_WD), apply_updates, data=torch_problem())[0]


@pytest.mark.parametrize("foreach", [False, True])
def test_adafactor_matches_torch(foreach):
    """200 float64 steps of ``torch.optim.Adafactor(lr=0.1, weight_decay=0.1)`` (its for-loop and foreach
    paths) against ``torch_rule``: matrices both ways round, a 3-D tensor, vectors (one under the
    ``eps2`` floor) and a scalar; ``rho_t`` switches from ``lr`` to ``1/sqrt(t)`` at step 100."""
    want = torch_run(foreach)
    got = torch_rule_run()
    assert_close(got, want, f"torch_rule vs torch.optim.Adafactor(foreach={foreach})", rtol=1e-10, atol=1e-12)
    assert np.sqrt(np.mean(got["z"] ** 2, axis=1)).max() < 1e-3  # "z" ran on the eps2 floor throughout


def _one_step(lib_opt, params, grads, **torch_kwargs):
    """The first update of ``lib_opt`` (jitted) and of ``torch.optim.Adafactor(**torch_kwargs)`` on the dicts
    ``params``, ``grads`` of NumPy arrays; both as dicts of NumPy arrays in the params' dtypes."""
    torch = pytest.importorskip("torch", minversion="2.5")
    p, g = (jax.tree.map(jnp.asarray, x) for x in (params, grads))
    ours, _ = jax.jit(lib_opt.update)(g, lib_opt.init(p), p)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    for k, v in tp.items():
        v.grad = torch.tensor(grads[k])
    torch.optim.Adafactor(list(tp.values()), **torch_kwargs).step()
    return jax.tree.map(np.asarray, ours), {k: v.detach().numpy() - params[k] for k, v in tp.items()}


def test_adafactor_differences_from_torch_show():
    """Where ``adafactor`` differs from ``torch.optim.Adafactor`` (test above for where they agree):

    1. ``adafactor``'s ``beta2_t`` is rounded to float32 (as Optax): with torch's other settings
       (``adafactor(lambda k: min(lr, 1/sqrt(k + 1)), min_dim_size_to_factor=0, weight_decay_rate=lr wd)``)
       200 float64 steps agree to about 1e-8 of each leaf's largest entry, not to float64 rounding.
    2. A tensor of 3+ dims: torch factors its last two dims, ``adafactor`` its two largest. On a
       ``(5, 3, 2)`` tensor the first steps differ; ours is torch's on the transpose ``(2, 3, 5)``.
    """
    want = torch_run()
    lr, wd = TORCH_LR, TORCH_WD
    got, _ = trajectory(adafactor(_torch_rho(lr), min_dim_size_to_factor=0, weight_decay_rate=lr * wd), apply_updates,
                        data=torch_problem())
    worst = max(np.max(np.abs(got[k] - want[k])) / np.max(np.abs(want[k])) for k in want)
    assert 1e-10 < worst < 1e-6, worst

    rng = np.random.default_rng(5)
    p, g = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    ours, theirs = _one_step(adafactor(0.1, min_dim_size_to_factor=0), {"a": p, "t": p.T}, {"a": g, "t": g.T}, lr=0.1)
    np.testing.assert_allclose(ours["a"], theirs["t"].T, rtol=1e-12, atol=1e-15)
    assert np.max(np.abs(ours["a"] - theirs["a"])) > 1e-2 * np.max(np.abs(theirs["a"]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adafactor_torch_eps1_is_a_floor(dtype):
    """torch's ``eps1`` (the dtype's machine epsilon) floors ``mean(R)`` and ``sqrt(V)``; ``adafactor`` adds
    ``eps`` (1e-30) to ``g^2`` instead. One step from ``p = 0`` (the step is ``1e-3 lr U``), no clipping
    (``d = 1e6``), gradients under the floors:

    - a vector with ``|g| < eps1``: torch's ``U = g / eps1``, ours ``g / sqrt(g^2 + eps)``;
    - a matrix with ``mean(g^2) = eps1 / 100``: torch's ``V`` is ours times ``mean(g^2) / eps1``, so its
      step is 10 times ours (before clipping). In float32 the floor acts on any factored tensor whose
      running mean of ``g^2`` is under ``eps1 = 1.2e-7`` (RMS gradient under about 3.5e-4).
    """
    eps1, tol = float(np.finfo(dtype).eps), (1e-10 if dtype == np.float64 else 1e-5)
    rng = np.random.default_rng(6)
    g = {"v": eps1 * np.array([0.01, -0.02, 0.03]),
         "m": rng.uniform(0.5, 1.5, size=(4, 6)) * rng.choice([-1.0, 1.0], size=(4, 6))}
    g["m"] *= np.sqrt(eps1 / 100 / np.mean(g["m"] ** 2))
    g = {k: v.astype(dtype) for k, v in g.items()}
    ours, theirs = _one_step(adafactor(0.1, min_dim_size_to_factor=0, clipping_threshold=1e6),
                             {k: np.zeros_like(v) for k, v in g.items()}, g, lr=0.1, d=1e6)
    g64 = {k: v.astype(np.float64) for k, v in g.items()}
    np.testing.assert_allclose(theirs["v"], ours["v"] * np.sqrt(g64["v"] ** 2 + 1e-30) / eps1, rtol=tol)
    np.testing.assert_allclose(theirs["m"], ours["m"] * np.sqrt(eps1 / np.mean(g64["m"] ** 2)), rtol=tol)
    assert np.max(np.abs(theirs["m"])) > 5 * np.max(np.abs(ours["m"]))
