"""SOAP: 200 float64 steps against a NumPy reference of the algorithm and against pytorch_optimizer.

The NumPy reference follows the authors' implementation (``nikhilvyas/SOAP``, the paper's Algorithm 3)
step for step: the first call only builds the factors and their exact eigenbases; later calls project the
gradient with ``np.tensordot`` (axis 0 each time, as the reference, which cycles the axes), run Adam in the
rotated basis with the reference's bias correction (``lr sqrt(1 - b2^t) / (1 - b1^t)``, ``eps`` outside the
uncorrected root), decay the stepped parameters, then update the factors and, every
``precondition_frequency`` steps, take one QR power-iteration step with the columns sorted by estimated
eigenvalue (the second moment permuted alike, the first moment projected back and into the new basis).

Conventions pinned in the comparisons:

- The eigenvectors of a repeated eigenvalue are LAPACK's arbitrary choice, and SOAP's steps depend on
  them: the first factor of a non-square matrix ``(1 - beta) G G^T`` (6 x 6 of rank 4 here) has a
  two-dimensional null space, and so has a vector's with ``precondition_1d``. Both references therefore
  start from our first bases (read from the state after the first call), after which everything is
  determined (QR's column signs do not change the step). Likewise a refresh sorts the columns by estimated
  eigenvalues, which for a rank-deficient factor include rounding-level ones in an arbitrary order: the
  configurations refresh only once the factors have full rank and are well conditioned (a 30 x 30 factor
  refreshed after 30 gradients already gives differences of 1e-5: QR of an ill-conditioned ``S Q``).
- ``pytorch_optimizer.SOAP`` runs its QR in float32 (a cast in its code); the test runs it in float64 by
  handing its module a ``torch`` whose ``float32`` is ``float64``. It keeps the first moment in the
  original basis and projects it each step, which is the same arithmetic up to rounding.
- ``heavyball``'s ``SOAP`` is not compared: it is another variant (its own defaults, stochastic
  preconditioner schedule, float32 storage and compiled steps).
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_problems import (
    assert_hyperparameter_grads_finite,
    assert_trajectories_close,
    assert_vmap_over_learning_rate_equals_loop,
    trajectory,
)
from reference_problems import final_loss as _final_loss
from reference_problems import grad as _grad
from reference_problems import least_squares as _least_squares
from reference_problems import problem as _problem

import jaxopt_lite as jol
from jaxopt_lite.optimizers.soap import merged_shape

N_STEPS = 200
SHAPES = {"w": (6, 4), "t": (3, 5, 2), "b": (4,), "s": ()}
SMALL = {"w": (4, 3), "b": (3,)}  # for the tests that compile several programs


def _run_ours(opt, shapes=SHAPES, n_steps=N_STEPS):
    """The parameters after each step (a jitted ``lax.scan`` after the first call), float64, and the bases
    the first call built."""
    x0, curv, target, freq = (jax.tree.map(jnp.asarray, v) for v in _problem(shapes))

    def step(carry, k):
        x, state = carry
        g = jax.tree.map(lambda p, c, t, w: _grad(p, k, c, t, w, jnp), x, curv, target, freq)
        u, state = opt.update(g, state, x)
        x = jol.apply_updates(x, u)
        return (x, state), x

    (x1, state1), first = jax.jit(lambda x: step((x, opt.init(x)), jnp.float64(0)))(x0)
    _, xs = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(1, n_steps, dtype=jnp.float64)))((x1, state1))
    out = {k: np.concatenate([np.asarray(first[k])[None], np.asarray(v)]) for k, v in xs.items()}
    return out, {k: [np.asarray(q) for q in v] for k, v in state1[0].bases.items()}


# --------------------------------------------------------------------------------------------------------------------
# The NumPy reference
# --------------------------------------------------------------------------------------------------------------------


def _np_project(x, qs, back=False):
    """The reference's ``project``: ``tensordot`` over axis 0 with each ``Q`` (``None``: move the axis last)."""
    for q in qs:
        if q is None:
            x = np.moveaxis(x, 0, -1)
        else:
            x = np.tensordot(x, q, axes=([0], [1 if back else 0]))
    return x


