"""MARS-AdamW (Yuan et al., 2024) against a NumPy transcription of the paper and against
``pytorch_optimizer.MARS`` (4.1.0), in float64 over 200 steps.

The NumPy reference is Algorithm 2 of the paper, line by line, with the options the
library exposes (first step, per-leaf or global clipping, exact or approximate
previous gradient) and, for the oracle, ``pytorch_optimizer``'s denominator.

``pytorch_optimizer.MARS`` conventions (checked below):

- ``last_grad`` starts at zero (``g_0 = 0``, as the authors' code): our
  ``previous_grad_init="zeros"``; our default is the paper's ``c_1 = g_1``;
- ``c_t`` is clipped per parameter tensor (``torch.norm(c_t)``), as our default;
- its denominator is ``(sqrt(v + 1e-15) + eps) / sqrt(1 - b2^t)``: its ``eps`` acts as
  ``eps / sqrt(1 - b2^t)`` and ``1e-15`` sits inside the root; ours (the paper's and the
  authors' code's) is ``sqrt(v / (1 - b2^t)) + eps``. With ``eps=0`` the two agree to the
  ``1e-15`` (relative ~1e-11 here); with a large ``eps`` they visibly differ;
- with ``optimize_1d=False`` (its default) tensors of fewer than 2 dimensions get plain
  AdamW (``lr_1d``, ``betas_1d``, ``weight_decay_1d``), not MARS: our ``partition`` of
  ``mars_adamw`` and ``adamw`` reproduces it (the authors' code takes exactly 2-D tensors
  as matrices, ``pytorch_optimizer`` ``ndim >= 2``: they differ on 3-D and 4-D tensors).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol
from jaxopt_lite.optimizers.mars import ScaleByMarsState, mars_adamw, scale_by_mars

N_STEPS = 200
SHAPES = {"b": (5,), "s": (), "w": (3, 4)}  # sorted keys: JAX's order of the dict's leaves
LR = 0.01
DEFAULT_HPS = {"b1": 0.95, "b2": 0.99, "eps": 1e-8, "weight_decay": 0.01, "gamma": 0.025, "max_norm": 1.0}


# --------------------------------------------------------------------------------------------------------------------
# The problem: a noisy quadratic whose batches xi_t change both the curvature and the noise
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def _problem(seed=0, n_steps=N_STEPS):
    rng = np.random.default_rng(seed)
    x0 = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    target = {k: x0[k] + 0.3 * rng.standard_normal(s) for k, s in SHAPES.items()}
    curv = {k: 0.5 + np.abs(rng.standard_normal(s)) for k, s in SHAPES.items()}
    # Noise scales from 10^-2 to 10^0.5: ||c_t|| of each leaf is sometimes below 1, sometimes above.
    scales = 10.0 ** rng.uniform(-2.0, 0.5, size=n_steps + 1)
    batch_curv = 0.5 + rng.uniform(size=n_steps + 1)
    noise = [{k: scales[t] * rng.standard_normal(s) for k, s in SHAPES.items()} for t in range(n_steps + 1)]
    return x0, target, curv, batch_curv, noise


def _grad(x, t, seed=0):
    """``grad f(x, xi_t)``: the gradient at ``x`` on batch ``t`` (float64 NumPy)."""
    _, target, curv, batch_curv, noise = _problem(seed)
    return {k: batch_curv[t] * curv[k] * (np.asarray(x[k]) - target[k]) + noise[t][k] for k in SHAPES}


# --------------------------------------------------------------------------------------------------------------------
# NumPy reference: the paper's Algorithm 2 (MARS-AdamW)
# --------------------------------------------------------------------------------------------------------------------


def reference(hps, n_steps=N_STEPS, *, lr=LR, first="current", per_leaf=True, exact=False, denominator="paper",
              x0=None, grad=_grad):
    """Parameters after each step and, per leaf, how many steps clipped ``c_t``.

    ``first``: ``"current"`` is the paper's ``x_1 = x_0`` (so ``c_1 = g_1``), ``"zeros"`` the authors'
    code's ``g_0 = 0``. ``exact``: ``g_{t-1} = grad f(x_{t-1}, xi_t)`` (else the previous step's gradient).
    ``denominator``: ``"paper"`` is ``sqrt(v_hat) + eps``; ``"pytorch_optimizer"`` is
    ``(sqrt(v + 1e-15) + eps) / sqrt(1 - b2^t)``.
    """
    b1, b2, eps, wd, gamma, max_norm = (hps[k] for k in ("b1", "b2", "eps", "weight_decay", "gamma", "max_norm"))
    x = {k: np.array(v) for k, v in (x0 or _problem()[0]).items()}
    x_prev = {k: v.copy() for k, v in x.items()}  # x_0 = x_1
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros(np.shape(x[k])) for k in x}
    prev = {k: np.zeros_like(val) for k, val in x.items()}
    clipped = dict.fromkeys(x, 0)
    trajectory = []
    for t in range(1, n_steps + 1):
        g = grad(x, t)
        if exact:
            g_prev = grad(x_prev, t)
        elif t == 1 and first == "current":
            g_prev = g
        else:
            g_prev = prev
        c = {k: g[k] + gamma * (b1 / (1 - b1)) * (g[k] - g_prev[k]) for k in x}
        if max_norm is not None:
            sq = {k: np.sum(np.abs(c[k]) ** 2) for k in x}
            norms = {k: np.sqrt(sq[k]) for k in x} if per_leaf else dict.fromkeys(x, np.sqrt(sum(sq.values())))
            for k in x:
                if norms[k] > max_norm:
                    c[k] = c[k] / norms[k] * max_norm
                    clipped[k] += 1
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        x_prev = {k: val.copy() for k, val in x.items()}
        for k in SHAPES:
            m[k] = b1 * m[k] + (1 - b1) * c[k]
            v[k] = b2 * v[k] + (1 - b2) * np.abs(c[k]) ** 2
            if denominator == "paper":
                u = (m[k] / bc1) / (np.sqrt(v[k] / bc2) + eps)
            else:
                u = m[k] / ((np.sqrt(v[k] + 1e-15) + eps) / np.sqrt(bc2) * bc1)
            x[k] = x[k] - lr * (u + wd * x[k])
        prev = g
        trajectory.append({k: val.copy() for k, val in x.items()})
    return trajectory, clipped


# --------------------------------------------------------------------------------------------------------------------
# Ours: one jitted step, its float hyperparameters traced (so every configuration reuses the compilation)
# --------------------------------------------------------------------------------------------------------------------


def _opt(hps, lr=LR, **options):
    return mars_adamw(lr, hps["b1"], hps["b2"], hps["eps"], hps["weight_decay"], hps["gamma"], hps["max_norm"],
                      **options)


@functools.partial(jax.jit, static_argnames=("options", "exact"))
def _step(params, state, grads, previous_params_grad, hps, lr, *, options=(), exact=False):
    opt = _opt(hps, lr, **dict(options))
    extra = {"previous_params_grad": previous_params_grad} if exact else {}
    updates, state = opt.update(grads, state, params, **extra)
    return jol.apply_updates(params, updates), state


def ours(hps, n_steps=N_STEPS, *, lr=LR, exact=False, x0=None, grad=_grad, **options):
    x = {k: jnp.asarray(v) for k, v in (x0 or _problem()[0]).items()}
    state = _opt(DEFAULT_HPS, **options).init(x)
    traced = {k: None if val is None else jnp.asarray(val) for k, val in hps.items()}  # None: static, no leaf
    options = tuple(sorted(options.items()))
    x_prev, trajectory = x, []
    for t in range(1, n_steps + 1):
        g = grad(jax.device_get(x), t)
        g_prev = grad(jax.device_get(x_prev), t) if exact else g
        x_prev = x
        x, state = _step(x, state, g, g_prev, traced, jnp.asarray(lr), options=options, exact=exact)
        trajectory.append(jax.device_get(x))
    return trajectory, state


def _assert_trajectories_close(got, want, rtol, atol=0.0, what=""):
    for t, (a, b) in enumerate(zip(got, want)):
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(a[k]), b[k], rtol=rtol, atol=atol, err_msg=f"{what} step {t + 1} {k}")


def _max_relative_difference(got, want):
    return max(
        float(np.max(np.abs(np.asarray(a[k]) - b[k]) / np.maximum(np.abs(b[k]), 1e-300)))
        for a, b in zip(got, want) for k in SHAPES
    )


# --------------------------------------------------------------------------------------------------------------------
# Against the paper's formulas
# --------------------------------------------------------------------------------------------------------------------

CONFIGS = {
    "paper_defaults": (DEFAULT_HPS, {}),
    "zeros_global": (
        {**DEFAULT_HPS, "gamma": 0.1, "max_norm": 2.0, "weight_decay": 0.1},
        {"previous_grad_init": "zeros", "clip_scope": "global"},
    ),
    "no_clipping": ({**DEFAULT_HPS, "b1": 0.9, "b2": 0.999, "max_norm": None, "weight_decay": 0.0}, {}),
}


def _reference_options(options):
    return {"first": options.get("previous_grad_init", "current"), "per_leaf": options.get("clip_scope") != "global"}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_mars_adamw_follows_the_papers_algorithm_2_over_200_steps(config):
    hps, options = CONFIGS[config]
    want, clipped = reference(hps, **_reference_options(options))
    got, _ = ours(hps, **options)
    _assert_trajectories_close(got, want, rtol=1e-12, atol=1e-14, what=config)
    if config == "paper_defaults":  # the clip acts on some steps and not on others, for every leaf
        assert all(20 <= n <= N_STEPS - 20 for n in clipped.values()), clipped
    if config == "zeros_global":
        assert 20 <= clipped["w"] <= N_STEPS - 20, clipped


def test_the_first_step_and_the_clip_of_scale_by_mars():
    g = {"w": jnp.asarray([[0.3, -0.1], [0.2, 0.05]]), "s": jnp.asarray(-2.0)}
    k = 0.025 * 0.95 / 0.05
    norm_w = float(np.linalg.norm(np.asarray(g["w"])))
    for init, factor in (("current", 1.0), ("zeros", 1.0 + k)):
        tx = scale_by_mars(previous_grad_init=init)
        c, state = tx.update(g, tx.init(g))
        np.testing.assert_allclose(c["w"], factor * np.asarray(g["w"]), rtol=1e-15)  # norm below 1: kept
        np.testing.assert_allclose(c["s"], -1.0, rtol=1e-15)  # |c| = 2 or 2.95: clipped to 1
        assert isinstance(state, ScaleByMarsState) and int(state.count) == 1
        np.testing.assert_array_equal(state.previous_grad["w"], g["w"])
    assert factor * norm_w < 1
    # The global norm clips the whole tree along its direction.
    c, _ = scale_by_mars(clip_scope="global").update(g, scale_by_mars(clip_scope="global").init(g))
    total = np.sqrt(norm_w**2 + 4.0)
    np.testing.assert_allclose(c["w"], np.asarray(g["w"]) / total, rtol=1e-15)
    np.testing.assert_allclose(c["s"], -2.0 / total, rtol=1e-15)


def test_exact_form_with_previous_params_grad_matches_the_reference():
    want, _ = reference(DEFAULT_HPS, n_steps=60, exact=True)
    got, _ = ours(DEFAULT_HPS, n_steps=60, exact=True)
    _assert_trajectories_close(got, want, rtol=1e-12, atol=1e-14, what="exact")
    approx, _ = reference(DEFAULT_HPS, n_steps=60)
    assert _max_relative_difference(got, approx) > 1e-3  # the two forms are different algorithms


def test_complex_parameters_use_real_norms_and_squared_moduli():
    rng = np.random.default_rng(5)
    x0 = {k: rng.standard_normal(s) + 1j * rng.standard_normal(s) for k, s in SHAPES.items()}
    noise = [{k: 10.0 ** rng.uniform(-1.5, 0.5) * (rng.standard_normal(s) + 1j * rng.standard_normal(s))
              for k, s in SHAPES.items()} for _ in range(21)]

    def grad(x, t):
        return {k: (np.asarray(x[k]) - 0.5) + noise[t][k] for k in SHAPES}

    want, clipped = reference(DEFAULT_HPS, n_steps=20, x0=x0, grad=grad)
    opt = _opt(DEFAULT_HPS)
    x = {k: jnp.asarray(v) for k, v in x0.items()}
    state, update = opt.init(x), jax.jit(opt.update)
    for t in range(1, 21):
        updates, state = update(grad(jax.device_get(x), t), state, x)
        x = jol.apply_updates(x, updates)
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(x[k]), want[t - 1][k], rtol=1e-12, atol=1e-14)
    assert x["w"].dtype == jnp.complex128 and sum(clipped.values()) > 0


# --------------------------------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------------------------------


def _tree():
    x0 = _problem()[0]
    return {k: jnp.asarray(v) for k, v in x0.items()}


def test_jit_equals_eager():
    opt = mars_adamw(0.05, weight_decay=0.01)
    params_e = params_j = _tree()
    state_e = state_j = opt.init(params_e)
    jitted = jax.jit(opt.update)
    for t in range(1, 4):
        g = _grad(jax.device_get(params_e), t)
        u_e, state_e = opt.update(g, state_e, params_e)
        u_j, state_j = jitted(g, state_j, params_j)
        params_e, params_j = jol.apply_updates(params_e, u_e), jol.apply_updates(params_j, u_j)
        for a, b in zip(jax.tree.leaves((u_j, state_j)), jax.tree.leaves((u_e, state_e))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)


def test_vmap_over_learning_rate_and_gamma_equals_a_loop():
    params = _tree()
    grads = [_grad(jax.device_get(params), t) for t in range(1, 6)]
    grads = {k: jnp.stack([g[k] for g in grads]) for k in SHAPES}

    @jax.jit
    def run(lr, gamma, max_norm):
        opt = mars_adamw(lr, gamma=gamma, max_norm=max_norm, weight_decay=0.01)

        def body(carry, g):
            p, state = carry
            updates, state = opt.update(g, state, p)
            return (jol.apply_updates(p, updates), state), None

        return jax.lax.scan(body, (params, opt.init(params)), grads)[0][0]

    lrs, gammas, max_norms = jnp.asarray([0.01, 0.1, 0.3]), jnp.asarray([0.0, 0.025, 1.0]), jnp.asarray([0.5, 1.0, 10.])
    batched = jax.vmap(run)(lrs, gammas, max_norms)
    for i in range(3):
        looped = run(lrs[i], gammas[i], max_norms[i])
        for k in SHAPES:
            np.testing.assert_allclose(batched[k][i], looped[k], rtol=1e-12, atol=1e-14)
    assert not np.allclose(batched["w"][0], batched["w"][1])


def test_init_under_eval_shape_matches_init():
    params = _tree()
    opt = mars_adamw(0.1)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes = jax.eval_shape(opt.init, abstract)
    state = opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(state)):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert isinstance(state[0], ScaleByMarsState)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"b1": 1.0}, "b1"),
        ({"b2": -0.1}, "b2"),
        ({"eps": -1e-8}, "eps"),
        ({"gamma": -0.5}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"max_norm": 0.0}, "max_norm"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"clip_scope": "per_tensor"}, "clip_scope"),
        ({"previous_grad_init": "ones"}, "previous_grad_init"),
    ],
)
def test_bad_hyperparameters_name_the_function(kwargs, match):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=rf"^mars_adamw: .*{match}"):
        mars_adamw(**kwargs)


def test_errors_of_scale_by_mars_and_of_update_name_the_function():
    with pytest.raises(ValueError, match=r"^scale_by_mars: b1"):
        scale_by_mars(b1=-0.1)
    opt, params = mars_adamw(0.1), _tree()
    state = opt.init(params)
    bad = {**params, "w": jnp.zeros((4, 3))}
    with pytest.raises(ValueError, match=r"^mars_adamw: .*previous_params_grad"):
        opt.update(params, state, params, previous_params_grad=bad)
    with pytest.raises(TypeError, match=r"^mars_adamw: .*parameter \['i'\] has dtype int32"):
        opt.init({"i": jnp.zeros(3, jnp.int32)})


def test_fused_layout_refused_per_leaf_and_accepted_with_a_global_clip():
    params = _tree()
    with pytest.raises(ValueError, match=r"^mars_adamw: .*fused tree"):
        mars_adamw(0.1).init(jol.fuse(params))
    for options in ({"clip_scope": "global"}, {"max_norm": None}):
        opt = mars_adamw(0.1, weight_decay=0.01, **options)
        results = []
        for p in (params, jol.fuse(params)):
            state = opt.init(p)
            for t in range(1, 4):
                g = _grad(jax.device_get(p.tree() if isinstance(p, jol.Fused) else p), t)
                g = jol.fuse(g) if isinstance(p, jol.Fused) else g
                updates, state = opt.update(g, state, p)
                p = jol.apply_updates(p, updates)
            results.append(p)
        for k in SHAPES:
            np.testing.assert_allclose(results[1].tree()[k], results[0][k], rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------------------------------
# Oracle: pytorch_optimizer.MARS (float64)
# --------------------------------------------------------------------------------------------------------------------


def _torch_run(hps, n_steps=N_STEPS, **kwargs):
    torch = pytest.importorskip("torch")
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    x0 = _problem()[0]
    params = {k: torch.tensor(x0[k], dtype=torch.float64, requires_grad=True) for k in SHAPES}
    opt = pytorch_optimizer.MARS(
        list(params.values()), lr=LR, betas=(hps["b1"], hps["b2"]), gamma=hps["gamma"], mars_type="adamw",
        weight_decay=hps["weight_decay"], eps=hps["eps"], **kwargs,
    )
    trajectory = []
    for t in range(1, n_steps + 1):
        g = _grad({k: p.detach().numpy() for k, p in params.items()}, t)
        for k, p in params.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        opt.step()
        trajectory.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return trajectory


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_pytorch_optimizer_matches_the_reference_with_its_documented_conventions(eps, foreach):
    hps = {**DEFAULT_HPS, "eps": eps}
    theirs = _torch_run(hps, optimize_1d=True, foreach=foreach)
    want, _ = reference(hps, first="zeros", denominator="pytorch_optimizer")
    _assert_trajectories_close(theirs, want, rtol=1e-12, atol=1e-14, what="pytorch_optimizer")


def test_ours_agrees_with_pytorch_optimizer_where_conventions_match_and_the_differences_show():
    exact_eps = {**DEFAULT_HPS, "eps": 0.0}  # eps = 0: only pytorch_optimizer's 1e-15 inside the root differs
    theirs = _torch_run(exact_eps, optimize_1d=True, foreach=False)
    got, _ = ours(exact_eps, previous_grad_init="zeros")
    _assert_trajectories_close(got, theirs, rtol=1e-9, atol=1e-12, what="eps=0, g_0=0")
    # The paper's first step (c_1 = g_1, our default) is another trajectory.
    paper_first, _ = ours(exact_eps)
    assert _max_relative_difference(paper_first, theirs) > 1e-4
    # A large eps shows the denominators: ours sqrt(v_hat) + eps, theirs sqrt(v_hat) + eps / sqrt(1 - b2^t).
    big_eps = {**DEFAULT_HPS, "eps": 1e-3}
    got, _ = ours(big_eps, previous_grad_init="zeros")
    assert _max_relative_difference(got, _torch_run(big_eps, optimize_1d=True, foreach=False)) > 1e-4


def test_pytorch_optimizer_default_runs_adamw_on_tensors_below_two_dimensions():
    hps = {**DEFAULT_HPS, "eps": 0.0}
    theirs = _torch_run(hps, foreach=False, lr_1d=3e-3, betas_1d=(0.9, 0.95), weight_decay_1d=0.1)
    labels = {k: "mars" if len(s) >= 2 else "adamw" for k, s in SHAPES.items()}
    opt = jol.partition(
        {"mars": _opt(hps, previous_grad_init="zeros"), "adamw": jol.adamw(3e-3, 0.9, 0.95, eps=0.0, weight_decay=0.1)},
        labels,
    )
    x = _tree()
    state, got = opt.init(x), []
    step = jax.jit(opt.update)
    for t in range(1, N_STEPS + 1):
        updates, state = step(_grad(jax.device_get(x), t), state, x)
        x = jol.apply_updates(x, updates)
        got.append(jax.device_get(x))
    _assert_trajectories_close(got, theirs, rtol=1e-9, atol=1e-12, what="optimize_1d=False")
    all_mars, _ = ours(hps, previous_grad_init="zeros")
    assert _max_relative_difference(all_mars, theirs) > 1e-3  # MARS on every leaf (Algorithm 2) is another run
