"""PSGD-Kron: 200 float64 steps against a NumPy reference of the algorithm, convergence, traced
hyperparameters, vmap, eval_shape and errors.

The NumPy reference follows ``kron_torch``'s ``Kron.step`` (Evan Walters; the same algorithm as
``psgd_jax``'s ``kron``) step for step: debiased momentum, the preconditioner update from ``A = Q G``
(``einsum``-style ``tensordot`` per axis) and ``conjB`` computed as the reference does (``V`` permuted,
then a right triangular solve ``X inv(Q)`` per axis with ``scipy``, the axes cycled by transposes), the
spectral norm's lower bound of ``_norm_lower_bound`` (both branches), ``triu``, the preconditioned step
``Q^T Q G``, the RMS clip at 1.1 and the weight decay ``lr (u + wd p)``.

Randomness: the probes ``V`` and the update draws are JAX's, so the reference takes them from the keys our
state carried at each step (``step_keys``, ``probe`` and ``uniform < p``, as the optimizer draws them);
everything else is NumPy. Conventions pinned: balancing every 100th preconditioner update (``psgd_jax``'s
counter; ``kron_torch`` draws it with probability 0.01) and ``precond_init_scale=None`` as
``mean(G^4)^(-1/8)`` from the first gradient.

``heavyball``'s ``ForeachPSGDKron`` is not compared: it is a later variant (damped probes ``G + eps |G| V``,
balancing at every update, an EMA of the norm's lower bound, its own schedule ``decay=0.999,
flat_start=1000``, float32 storage).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from reference_problems import (
    assert_hyperparameter_grads_finite,
    assert_vmap_over_learning_rate_equals_loop,
    trajectory,
)
from reference_problems import final_loss as _final_loss
from reference_problems import grad as _grad
from reference_problems import least_squares as _least_squares
from reference_problems import problem as _problem

import jaxopt_lite as jol
from jaxopt_lite.optimizers.kron import precond_update_prob_schedule, probe, step_keys

N_STEPS = 200
SHAPES = {"w": (5, 3), "b": (4,), "t": (2, 3, 4), "s": ()}


def _run_ours(opt, shapes=SHAPES, n_steps=N_STEPS):
    """The parameters after each step and the state's key before each step (a jitted ``lax.scan``)."""
    x0, curv, target, freq = (jax.tree.map(jnp.asarray, v) for v in _problem(shapes))

    def step(carry, k):
        x, state = carry
        g = jax.tree.map(lambda p, c, t, w: _grad(p, k, c, t, w, jnp), x, curv, target, freq)
        key = state[0].key
        u, state = opt.update(g, state, x)
        x = jol.apply_updates(x, u)
        return (x, state), (x, key)

    run = jax.jit(lambda x: jax.lax.scan(step, (x, opt.init(x)), jnp.arange(n_steps, dtype=jnp.float64)))
    _, (xs, keys) = run(x0)
    return {k: np.asarray(v) for k, v in xs.items()}, np.asarray(keys)


# --------------------------------------------------------------------------------------------------------------------
# The NumPy reference (kron_torch's Kron.step)
# --------------------------------------------------------------------------------------------------------------------


def _np_norm_lower_bound(a):
    max_abs = np.max(np.abs(a))
    if max_abs > 0:
        a = a / max_abs
        aa = a * a
        value0, i = np.max(np.sum(aa, axis=0)), np.argmax(np.sum(aa, axis=0))
        value1, j = np.max(np.sum(aa, axis=1)), np.argmax(np.sum(aa, axis=1))
        if value0 > value1:
            x = a[:, i] @ a
            return max_abs * np.linalg.norm((x / np.linalg.norm(x)) @ a.T)
        x = a @ a[j]
        return max_abs * np.linalg.norm(a.T @ (x / np.linalg.norm(x)))
    return max_abs


def _np_init_q(shape, scale, max_size, min_ndim, memory_save_mode):
    if len(shape) == 0:
        return [scale * np.ones(())]
    scale = scale ** (1 / len(shape))
    dim_diag = [False] * len(shape)
    if memory_save_mode == "one_diag":
        dim_diag[np.argsort(shape, kind="stable")[::-1][0]] = True
    elif memory_save_mode == "all_diag":
        dim_diag = [True] * len(shape)
    return [
        scale * np.ones(d) if (d == 1 or d > max_size or len(shape) < min_ndim or dd) else scale * np.eye(d)
        for d, dd in zip(shape, dim_diag)
    ]


def _apply(x, q, axis):
    """``x`` times ``q`` along ``axis`` (einsum ``q[a, n] x[.., n, ..]``, or ``q[a] x[.., a, ..]``)."""
    if q.ndim < 2:
        if x.ndim == 0:
            return x * q
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * q.reshape(shape)
    return np.moveaxis(np.tensordot(q, x, axes=([1], [axis])), 0, axis)


def _gram(x, axis, diag):
    others = tuple(a for a in range(x.ndim) if a != axis)
    if diag:
        return np.sum(x * x, axis=others) if x.ndim else x * x
    return np.tensordot(x, x, axes=(others, others))