def _np_soap(
    n_steps=N_STEPS,
    *,
    first_bases,
    learning_rate=3e-3,
    b1=0.95,
    b2=0.95,
    shampoo_beta=None,
    eps=1e-8,
    weight_decay=0.01,
    precondition_frequency=10,
    max_precond_dim=10000,
    merge_dims=False,
    precondition_1d=False,
    shapes=SHAPES,
):
    beta = b2 if shampoo_beta is None else shampoo_beta
    x0, curv, target, freq = _problem(shapes)
    x = {k: v.copy() for k, v in x0.items()}
    st = {}
    for k, v in x.items():
        if v.ndim == 1:
            view, pre = v.shape, [precondition_1d and v.shape[0] <= max_precond_dim]
        else:
            view = merged_shape(v.shape, max_precond_dim) if merge_dims and v.ndim > 1 else v.shape
            pre = [d <= max_precond_dim for d in view]
        st[k] = {
            "view": view,
            "pre": pre,
            "gg": [np.zeros((d, d)) if p else None for d, p in zip(view, pre)],
            "q": None,
            "m": np.zeros(view),
            "v": np.zeros(view),
        }
    out = {k: [] for k in x}
    for step in range(n_steps):
        for k in tuple(x):
            s = st[k]
            g = _grad(x[k], step, curv[k], target[k], freq[k]).reshape(s["view"])
            if step > 0:
                t = step
                gt = _np_project(g, s["q"])
                s["m"] = b1 * s["m"] + (1 - b1) * gt
                s["v"] = b2 * s["v"] + (1 - b2) * gt * gt
                step_size = learning_rate * np.sqrt(1 - b2**t) / (1 - b1**t)
                n = _np_project(s["m"] / (np.sqrt(s["v"]) + eps), s["q"], back=True).reshape(x[k].shape)
                x[k] = (x[k] - step_size * n) * (1 - learning_rate * weight_decay)
            # update_preconditioner
            m_orig = _np_project(s["m"], s["q"], back=True) if s["q"] is not None else None
            for a, p in enumerate(s["pre"]):
                if p:
                    others = [o for o in range(g.ndim) if o != a]
                    s["gg"][a] = beta * s["gg"][a] + (1 - beta) * np.tensordot(g, g, (others, others))
            if s["q"] is None:
                if first_bases is not None:  # LAPACK's choice in repeated eigenvalues: start from ours
                    it = iter(first_bases[k])
                    s["q"] = [next(it) if p else None for p in s["pre"]]
                else:
                    s["q"] = [np.linalg.eigh(gg)[1][:, ::-1] if p else None for gg, p in zip(s["gg"], s["pre"])]
            elif step % precondition_frequency == 0:
                new_q = []
                for a, (gg, q) in enumerate(zip(s["gg"], s["q"])):
                    if q is None:
                        new_q.append(None)
                        continue
                    estimates = np.diag(q.T @ gg @ q)
                    order = np.argsort(-estimates, kind="stable")
                    s["v"] = np.take(s["v"], order, axis=a)
                    new_q.append(np.linalg.qr((gg @ q)[:, order])[0])
                s["q"] = new_q
            if m_orig is not None:
                s["m"] = _np_project(m_orig, s["q"])
            out[k].append(x[k].copy())
    return {k: np.stack(v) for k, v in out.items()}


CONFIGS = {
    "defaults": {},
    "every3_1d_beta_max_dim": {
        "precondition_frequency": 3,
        "precondition_1d": True,
        "shampoo_beta": 0.9,
        "max_precond_dim": 5,
        "b1": 0.9,
        "b2": 0.99,
        "eps": 1e-6,
        "weight_decay": 0.0,
    },
    "merge_dims": {"merge_dims": True, "max_precond_dim": 10, "precondition_frequency": 5, "learning_rate": 1e-2},
    "merge_to_one_axis": {
        "merge_dims": True,
        "max_precond_dim": 6,
        "precondition_frequency": 10,
        "shapes": {"u": (2, 3), **SHAPES},
    },  # u -> (6,); w, t stay
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_numpy_reference_for_200_float64_steps(name):
    kwargs = dict(CONFIGS[name])
    lr, shapes = kwargs.pop("learning_rate", 3e-3), kwargs.pop("shapes", SHAPES)
    ours, first = _run_ours(jol.soap(lr, **kwargs), shapes)
    ref = _np_soap(first_bases=first, learning_rate=lr, shapes=shapes, **kwargs)
    # Measured: 3e-15 to 2e-14; 3e-13 and 5e-13 with merged axes (larger factors, so worse conditioned QR).
    assert_trajectories_close(ours, ref, 1e-11, name)
    np.testing.assert_array_equal(ours["w"][0], _problem(shapes)[0]["w"])  # the first call makes no step


def test_first_bases_are_exact_eigenvectors_by_decreasing_eigenvalue():
    x0, curv, target, freq = _problem({"t": (3, 5, 2)})
    g = {"t": jnp.asarray(_grad(x0["t"], 0, curv["t"], target["t"], freq["t"]))}
    opt = jol.soap()
    _, state = jax.jit(lambda g, x: opt.update(g, opt.init(x), x))(g, x0)
    for a, q in enumerate(state[0].bases["t"]):
        gg = 0.05 * np.tensordot(np.asarray(g["t"]), np.asarray(g["t"]), ([o for o in range(3) if o != a],) * 2)
        w, v = np.linalg.eigh(gg)
        q = np.asarray(q)
        np.testing.assert_allclose(np.abs(q.T @ v[:, ::-1]), np.eye(len(w)), atol=1e-10)  # up to column signs


# --------------------------------------------------------------------------------------------------------------------
# pytorch_optimizer
# --------------------------------------------------------------------------------------------------------------------


def _run_torch(make_opt, first_bases, shapes=SHAPES, float64_qr=True, monkeypatch=None):
    torch = pytest.importorskip("torch")
    from pytorch_optimizer.optimizer import soap as module

    if float64_qr:  # its QR casts to float32: hand it a torch whose float32 is float64
        proxy = types.ModuleType("torch")
        proxy.__getattr__ = lambda name: torch.float64 if name == "float32" else getattr(torch, name)
        monkeypatch.setattr(module, "torch", proxy)
    x0, curv, target, freq = _problem(shapes)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in x0.items()}
    opt = make_opt(list(params.values()))
    out = {k: [] for k in params}
    for step in range(N_STEPS):
        for k, p in params.items():
            p.grad = torch.tensor(_grad(p.detach().numpy(), step, curv[k], target[k], freq[k]))
        opt.step()
        if step == 0:  # start from our first bases (LAPACK's choice in repeated eigenvalues)
            for k, p in params.items():
                it = iter(first_bases[k])
                opt.state[p]["Q"] = [torch.tensor(next(it)) if len(q) else q for q in opt.state[p]["Q"]]
        for k, p in params.items():
            out[k].append(p.detach().numpy().copy())
    return {k: np.stack(v) for k, v in out.items()}


