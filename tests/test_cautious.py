"""Cautious optimizers (Liang et al., 2024): ``cautious``, ``cautious_adamw``, ``cautious_lion``.

- ``cautious_adamw`` against a NumPy reference written from the paper's C-AdamW (mask on the Adam direction,
  ``n / (nnz + eps)`` per tensor, decoupled decay of the pre-step parameters, unmasked), 200 float64 steps, in
  both normalizations;
- against ``pytorch_optimizer`` 4.1.0 (an independent implementation; skipped without torch): ``Lion``,
  ``AdEMAMix`` with ``alpha=0`` (exactly AdamW) and ``ADOPT``, each with ``cautious=True``, 200 float64 steps.
  Its ``apply_cautious`` is ``mask * numel / (sum(mask) + 1)``: our default ``"count"`` convention; the
  ``"clamped_mean"`` convention (the authors' current ``c_adamw.py``) differs, by ``(n + 1) / n`` on a step
  where every sign agrees, and the test shows it;
- behaviour: around sgd / lion / adam the update is the inner step masked and rescaled and the state is the
  inner state; jit equals eager; vmap over the learning rate and ``cautious_eps`` equals a loop; ``init``
  under ``eval_shape``; complex leaves; NaN propagation; ``eps = 0``; errors name the function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_lite as jol
from jaxopt_lite.wrappers.cautious import cautious, cautious_adamw, cautious_lion

N_STEPS = 200
SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


# --------------------------------------------------------------------------- #
# A small problem whose gradients change sign (so the mask is often partial)
# --------------------------------------------------------------------------- #


def _problem():
    rng = np.random.default_rng(0)
    make = lambda: {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    x0, target, freq, phase = make(), make(), make(), make()
    curv = {k: 0.5 + np.abs(c) for k, c in make().items()}
    return x0, curv, target, freq, phase


def _grad_np(x, k, curv, target, freq, phase):
    return {n: curv[n] * (x[n] - target[n]) + 0.5 * np.sin(k * freq[n] + phase[n]) for n in x}


def _grad_jnp(x, k, curv, target, freq, phase):
    return {n: curv[n] * (x[n] - target[n]) + 0.5 * jnp.sin(k * freq[n] + phase[n]) for n in x}


def _scan(opt, n_steps):
    """Params after each step of ``opt`` on the problem (stacked), by ``lax.scan``."""
    x0, curv, target, freq, phase = jax.tree.map(jnp.asarray, _problem())

    def body(carry, k):
        x, state = carry
        g = _grad_jnp(x, k.astype(jnp.float64), curv, target, freq, phase)
        u, state = opt.update(g, state, x)
        x = jol.apply_updates(x, u)
        return (x, state), x

    return jax.lax.scan(body, (x0, opt.init(x0)), jnp.arange(n_steps))[1]


def _steps(xs):
    n_steps = len(xs["s"])
    return [{n: np.asarray(xs[n][k]) for n in SHAPES} for k in range(n_steps)]


def _trajectory(opt, n_steps=N_STEPS):
    return _steps(jax.jit(lambda: _scan(opt, n_steps))())


def _assert_trajectories_close(ours, ref, rtol, what):
    """Every step, every leaf: ``max |a - b| <= rtol max |b|`` (relative to the leaf's scale, so an entry that
    passes near 0 is not held to a relative error its rounding cannot meet)."""
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        for n in SHAPES:
            a_n, b_n = np.asarray(a[n]), np.asarray(b[n])
            err = np.max(np.abs(a_n - b_n)) / np.max(np.abs(b_n))
            assert err <= rtol, f"{what}: step {k + 1}, leaf {n}: relative error {err:.3g} > {rtol:g}"


# --------------------------------------------------------------------------- #
# The NumPy reference, from the paper
# --------------------------------------------------------------------------- #


def _scale(phi, eps, normalization):
    if normalization == "count":
        return phi.size / (phi.sum() + eps)
    return 1.0 / max(phi.mean(), eps)


def _c_adamw_numpy(lr, b1, b2, eps, weight_decay, cautious_eps, normalization, n_steps=N_STEPS):
    """C-AdamW: ``u = m_hat / (sqrt(v_hat) + eps)``, ``phi = 1[u g > 0]``, ``p <- p - lr (u phi s + wd p)``
    with ``s = n / (sum(phi) + cautious_eps)`` (or ``1 / max(mean(phi), cautious_eps)``) per tensor."""
    x, curv, target, freq, phase = _problem()
    m = {n: np.zeros(s) for n, s in SHAPES.items()}
    v = {n: np.zeros(s) for n, s in SHAPES.items()}
    out, partial = [], 0
    for t in range(1, n_steps + 1):
        g = _grad_np(x, float(t - 1), curv, target, freq, phase)
        new = {}
        for n in SHAPES:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            u = (m[n] / (1 - b1**t)) / (np.sqrt(v[n] / (1 - b2**t)) + eps)
            phi = (u * g[n] > 0).astype(np.float64)
            partial += 0 < phi.sum() < phi.size
            new[n] = x[n] - lr * (u * phi * _scale(phi, cautious_eps, normalization) + weight_decay * x[n])
        x = new
        out.append({n: x[n].copy() for n in SHAPES})
    return out, partial


@functools.partial(jax.jit, static_argnames="normalization")
def _c_adamw_trajectory(hps, normalization):
    """``cautious_adamw`` built inside ``jit`` from traced hyperparameters: one compilation per normalization."""
    opt = cautious_adamw(
        hps["lr"],
        hps["b1"],
        hps["b2"],
        hps["eps"],
        weight_decay=hps["weight_decay"],
        cautious_eps=hps["cautious_eps"],
        normalization=normalization,
    )
    return _scan(opt, N_STEPS)


def test_cautious_adamw_matches_numpy_reference_of_the_paper():
    hps = {"lr": 0.05, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "weight_decay": 0.1}
    for normalization, cautious_eps in (("count", 1.0), ("clamped_mean", 1e-3), ("clamped_mean", 0.4)):
        ref, partial = _c_adamw_numpy(**hps, cautious_eps=cautious_eps, normalization=normalization)
        assert partial > 50, f"the mask was partial on only {partial} leaf-steps: the test would not test it"
        ours = _c_adamw_trajectory({**hps, "cautious_eps": cautious_eps}, normalization)
        _assert_trajectories_close(_steps(ours), ref, 1e-12, f"cautious_adamw {normalization} {cautious_eps}")


def test_defaults_are_the_papers_count_with_eps_one():
    params, grads = _small()
    for default, explicit in (
        (cautious_adamw(0.1), cautious_adamw(0.1, cautious_eps=1.0, normalization="count")),
        (cautious(jol.adam(0.1)), cautious(jol.adam(0.1), 1.0, normalization="count")),
    ):
        u_d, _ = default.update(grads[0], default.init(params), params)
        u_e, _ = explicit.update(grads[0], explicit.init(params), params)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), u_d, u_e)
    # clamped_mean's default eps 1e-3 caps the scale at 1000: one of 5000 signs agrees
    clamped = cautious(jol.stateless(lambda u, p: -jnp.ones_like(u)), normalization="clamped_mean")
    g = jnp.concatenate([jnp.ones(1), -jnp.ones(4999)])
    step, _ = clamped.update(g, clamped.init(g))
    np.testing.assert_allclose(step[0], -1000.0, rtol=1e-12)
    assert np.all(step[1:] == 0)


# --------------------------------------------------------------------------- #
# pytorch_optimizer as an oracle
# --------------------------------------------------------------------------- #


def _torch_trajectory(make_opt, n_steps=N_STEPS):
    torch = pytest.importorskip("torch")
    x0, curv, target, freq, phase = _problem()
    params = {n: torch.tensor(x0[n], dtype=torch.float64, requires_grad=True) for n in SHAPES}
    opt = make_opt(list(params.values()))
    out = []
    for k in range(n_steps):
        x = {n: p.detach().numpy().copy() for n, p in params.items()}
        g = _grad_np(x, float(k), curv, target, freq, phase)
        for n, p in params.items():
            p.grad = torch.tensor(g[n], dtype=torch.float64)
        opt.step()
        out.append({n: p.detach().numpy().copy() for n, p in params.items()})
    return out


def _pytorch_optimizer():
    pytest.importorskip("torch")
    return pytest.importorskip("pytorch_optimizer")


LION = {"lr": 0.01, "b1": 0.9, "b2": 0.99, "wd": 0.1}


@functools.cache
def _lion_runs():
    """``pytorch_optimizer.Lion(cautious=True)`` and ``cautious_lion`` in both normalizations, 200 steps."""
    po = _pytorch_optimizer()
    lr, b1, b2, wd = LION["lr"], LION["b1"], LION["b2"], LION["wd"]
    theirs = _torch_trajectory(
        lambda ps: po.Lion(ps, lr=lr, betas=(b1, b2), weight_decay=wd, weight_decouple=True, cautious=True)
    )

    @functools.partial(jax.jit, static_argnames="normalization")
    def ours(normalization):
        return _scan(cautious_lion(lr, b1, b2, weight_decay=wd, normalization=normalization), N_STEPS)

    return theirs, _steps(ours("count")), _steps(ours("clamped_mean"))


def test_cautious_lion_equals_pytorch_optimizer_lion():
    theirs, count, _ = _lion_runs()
    _assert_trajectories_close(count, theirs, 1e-12, "C-Lion vs pytorch_optimizer.Lion(cautious=True)")


def test_cautious_adamw_equals_pytorch_optimizer_ademamix_without_slow_momentum():
    """``AdEMAMix(alpha=0)`` is AdamW (its slow momentum has weight 0); with ``cautious=True`` it masks the
    first moment (same signs as the Adam direction) and decays the weights before the step, unmasked."""
    po = _pytorch_optimizer()
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.99, 1e-8, 0.1
    ref = _torch_trajectory(
        lambda ps: po.AdEMAMix(
            ps,
            lr=lr,
            betas=(b1, b2, 0.9999),
            alpha=0.0,
            eps=eps,
            weight_decay=wd,
            weight_decouple=True,
            foreach=False,
            cautious=True,
        )
    )
    _assert_trajectories_close(
        _trajectory(cautious_adamw(lr, b1, b2, eps, weight_decay=wd)), ref, 1e-12, "C-AdamW vs AdEMAMix(alpha=0)"
    )


def test_cautious_wrapper_around_adopt_equals_pytorch_optimizer_adopt():
    """The wrapper around a whole alias (no decay): ``cautious(adopt)`` vs ``ADOPT(cautious=True)``, clipping
    off in both (pytorch_optimizer clips with ``step**0.25`` counted from 1, Optax and we from 0)."""
    po = _pytorch_optimizer()
    lr, b1, b2, eps = 0.05, 0.9, 0.99, 1e-6
    ref = _torch_trajectory(lambda ps: po.ADOPT(ps, lr=lr, betas=(b1, b2), eps=eps, clip_lambda=None, cautious=True))
    ours = _trajectory(cautious(jol.contrib.adopt(lr, b1, b2, eps, use_clipping=False)))
    _assert_trajectories_close(ours, ref, 1e-12, "cautious(adopt) vs ADOPT(cautious=True)")


def test_clamped_mean_convention_differs_from_pytorch_optimizer_as_documented():
    """pytorch_optimizer scales by ``n / (nnz + 1)``; ``"clamped_mean"`` by ``1 / max(nnz / n, 1e-3)``. On
    Lion's first step every sign agrees (``u = sign(g)``): their masked step is ``n / (n + 1)`` of ours, half
    for the scalar (the decay ``lr wd p`` is the same in both); our default ``"count"`` is theirs."""
    theirs, _, clamped = _lion_runs()
    x0 = _problem()[0]
    for n in SHAPES:
        size, decay = np.size(x0[n]), -LION["lr"] * LION["wd"] * x0[n]
        step_theirs, step_clamped = theirs[0][n] - x0[n] - decay, clamped[0][n] - x0[n] - decay
        np.testing.assert_allclose(np.abs(step_clamped), LION["lr"], rtol=1e-10)  # the inner step, unchanged
        np.testing.assert_allclose(step_theirs, step_clamped * size / (size + 1), rtol=1e-10)
    assert not np.allclose(theirs[-1]["s"], clamped[-1]["s"], rtol=1e-3)
    assert not np.allclose(theirs[-1]["w"], clamped[-1]["w"], rtol=1e-3)


# --------------------------------------------------------------------------- #
# Behaviour
# --------------------------------------------------------------------------- #


def _small():
    rng = np.random.default_rng(1)
    params = {n: jnp.asarray(rng.standard_normal(s)) for n, s in SHAPES.items()}
    grads = [{n: jnp.asarray(rng.standard_normal(s)) for n, s in SHAPES.items()} for _ in range(4)]
    return params, grads


def _expected(step, g, eps=1.0):
    step, g = np.asarray(step), np.asarray(g)
    keep = (-step * g > 0).astype(np.float64)
    return step * keep * (keep.size / (keep.sum() + eps))


def test_wraps_sgd_lion_adam_masks_their_steps_and_keeps_their_state():
    params, grads = _small()
    partial = 0
    for name, inner in {
        "sgd": jol.sgd(0.1),
        "sgd_momentum": jol.sgd(0.1, momentum=0.9),
        "lion": jol.lion(0.01, weight_decay=0.0),
        "adam": jol.adam(0.1),
    }.items():
        wrapped = cautious(inner)
        s_in, s_c = inner.init(params), wrapped.init(params)
        assert jax.tree.structure(s_in) == jax.tree.structure(s_c), name
        for g in grads:
            u_in, s_in = inner.update(g, s_in, params)
            u_c, s_c = wrapped.update(g, s_c, params, unused_extra_arg=1.0)
            for a, b in zip(jax.tree.leaves(s_in), jax.tree.leaves(s_c)):
                np.testing.assert_array_equal(a, b, err_msg=name)
            for n in SHAPES:
                np.testing.assert_allclose(u_c[n], _expected(u_in[n], g[n]), rtol=1e-14, atol=0, err_msg=name)
                kept = np.sum(-np.asarray(u_in[n]) * np.asarray(g[n]) > 0)
                partial += 0 < kept < np.size(g[n])
    assert partial > 5


def test_jit_equals_eager_and_init_under_eval_shape():
    params, grads = _small()
    for opt in (
        cautious_adamw(0.1, weight_decay=0.1),
        cautious(jol.sgd(0.1, momentum=0.9), normalization="clamped_mean"),
    ):
        state = opt.init(params)
        abstract = jax.eval_shape(opt.init, params)
        assert jax.tree.structure(abstract) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
            assert (a.shape, a.dtype) == (b.shape, b.dtype)
        jitted = jax.jit(opt.update)
        s_eager, s_jit = state, state
        for g in grads:
            u_e, s_eager = opt.update(g, s_eager, params)
            u_j, s_jit = jitted(g, s_jit, params)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-300), u_e, u_j)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-300), s_eager, s_jit)


def _final(lr, ceps, params, grads):
    opt = cautious_adamw(lr, weight_decay=0.1, cautious_eps=ceps)
    p, s = params, opt.init(params)
    for g in grads:
        u, s = opt.update(g, s, p)
        p = jol.apply_updates(p, u)
    return p


def test_vmap_over_learning_rate_and_cautious_eps_equals_loop_and_grads_are_finite():
    params, grads = _small()
    final = jax.jit(lambda lr, ce: _final(lr, ce, params, grads))
    lrs, cepss = jnp.asarray([0.01, 0.1, 0.1]), jnp.asarray([1.0, 1.0, 3.0])
    batched = jax.jit(jax.vmap(final))(lrs, cepss)
    looped = [final(lr, ce) for lr, ce in zip(lrs, cepss)]
    for j, res in enumerate(looped):
        for n in SHAPES:
            np.testing.assert_allclose(batched[n][j], res[n], rtol=1e-12, err_msg=f"row {j}, {n}")
    assert not np.allclose(batched["s"][1], batched["s"][2])  # cautious_eps matters
    loss = lambda lr, ce: sum(jnp.sum(x**2) for x in jax.tree.leaves(final(lr, ce)))
    d_lr, d_eps = jax.jit(jax.grad(loss, argnums=(0, 1)))(0.1, 1.0)
    assert np.isfinite(d_lr) and np.isfinite(d_eps) and d_lr != 0 and d_eps != 0


def test_complex_leaves_use_the_real_part_of_conj_g_times_the_descent():
    g = jnp.asarray([1 + 1j, 1 + 0j, 1j, 2 + 0j])
    step = jnp.asarray([-0.1 - 0.1j, 0.1j, -0.1j, 0.1])  # Re(conj(g) (-step)) = 0.2, 0, 0.1, -0.2
    opt = cautious(jol.stateless(lambda u, p: step))
    out, _ = opt.update(g, opt.init(g))
    np.testing.assert_allclose(out, np.asarray(step) * np.asarray([1, 0, 1, 0]) * 4 / 3, rtol=1e-15)
    assert out.dtype == step.dtype


def test_nan_propagates_eps_zero_bfloat16_and_empty_leaves():
    g4 = jnp.arange(1.0, 5.0)
    nan_step = cautious(jol.stateless(lambda u, p: u.at[0].set(jnp.nan)))
    uphill = jol.stateless(lambda u, p: u)  # every sign disagrees

    def total_uphill(eps):
        tx = cautious(uphill, eps)
        return jnp.sum(tx.update(g4, tx.init(g4))[0])

    def descent(normalization):
        tx = cautious(jol.sgd(1.0), 0.0, normalization=normalization)  # every sign agrees
        return tx.update(g4, tx.init(g4))[0]

    big = {"big": jnp.ones(1000, jnp.bfloat16), "empty": jnp.ones((0, 2), jnp.float32)}
    sgd = cautious(jol.sgd(1.0))

    @jax.jit  # one compilation for all of it
    def probe():
        return {
            "nan": nan_step.update(g4, nan_step.init(g4))[0],
            "uphill": total_uphill(0.0),
            "d_uphill": jax.grad(total_uphill)(0.0),
            "count": descent("count"),
            "clamped_mean": descent("clamped_mean"),
            "big": sgd.update(big, sgd.init(big))[0],
        }

    out = probe()
    assert np.isnan(out["nan"][0]) and np.all(np.isfinite(out["nan"][1:]))  # a NaN step stays NaN
    assert out["uphill"] == 0 and np.isfinite(out["d_uphill"])  # eps = 0, nothing kept: 0, finite derivative
    for normalization in ("count", "clamped_mean"):  # eps = 0, everything kept: the inner step unchanged
        np.testing.assert_allclose(out[normalization], -g4, rtol=1e-15)
    # bfloat16: the count is exact beyond 256 entries, the dtype kept; empty leaves pass
    assert out["big"]["big"].dtype == jnp.bfloat16 and out["big"]["empty"].shape == (0, 2)
    np.testing.assert_allclose(np.asarray(out["big"]["big"], np.float64), -float(jnp.bfloat16(1000 / 1001)))


def test_errors_name_the_function():
    adam = jol.adam(0.1)
    with pytest.raises(TypeError, match="^cautious: inner"):
        cautious(object())
    with pytest.raises(TypeError, match="^cautious: inner"):
        cautious(lambda g: g)
    with pytest.raises(ValueError, match="^cautious: eps"):
        cautious(adam, -1.0)
    with pytest.raises(ValueError, match="^cautious: eps"):
        cautious(adam, float("nan"))
    with pytest.raises(ValueError, match="^cautious: normalization"):
        cautious(adam, normalization="mean")
    with pytest.raises(TypeError, match="^cautious: negated"):
        cautious(adam, negated="yes")
    with pytest.raises(ValueError, match="^cautious_adamw: cautious_eps"):
        cautious_adamw(0.1, cautious_eps=-0.5)
    with pytest.raises(ValueError, match="^cautious_lion: normalization"):
        cautious_lion(0.1, normalization="bogus")
    params, grads = _small()
    fused = jol.fuse(params)
    with pytest.raises(ValueError, match="^cautious acts on each parameter leaf"):
        cautious(adam).init(fused)
    state = adam.init(params)
    with pytest.raises(ValueError, match="^cautious acts on each parameter leaf"):
        cautious(adam).update(jol.fuse(grads[0]), adam.init(fused))
    with pytest.raises(ValueError, match="^cautious: the inner"):
        cautious(jol.stateless(lambda u, p: {"w": u["w"]})).update(grads[0], state)

    # a negative eps passes unchecked only when traced (never forced to the host)
    def traced(e):
        tx = cautious(jol.sgd(0.1), e)
        return tx.update(grads[0], tx.init(params))[0]

    jax.jit(traced)(-1.0)
