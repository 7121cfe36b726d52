"""Shampoo: 200 float64 steps against a NumPy reference of the update rule and against pytorch_optimizer.

The NumPy reference below is written from the formulas (Gupta et al., 2018; Anil et al., 2020; Shi et
al., 2023) as ``scale_by_shampoo``'s docstring states them, independently of the implementation: blocks
are cut with ``np.split`` (no padding), factors are ``np.tensordot`` contractions and inverse roots come
from ``np.linalg.eigh``. The oracles are ``pytorch_optimizer`` 4.1.0's ``Shampoo`` (Gupta et al.'s
algorithm: graft ``"none"``, absolute epsilon as ``L_0 = eps I``, the factors summed) and
``ScalableShampoo`` (blocks, grafting, momentum, decoupled weight decay) with ``use_svd=True``. Their
conventions, where they differ from ours, are pinned:

- ``ScalableShampoo`` starts its factors at ``matrix_eps I`` and takes plain inverse roots: with the
  factors summed (``beta2 = 1``) that is our absolute ``matrix_eps``. Its constructor refuses
  ``beta2 = 1`` although its code handles it (``w2 = 1``), so the test sets it after construction.
- It keeps two momentum buffers (one for the grafted optimizer before ``start_preconditioning_step``):
  they agree with our single buffer when preconditioning starts at step 1, or when ``b1 = 0``.
- ``Shampoo`` preconditions vectors with a full matrix (exponent -1/2); we graft them (here ``"none"``:
  SGD), so it is compared on the matrix and the 3-tensor only.
- Both add ``1e-16`` to the Shampoo norm in the grafting ratio; we divide exactly (0 where it is 0).
"""

from __future__ import annotations

import itertools
import math

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
from reference_problems import grad as _grad
from reference_problems import problem as _problem

import jaxopt_lite as jol
from jaxopt_lite.optimizers.shampoo import psd_power

N_STEPS = 200
SHAPES = {"w": (6, 4), "t": (3, 5, 2), "b": (4,), "s": ()}
SMALL = {"w": (4, 3), "b": (3,)}  # for the tests that compile several programs


# --------------------------------------------------------------------------------------------------------------------
# The problem: gradients curv * (x - target) + 0.1 sin(k freq), different per entry and step
# --------------------------------------------------------------------------------------------------------------------


def _run_ours(opt, shapes=SHAPES, n_steps=N_STEPS):
    """Parameters after each step (a jitted ``lax.scan``), float64."""
    x0, curv, target, freq = (jax.tree.map(jnp.asarray, v) for v in _problem(shapes))

    def body(carry, k):
        x, state = carry
        g = jax.tree.map(lambda p, c, t, w: _grad(p, k, c, t, w, jnp), x, curv, target, freq)
        u, state = opt.update(g, state, x)
        x = jol.apply_updates(x, u)
        return (x, state), x

    _, xs = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), jnp.arange(n_steps, dtype=jnp.float64)))(x0)
    return {k: np.asarray(v) for k, v in xs.items()}


# --------------------------------------------------------------------------------------------------------------------
# The NumPy reference
# --------------------------------------------------------------------------------------------------------------------


def _np_inverse_root(s, p, eps, relative):
    w, v = np.linalg.eigh(s)
    w = np.maximum(w, 0.0)
    x = w + (eps * w[-1] if relative else eps)
    f = np.where(x > 0, np.where(x > 0, x, 1.0) ** (-1.0 / p), 0.0)
    return (v * f) @ v.T


def _block_slices(shape, preconditioned, block_size):
    per_axis = []
    for d, pre in zip(shape, preconditioned):
        starts = range(0, d, block_size) if pre else [0]
        per_axis.append([slice(a, min(a + block_size, d)) if pre else slice(0, d) for a in starts])
    return list(itertools.product(*per_axis))