TORCH_CONFIGS = {
    "defaults": ({}, {}),
    "every3_1d_beta_max_dim": (
        {
            "precondition_frequency": 3,
            "precondition_1d": True,
            "shampoo_beta": 0.9,
            "max_precond_dim": 5,
            "b1": 0.9,
            "b2": 0.99,
        },
        {
            "precondition_frequency": 3,
            "precondition_1d": True,
            "shampoo_beta": 0.9,
            "max_precondition_dim": 5,
            "betas": (0.9, 0.99),
        },
    ),
    # Its merge_small_dims maps a vector's shape (4,) to (1,) (its own convention for one merged axis), which
    # cannot reshape, and gives a scalar a 1 x 1 factor (a basis of +-1: Adam, as ours): merged on w and t.
    "merge_dims": (
        {"merge_dims": True, "max_precond_dim": 10, "precondition_frequency": 5},
        {"merge_dims": True, "max_precondition_dim": 10, "precondition_frequency": 5},
        {"w": (6, 4), "t": (3, 5, 2)},
    ),
}


@pytest.mark.parametrize("name", list(TORCH_CONFIGS))
def test_matches_pytorch_optimizer_soap(name, monkeypatch):
    po = pytest.importorskip("pytorch_optimizer")
    ours_kwargs, theirs_kwargs, *shapes = TORCH_CONFIGS[name]
    shapes = shapes[0] if shapes else SHAPES
    ours, first = _run_ours(jol.soap(3e-3, **ours_kwargs), shapes)
    theirs = _run_torch(lambda ps: po.SOAP(ps, lr=3e-3, **theirs_kwargs), first, shapes, monkeypatch=monkeypatch)
    # Measured: 6e-15 to 8e-15 (with its QR in float32, as shipped: 3e-7 to 7e-7).
    assert_trajectories_close(ours, theirs, 1e-11, f"pytorch_optimizer.SOAP {name}")


# --------------------------------------------------------------------------------------------------------------------
# Convergence, traced hyperparameters, vmap, eval_shape, errors
# --------------------------------------------------------------------------------------------------------------------


def test_loss_decreases_faster_than_adam_on_rotated_ill_conditioned_least_squares():
    loss, w0 = _least_squares()
    lrs = jnp.asarray([0.01, 0.03, 0.1, 0.3])
    best = {
        name: float(jnp.min(jax.jit(jax.vmap(lambda lr, make=make: _final_loss(make(lr), loss, w0, 150)))(lrs)))
        for name, make in {
            "adam": lambda lr: jol.adam(lr, b1=0.95, b2=0.95),
            "soap": lambda lr: jol.soap(lr, weight_decay=0.0),
        }.items()
    }
    assert best["soap"] < float(loss(w0)) * 1e-2, best
    assert best["soap"] <= best["adam"], best


def _run_traced(h, n_steps=3):
    h = dict(h)
    opt = jol.soap(h.pop("learning_rate"), precondition_frequency=2, **h)
    return trajectory(opt, SMALL, n_steps)


HPS = {"learning_rate": 0.01, "b1": 0.9, "b2": 0.99, "shampoo_beta": 0.9, "eps": 1e-6, "weight_decay": 0.05}