def _np_update_precond(qs, v, g, step, tiny):
    a = g
    for i, q in enumerate(qs):
        a = _apply(a, q, i)
    order = g.ndim
    p = list(range(order))
    conj_b = np.transpose(v, p[1:] + p[:1]) if order else v
    for i, q in enumerate(qs):
        if q.ndim < 2:
            conj_b = conj_b / q
        else:
            x = conj_b.reshape(-1, conj_b.shape[-1])
            conj_b = scipy.linalg.solve_triangular(q, x.T, trans="T", lower=False).T.reshape(conj_b.shape)
        if i < order - 1:
            conj_b = np.swapaxes(conj_b, i, order - 1)
    new = []
    for i, q in enumerate(qs):
        diag = q.ndim < 2
        term1, term2 = _gram(a, i, diag), _gram(conj_b, i, diag)
        if diag:
            new.append(q - step / (np.max(np.abs(term1 + term2)) + tiny) * (term1 - term2) * q)
        else:
            new.append(q - step / (_np_norm_lower_bound(term1 + term2) + tiny) * np.triu(term1 - term2) @ q)
    return new


def _np_kron(
    keys,
    n_steps=N_STEPS,
    *,
    learning_rate=0.03,
    b1=0.9,
    weight_decay=0.0,
    preconditioner_update_probability=1.0,
    max_size_triangular=8192,
    min_ndim_triangular=2,
    memory_save_mode=None,
    momentum_into_precond_update=True,
    precond_lr=0.1,
    precond_init_scale=1.0,
    shapes=SHAPES,
):
    x0, curv, target, freq = _problem(shapes)
    x = {k: v.copy() for k, v in x0.items()}
    names = sorted(x)  # jax.tree.leaves order of a dict
    state = {
        k: {
            "m": np.zeros(shapes[k]),
            "q": _np_init_q(
                shapes[k],
                1.0 if precond_init_scale is None else precond_init_scale,
                max_size_triangular,
                min_ndim_triangular,
                memory_save_mode,
            ),
        }
        for k in names
    }
    tiny = np.finfo(np.float64).tiny

    def draws(key):  # the uniform draw and the probes of one step, as the optimizer takes them
        _, k_draw, k_probe = step_keys(key)
        return jax.random.uniform(k_draw), [probe(k_probe, i, shapes[k], jnp.float64) for i, k in enumerate(names)]

    uniforms, probes = jax.jit(jax.vmap(draws))(jnp.asarray(keys))
    uniforms, probes = np.asarray(uniforms), [np.asarray(v) for v in probes]
    updates_done = 0
    out = {k: [] for k in names}
    for step in range(n_steps):
        prob = preconditioner_update_probability
        prob = np.float32(prob(step)) if callable(prob) else prob
        do_update = bool(uniforms[step] < prob)
        balance = do_update and (updates_done + 1) % 100 == 0
        for index, k in enumerate(names):
            s = state[k]
            g = _grad(x[k], step, curv[k], target[k], freq[k])
            if step == 0 and precond_init_scale is None:
                scale = np.mean(g**4) ** (-1 / 8)
                s["q"] = [q * (scale ** (1 / g.ndim) if g.ndim else scale) for q in s["q"]]
            s["m"] = b1 * s["m"] + (1 - b1) * g
            debiased = s["m"] / (1 - b1 ** (step + 1))
            if g.ndim > 1 and balance:
                norms = np.array([np.max(np.abs(q)) for q in s["q"]])
                gm = norms.prod() ** (1 / len(s["q"]))
                s["q"] = [q * (gm / n) for q, n in zip(s["q"], norms)]
            if do_update:
                v = probes[index][step]
                s["q"] = _np_update_precond(
                    s["q"], v, debiased if momentum_into_precond_update else g, precond_lr, tiny
                )
            pre = debiased
            for i, q in enumerate(s["q"]):
                pre = _apply(pre, q.T @ q if q.ndim == 2 else q * q, i)
            pre = pre * min(1.1 / (np.sqrt(np.mean(pre * pre)) + 1e-6), 1.0)
            x[k] = x[k] - learning_rate * (pre + weight_decay * x[k])
            out[k].append(x[k].copy())
        updates_done += do_update
    return {k: np.stack(v) for k, v in out.items()}


CONFIGS = {
    "default": {},
    "decay_one_diag_grad_init_scale": {
        "weight_decay": 0.01,
        "memory_save_mode": "one_diag",
        "momentum_into_precond_update": False,
        "precond_init_scale": None,
        "precond_lr": 0.2,
    },
    "half_probability_all_diag": {"preconditioner_update_probability": 0.5, "memory_save_mode": "all_diag"},
    "schedule_small_triangular": {
        "preconditioner_update_probability": precond_update_prob_schedule(1.0, 0.3, 0.05, 100),
        "max_size_triangular": 3,
        "b1": 0.5,
    },
}


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_numpy_reference_for_200_float64_steps(config):
    kwargs = {"learning_rate": 0.03, **CONFIGS[config]}
    ours, keys = _run_ours(jol.kron(**kwargs))
    ref = _np_kron(keys, **kwargs)
    for k in ref:
        err = np.max(np.abs(ours[k] - ref[k]))
        assert err < 1e-12, (k, err)  # about 1e-15 seen