def _np_shampoo(
    n_steps=N_STEPS,
    *,
    learning_rate=0.02,
    block_size=1024,
    b1=0.9,
    beta2=1.0,
    matrix_eps=1e-6,
    graft_type="adam",
    graft_beta2=0.999,
    graft_eps=1e-8,
    weight_decay=0.0,
    precondition_frequency=1,
    start_preconditioning_step=1,
    max_preconditioner_dim=8192,
    nesterov=False,
    moving_average_for_momentum=False,
    relative_matrix_eps=True,
    exponent_override=None,
    shapes=SHAPES,
):
    """Shampoo from the formulas, leaf by leaf and block by block; the parameters after each step."""
    x0, curv, target, freq = _problem(shapes)
    x = {k: v.copy() for k, v in x0.items()}
    mu = {k: np.zeros_like(v) for k, v in x.items()}
    nu = {k: np.zeros_like(v) for k, v in x.items()}
    stats, roots = {}, {}
    layout = {}
    for k, v in x.items():
        pre = [v.ndim >= 2 and 2 <= d <= max_preconditioner_dim for d in v.shape]
        axes = [a for a, p in enumerate(pre) if p]
        layout[k] = (axes, _block_slices(v.shape, pre, block_size))
        stats[k] = [[np.zeros((blk[a].stop - blk[a].start,) * 2) for a in axes] for blk in layout[k][1]]
        roots[k] = [[None for _ in axes] for _ in layout[k][1]]
    w2 = 1.0 if beta2 == 1 else 1 - beta2
    c = (1 - b1) if moving_average_for_momentum else 1.0
    out = {k: [] for k in x}
    for step in range(n_steps):
        t = step + 1
        recompute = t >= start_preconditioning_step and (t - start_preconditioning_step) % precondition_frequency == 0
        for k in tuple(x):
            g = _grad(x[k], step, curv[k], target[k], freq[k])
            if graft_type == "adagrad":
                nu[k] = nu[k] + g * g
                d_graft = g / (np.sqrt(nu[k]) + graft_eps)
            elif graft_type in ("rmsprop", "adam"):
                nu[k] = graft_beta2 * nu[k] + (1 - graft_beta2) * g * g
                v_hat = nu[k] / (1 - graft_beta2**t) if graft_type == "adam" else nu[k]
                d_graft = g / (np.sqrt(v_hat) + graft_eps)
            else:
                d_graft = g
            axes, blocks = layout[k]
            d = d_graft
            if axes:
                p = exponent_override or 2 * len(axes)
                pre = np.zeros_like(g)
                for j, blk in enumerate(blocks):
                    block = g[blk]
                    for i, a in enumerate(axes):
                        others = [o for o in range(g.ndim) if o != a]
                        stats[k][j][i] = beta2 * stats[k][j][i] + w2 * np.tensordot(block, block, (others, others))
                        if recompute:
                            roots[k][j][i] = _np_inverse_root(stats[k][j][i], p, matrix_eps, relative_matrix_eps)
                    if t >= start_preconditioning_step:  # the roots exist from the start step on
                        y = block
                        for i, a in enumerate(axes):
                            y = np.moveaxis(np.tensordot(roots[k][j][i], y, (1, a)), 0, a)
                        pre[blk] = y
                if t >= start_preconditioning_step:
                    if graft_type == "none":
                        d = pre
                    elif np.linalg.norm(pre) > 0:
                        d = pre * np.linalg.norm(d_graft) / np.linalg.norm(pre)
            mu[k] = b1 * mu[k] + c * d
            u = b1 * mu[k] + c * d if nesterov else mu[k]
            x[k] = x[k] - learning_rate * (u + weight_decay * x[k])
            out[k].append(x[k].copy())
    return {k: np.stack(v) for k, v in out.items()}