def test_traced_hyperparameters_under_jit_equal_python_numbers():
    ours, _ = _run_ours(jol.soap(precondition_frequency=2, **HPS), SMALL, n_steps=3)
    traced = jax.jit(_run_traced)({k: jnp.asarray(v) for k, v in HPS.items()})
    for k in ours:
        np.testing.assert_allclose(np.asarray(traced[k]), ours[k], rtol=1e-12, atol=1e-14)


def test_vmap_over_learning_rate_equals_loop_grad_and_eval_shape_init():
    assert_vmap_over_learning_rate_equals_loop(_run_traced, HPS, [0.003, 0.01, 0.03])

    assert_hyperparameter_grads_finite(_run_traced, HPS, nonzero=("learning_rate", "shampoo_beta"))

    params = {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()} | {"h": jnp.zeros((2, 3), jnp.bfloat16)}
    opt = jol.soap(precondition_1d=True)
    abstract, state = jax.eval_shape(opt.init, params), opt.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert (a.shape, a.dtype) == (s.shape, s.dtype)
    inner = state[0]
    assert [f.shape for f in inner.factors["t"]] == [(3, 3), (5, 5), (2, 2)]
    assert [f.shape for f in inner.factors["b"]] == [(4, 4)] and inner.factors["s"] == ()
    assert [f.dtype for f in inner.bases["h"]] == [jnp.float32, jnp.float32]
    assert inner.mu["h"].dtype == jnp.bfloat16 and inner.nu["h"].shape == (2, 3)


def test_identity_above_max_precond_dim_and_adam_without_factors():
    """With no factor at all (every axis above ``max_precond_dim``), SOAP is Adam with the reference's bias
    correction, one call late (the first call makes no step)."""
    x0, curv, target, freq = _problem({"w": (6, 4)})
    ours, _ = _run_ours(jol.soap(0.01, weight_decay=0.0, max_precond_dim=3), {"w": (6, 4)}, n_steps=30)
    x, m, v = x0["w"].copy(), 0.0, 0.0
    for step in range(30):
        g = _grad(x, step, curv["w"], target["w"], freq["w"])
        if step > 0:
            m, v = 0.95 * m + 0.05 * g, 0.95 * v + 0.05 * g * g
            x = x - 0.01 * np.sqrt(1 - 0.95**step) / (1 - 0.95**step) * m / (np.sqrt(v) + 1e-8)
        np.testing.assert_allclose(ours["w"][step], x, rtol=1e-12, atol=1e-14)


def test_errors_name_the_optimizer():
    with pytest.raises(ValueError, match=r"^soap: .*b1"):
        jol.soap(b1=1.0)
    with pytest.raises(ValueError, match=r"^soap: .*max_precond_dim"):
        jol.soap(max_precond_dim=0)
    with pytest.raises(ValueError, match=r"^soap: .*complex parameters are not supported"):
        jol.soap().init({"w": jnp.ones((3, 2), jnp.complex64)})
    with pytest.raises(ValueError, match=r"soap.*fused tree"):
        jol.soap().init(jol.fuse({"w": jnp.ones((3, 2))}))


def test_zero_and_huge_gradients_give_finite_steps():
    params = {"w": jnp.ones((4, 3), jnp.float32), "v": jnp.ones((3,), jnp.float32)}
    opt = jol.soap(precondition_frequency=1, precondition_1d=True)

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


_LAPACK_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
import jaxopt_lite as jol
rng = np.random.default_rng(0)
params = {f"w{i}": jnp.asarray(rng.standard_normal((64, 256)), jnp.float32) for i in range(4)}
params |= {f"v{i}": jnp.asarray(rng.standard_normal((192, 64)), jnp.float32) for i in range(2)}
opt = jol.soap(1e-3, precondition_frequency=2)
def run(params):
    def body(carry, k):
        p, s = carry
        g = jax.tree.map(lambda x: x * jnp.cos(k + x), p)
        u, s = opt.update(g, s, p)
        return (jol.apply_updates(p, u), s), None
    return jax.lax.scan(body, (params, opt.init(params)), jnp.arange(6.0))[0][0]
out = jax.block_until_ready(jax.jit(run)(params))
print("ok", all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out)))
"""


def test_several_factor_shapes_do_not_deadlock_the_cpu_thread_pool():
    """Factors of several shapes, each a batch (eigh at the first call, QR at refreshes): jaxlib's batched LAPACK
    kernels block a pool thread until their batch is done, and two at once hung forever on 2 CPU cores. Run in
    a subprocess (default float32 mode, as users run) with a time limit, so a hang fails instead of stalling."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"} | {"JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LAPACK_SCRIPT], env=env, capture_output=True, text=True, timeout=240, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("SOAP's jitted step did not finish in 240 s: batched LAPACK calls deadlocked")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok True"