def test_probability_schedule_values():
    s = precond_update_prob_schedule()
    np.testing.assert_allclose([float(s(n)) for n in (0, 500, 1000, 10**5)], [1.0, 1.0, np.exp(-0.5), 0.03], rtol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Convergence, traced hyperparameters, vmap, eval_shape, errors
# --------------------------------------------------------------------------------------------------------------------


def test_loss_decreases_faster_than_sgd_on_ill_conditioned_least_squares():
    loss, w0 = _least_squares()
    best = {
        name: float(jnp.min(jax.jit(jax.vmap(lambda lr, make=make: _final_loss(make(lr), loss, w0, 200)))(lrs)))
        for name, make, lrs in (
            ("sgd", jol.sgd, jnp.asarray([1e-4, 3e-4, 1e-3, 1.5e-3])),  # 2 / L is about 1.6e-3
            ("kron", jol.kron, jnp.asarray([0.01, 0.03, 0.1, 0.3])),
        )
    }
    assert best["kron"] < float(loss(w0)) * 1e-2, best
    assert best["kron"] < best["sgd"], best


HPS = {"learning_rate": 0.03, "b1": 0.8, "precond_lr": 0.2, "precond_init_scale": 0.5, "weight_decay": 0.05}
SMALL = {"w": (4, 3), "b": (3,)}


def _run_traced(h, n_steps=2):
    h = dict(h)
    opt = jol.kron(h.pop("learning_rate"), **h)
    return trajectory(opt, SMALL, n_steps)


def test_traced_hyperparameters_vmap_over_learning_rate_and_grad():
    eager = jax.jit(lambda: _run_traced(HPS))()  # Python numbers
    traced = jax.jit(_run_traced)({k: jnp.asarray(v) for k, v in HPS.items()})
    for k in eager:
        np.testing.assert_allclose(np.asarray(traced[k]), np.asarray(eager[k]), rtol=1e-12, atol=1e-14)

    assert_vmap_over_learning_rate_equals_loop(_run_traced, HPS, [0.003, 0.01, 0.03])

    assert_hyperparameter_grads_finite(_run_traced, HPS, nonzero=("learning_rate", "precond_lr"))


def test_eval_shape_init_and_state_layout():
    params = {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()} | {
        "h": jnp.zeros((2, 3), jnp.bfloat16),
        "z": jnp.zeros((0, 3)),
    }
    opt = jol.kron(memory_save_mode="one_diag")
    abstract, state = jax.eval_shape(opt.init, params), opt.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert (a.shape, a.dtype) == (s.shape, s.dtype)
    inner = state[0]
    assert [q.shape for q in inner.Qs["t"]] == [(2, 2), (3, 3), (4,)]
    assert [q.shape for q in inner.Qs["w"]] == [(5,), (3, 3)]
    assert [q.shape for q in inner.Qs["b"]] == [(4,)] and [q.shape for q in inner.Qs["s"]] == [()]
    assert inner.Qs["z"] == () and [q.dtype for q in inner.Qs["h"]] == [jnp.float32, jnp.float32]
    assert inner.mu["h"].dtype == jnp.bfloat16
    u, _ = jax.jit(opt.update)(jax.tree.map(jnp.ones_like, params), state, params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_errors_name_the_optimizer():
    with pytest.raises(ValueError, match=r"^kron: .*b1"):
        jol.kron(b1=1.0)
    with pytest.raises(ValueError, match=r"^kron: .*memory_save_mode"):
        jol.kron(memory_save_mode="some_diag")
    with pytest.raises(ValueError, match=r"^kron: .*preconditioner_update_probability"):
        jol.kron(preconditioner_update_probability=1.5)
    with pytest.raises(ValueError, match=r"^kron: .*complex parameters are not supported"):
        jol.kron().init({"w": jnp.ones((3, 2), jnp.complex64)})
    with pytest.raises(ValueError, match=r"kron.*fused tree"):
        jol.kron().init(jol.fuse({"w": jnp.ones((3, 2))}))


def test_zero_and_huge_gradients_give_finite_steps():
    params = {"w": jnp.ones((4, 3), jnp.float32), "v": jnp.ones((3,), jnp.float32)}
    opt = jol.kron(precond_init_scale=None)

    @jax.jit
    def three_steps(scale):
        g = jax.tree.map(lambda p: scale * jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
        state = opt.init(params)
        for _ in range(3):
            u, state = opt.update(g, state, params)
        return u, state

    for scale in (0.0, 1e-30, 1e15):
        u, state = three_steps(jnp.float32(scale))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state))), scale