# Each configuration: arguments for both. The first is the default tier's case.
CONFIGS = {
    "adam_graft_sum_relative_blocks": {"block_size": 4},
    "ema_rmsprop_nesterov_absolute_every3": {
        "block_size": 3,
        "beta2": 0.95,
        "graft_type": "rmsprop",
        "graft_beta2": 0.9,
        "nesterov": True,
        "moving_average_for_momentum": True,
        "relative_matrix_eps": False,
        "matrix_eps": 1e-3,
        "weight_decay": 0.01,
        "precondition_frequency": 3,
        "start_preconditioning_step": 2,
    },
    "adagrad_override_max_dim": {
        "graft_type": "adagrad",
        "exponent_override": 2,
        "max_preconditioner_dim": 5,
        "b1": 0.5,
    },
    "none_start4_every4": {
        "graft_type": "none",
        "precondition_frequency": 4,
        "start_preconditioning_step": 4,
        "b1": 0.5,
        "beta2": 0.99,
        "matrix_eps": 1e-2,
    },
    "sgd_graft": {"graft_type": "sgd", "beta2": 0.99, "block_size": 2, "nesterov": True},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_numpy_reference_for_200_float64_steps(name):
    kwargs = dict(CONFIGS[name])
    ref = _np_shampoo(**kwargs)
    ours = _run_ours(jol.shampoo(0.02, **kwargs))
    # Measured: at most 3e-14 (float64 rounding of eigh and of the products, over 200 steps).
    assert_trajectories_close(ours, ref, 1e-11, name)
    assert all(np.all(np.isfinite(v)) for v in ours.values())


# --------------------------------------------------------------------------------------------------------------------
# pytorch_optimizer
# --------------------------------------------------------------------------------------------------------------------


def _run_torch(make_opt, shapes=SHAPES, beta2=None):
    torch = pytest.importorskip("torch")
    x0, curv, target, freq = _problem(shapes)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in x0.items()}
    opt = make_opt(list(params.values()))
    if beta2 is not None:  # the summed factors its code supports and its constructor refuses
        for group in opt.param_groups:
            group["betas"] = (group["betas"][0], beta2)
    out = {k: [] for k in params}
    for step in range(N_STEPS):
        for k, p in params.items():
            p.grad = torch.tensor(_grad(p.detach().numpy(), step, curv[k], target[k], freq[k]))
        opt.step()
        for k, p in params.items():
            out[k].append(p.detach().numpy().copy())
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_pytorch_optimizer_scalable_shampoo(nesterov):
    po = pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    ours = _run_ours(
        jol.shampoo(
            0.02,
            block_size=4,
            b1=0.9,
            graft_type="adagrad",
            graft_eps=1e-10,
            matrix_eps=1e-6,
            relative_matrix_eps=False,
            nesterov=nesterov,
            weight_decay=0.01,
        )
    )
    theirs = _run_torch(
        lambda ps: po.ScalableShampoo(
            ps,
            lr=0.02,
            betas=(0.9, 0.5),
            weight_decay=0.01,
            decoupled_weight_decay=True,
            start_preconditioning_step=1,
            preconditioning_compute_steps=1,
            block_size=4,
            shape_interpretation=False,
            graft_type=LayerWiseGrafting.ADAGRAD,
            nesterov=nesterov,
            diagonal_eps=1e-10,
            matrix_eps=1e-6,
            use_svd=True,
        ),
        beta2=1.0,
    )
    # Measured: 7e-14 (nesterov=False) to 1.5e-13 (nesterov=True).
    assert_trajectories_close(ours, theirs, 1e-11, f"ScalableShampoo nesterov={nesterov}")


def test_matches_pytorch_optimizer_scalable_shampoo_every_5_steps():
    po = pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    ours = _run_ours(
        jol.shampoo(
            0.02,
            block_size=4,
            b1=0.0,
            graft_type="sgd",
            matrix_eps=1e-6,
            relative_matrix_eps=False,
            precondition_frequency=5,
            start_preconditioning_step=5,
        )
    )
    theirs = _run_torch(
        lambda ps: po.ScalableShampoo(
            ps,
            lr=0.02,
            betas=(0.0, 0.5),
            start_preconditioning_step=5,
            preconditioning_compute_steps=5,
            block_size=4,
            shape_interpretation=False,
            graft_type=LayerWiseGrafting.SGD,
            nesterov=False,
            matrix_eps=1e-6,
            use_svd=True,
        ),
        beta2=1.0,
    )
    assert_trajectories_close(ours, theirs, 1e-11, "ScalableShampoo every 5 steps")


def test_matches_pytorch_optimizer_shampoo_of_gupta_et_al():
    po = pytest.importorskip("pytorch_optimizer")
    shapes = {"w": (6, 4), "t": (3, 5, 2)}
    ours = _run_ours(jol.shampoo(0.02, b1=0.0, graft_type="none", matrix_eps=1e-3, relative_matrix_eps=False), shapes)
    theirs = _run_torch(lambda ps: po.Shampoo(ps, lr=0.02, matrix_eps=1e-3), shapes)
    # Measured: 1e-15.
    assert_trajectories_close(ours, theirs, 1e-11, "Shampoo")


# --------------------------------------------------------------------------------------------------------------------
# The inverse root and its derivative; the Newton iteration
# --------------------------------------------------------------------------------------------------------------------


def _np_power(a, eps, e, relative):
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 0)
    x = w + (eps * w[-1] if relative else eps)
    return (v * x**e) @ v.T


@pytest.mark.parametrize("relative", [True, False])
def test_psd_power_derivative_is_finite_and_exact_at_repeated_eigenvalues(relative):
    """The Daleckii-Krein derivative against central differences, with a triple eigenvalue (where
    differentiating ``eigh`` gives nan) and with distinct ones; also with respect to the epsilon."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    repeated = (q * np.array([0.5, 1.0, 1.0, 1.0, 3.0])) @ q.T  # (0 would be the clip's kink)
    distinct = (q * np.array([0.1, 0.5, 1.0, 2.0, 3.0])) @ q.T
    e = rng.standard_normal((5, 5))
    direction = e + e.T
    eps, exponent = 0.05, -0.25
    for a in (repeated, distinct):
        value, tangent = jax.jvp(
            lambda m, s: psd_power(m[None], s, jnp.asarray([exponent]), relative)[0],
            (jnp.asarray(a), jnp.asarray(eps)),
            (jnp.asarray(direction), jnp.asarray(0.3)),
        )
        h = 1e-6
        numeric = (
            _np_power(a + h * direction, eps + 0.3 * h, exponent, relative)
            - _np_power(a - h * direction, eps - 0.3 * h, exponent, relative)
        ) / (2 * h)
        np.testing.assert_allclose(np.asarray(value), _np_power(a, eps, exponent, relative), rtol=1e-12, atol=1e-13)
        assert np.all(np.isfinite(np.asarray(tangent)))
        np.testing.assert_allclose(np.asarray(tangent), numeric, rtol=1e-6, atol=1e-7)


def test_newton_iteration_agrees_with_eigh():
    """``inverse_root_method="newton"`` (coupled Newton, tolerance 1e-6) against the exact roots, once the
    factors have full rank (on rank-deficient ones the iteration may stop at its first guess, as Anil et al.'s)."""
    for relative in (True, False):
        kwargs = {
            "block_size": 2,
            "relative_matrix_eps": relative,
            "matrix_eps": 1e-4,
            "precondition_frequency": 2,
            "start_preconditioning_step": 6,
        }
        exact = _run_ours(jol.shampoo(0.02, **kwargs), SMALL, n_steps=12)
        newton = _run_ours(jol.shampoo(0.02, inverse_root_method="newton", **kwargs), SMALL, n_steps=12)
        for k in exact:
            np.testing.assert_allclose(newton[k], exact[k], rtol=1e-5, atol=1e-6, err_msg=f"{k}, relative={relative}")


# --------------------------------------------------------------------------------------------------------------------
# Convergence, traced hyperparameters, vmap, eval_shape, errors
# --------------------------------------------------------------------------------------------------------------------


def _least_squares(seed=0):
    """An ill-conditioned multi-output least-squares problem: loss(W) = ||X W - Y||^2 / n, W of shape (8, 4)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 8)) * np.logspace(0, 1.5, 8)
    w_true = rng.standard_normal((8, 4))
    y = x @ w_true @ np.diag(np.logspace(0, 1, 4)) + 0.01 * rng.standard_normal((64, 4))
    x, y = jnp.asarray(x), jnp.asarray(y)
    return (lambda w: jnp.mean(jnp.sum((x @ w - y) ** 2, axis=1))), jnp.zeros((8, 4))


def _final_loss(opt, loss, w0, steps):
    def body(carry, _):
        w, state = carry
        g = jax.grad(loss)(w)
        u, state = opt.update(g, state, w)
        return (jol.apply_updates(w, u), state), None

    (w, _), _ = jax.lax.scan(body, (w0, opt.init(w0)), None, length=steps)
    return float(loss(w))


def test_loss_decreases_faster_than_adam_on_ill_conditioned_least_squares():
    loss, w0 = _least_squares()
    best = {}
    for name, make in {
        "adam": lambda lr: jol.adam(lr),
        "shampoo": lambda lr: jol.shampoo(lr, b1=0.9, moving_average_for_momentum=True),
    }.items():
        best[name] = min(_final_loss(make(lr), loss, w0, 100) for lr in (0.01, 0.03, 0.1, 0.3))
    assert best["shampoo"] < float(loss(w0)) * 1e-2, best
    assert best["shampoo"] <= best["adam"], best


def _run_traced(h, n_steps=5):
    """The parameters after each of ``n_steps`` steps of Shampoo built from ``h`` (numbers or traced values)."""
    h = dict(h)
    opt = jol.shampoo(h.pop("learning_rate"), block_size=2, **h)  # (4, 3): blocks of 2 x 2, the last padded
    return trajectory(opt, SMALL, n_steps)


HPS = {
    "learning_rate": 0.03,
    "b1": 0.5,
    "beta2": 0.9,
    "matrix_eps": 1e-3,
    "graft_beta2": 0.99,
    "graft_eps": 1e-6,
    "weight_decay": 0.01,
}


def test_traced_hyperparameters_under_jit_equal_python_numbers():
    concrete = _run_ours(
        jol.shampoo(HPS["learning_rate"], block_size=2, **{k: v for k, v in HPS.items() if k != "learning_rate"}),
        SMALL,
        5,
    )
    traced = jax.jit(_run_traced)({k: jnp.asarray(v) for k, v in HPS.items()})
    for k in concrete:
        np.testing.assert_allclose(np.asarray(traced[k]), concrete[k], rtol=1e-12, atol=1e-14)


def test_vmap_over_learning_rate_equals_loop_and_eval_shape_init():
    assert_vmap_over_learning_rate_equals_loop(_run_traced, HPS, [0.01, 0.03, 0.1])
    params = {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()} | {"h": jnp.zeros((2, 3), jnp.bfloat16)}
    opt = jol.shampoo(0.1, block_size=4)
    abstract, state = jax.eval_shape(opt.init, params), opt.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert (a.shape, a.dtype) == (s.shape, s.dtype)
    inner = state[0]
    # w (6, 4) in blocks of 4: two blocks, factors (2, 4, 4) and (2, 4, 4); factors in float32 for bfloat16.
    assert [s.shape for s in inner.stats["w"]] == [(2, 4, 4), (2, 4, 4)]
    assert inner.stats["b"] == () and inner.stats["s"] == ()
    assert [s.dtype for s in inner.stats["h"]] == [jnp.float32, jnp.float32]
    assert inner.mu["h"].dtype == jnp.bfloat16


def test_grad_through_steps_wrt_hyperparameters_is_finite():
    run = lambda h: _run_traced(h, n_steps=3)  # noqa: E731
    assert_hyperparameter_grads_finite(run, HPS, nonzero=("learning_rate", "beta2"))


def test_same_shape_leaves_share_one_batched_eigh_and_stay_independent():
    x0, curv, target, freq = _problem({"a": (4, 3), "b": (4, 3), "c": (3, 4)})
    g = {k: jnp.asarray(_grad(x0[k], 0, curv[k], target[k], freq[k])) for k in x0}
    opt = jol.shampoo(0.1, b1=0.0)

    def step(g, x):
        return opt.update(g, opt.init(x), x)[0]

    together = jax.jit(step)(g, x0)
    for k, g_k in g.items():
        alone = jax.jit(step)({k: g_k}, {k: x0[k]})
        np.testing.assert_allclose(np.asarray(together[k]), np.asarray(alone[k]), rtol=1e-13)
    jaxpr = str(jax.make_jaxpr(step)(g, x0))
    assert jaxpr.count("eigh[") == 2  # (3, 3) factors of all three leaves, then the (4, 4) ones


def test_errors_name_the_optimizer():
    with pytest.raises(ValueError, match=r"^shampoo: .*graft_type"):
        jol.shampoo(0.1, graft_type="lamb")
    with pytest.raises(ValueError, match=r"^shampoo: .*block_size"):
        jol.shampoo(0.1, block_size=0)
    with pytest.raises(ValueError, match=r"^shampoo: .*beta2"):
        jol.shampoo(0.1, beta2=1.5)
    params = {"w": jnp.ones((3, 2), jnp.complex64)}
    with pytest.raises(ValueError, match=r"^shampoo: .*complex parameters are not supported"):
        jol.shampoo(0.1).init(params)
    with pytest.raises(ValueError, match=r"shampoo.*fused tree"):
        jol.shampoo(0.1).init(jol.fuse({"w": jnp.ones((3, 2))}))


def test_zero_and_huge_gradients_give_finite_steps():
    params = {"w": jnp.ones((4, 3), jnp.float32), "v": jnp.ones((3,), jnp.float32)}
    for method in ("eigh", "newton"):
        opt = jol.shampoo(0.1, inverse_root_method=method)

        @jax.jit
        def two_steps(scale, opt=opt):
            g = jax.tree.map(lambda p: scale * jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
            state = opt.init(params)
            _, state = opt.update(g, state, params)
            return opt.update(g, state, params)

        for scale in (0.0, 1e-30, 1e15):
            u, state = two_steps(jnp.float32(scale))
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state))), (scale, method)
            if scale == 0.0:
                assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))


def test_exponent_is_minus_one_over_2k_and_blocking_is_exact():
    """One step from zero state, graft "none", b1 = 0: the step is ``(G G^T)^(-1/4) G (G^T G)^(-1/4)`` for a
    matrix (the pseudo-inverse roots, epsilon 0), and blocking a matrix equals running on its blocks."""
    rng = np.random.default_rng(1)
    g = rng.standard_normal((4, 4))
    opt = jol.shampoo(1.0, b1=0.0, graft_type="none", matrix_eps=0.0)
    u, _ = opt.update({"w": jnp.asarray(g)}, opt.init({"w": jnp.zeros((4, 4))}), {"w": jnp.zeros((4, 4))})
    left, right = _np_power(g @ g.T, 0.0, -0.25, True), _np_power(g.T @ g, 0.0, -0.25, True)
    np.testing.assert_allclose(np.asarray(u["w"]), -(left @ g @ right), rtol=1e-10)
    # The polar factor: G^T G has full rank, so the step is -U V^T.
    uu, _, vt = np.linalg.svd(g)
    np.testing.assert_allclose(np.asarray(u["w"]), -(uu @ vt), rtol=1e-9, atol=1e-12)
    big = rng.standard_normal((7, 4))  # rows in blocks of 4 and 3 (zero-padded to 4); 4 columns: one block
    blocked = jol.shampoo(1.0, block_size=4, b1=0.0, graft_type="none", matrix_eps=1e-3)
    ub, _ = blocked.update({"w": jnp.asarray(big)}, blocked.init({"w": jnp.zeros((7, 4))}), {"w": jnp.zeros((7, 4))})
    for rows in (slice(0, 4), slice(4, 7)):
        whole = jol.shampoo(1.0, b1=0.0, graft_type="none", matrix_eps=1e-3)
        z = jnp.zeros((rows.stop - rows.start, 4))
        ua, _ = whole.update({"w": jnp.asarray(big[rows])}, whole.init({"w": z}), {"w": z})
        np.testing.assert_allclose(np.asarray(ub["w"][rows]), np.asarray(ua["w"]), rtol=1e-12)
    assert math.isclose(float(jnp.linalg.norm(u["w"])), 2.0, rel_tol=1e-9)  # ||U V^T||_F = sqrt(4)
