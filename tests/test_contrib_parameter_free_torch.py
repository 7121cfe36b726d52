"""Schedule-free and Prodigy against the authors' PyTorch packages, in float64, step by step.

Conventions (they agree here; the tests pin the settings where they do):

- ``schedulefree.SGDScheduleFree`` / ``AdamWScheduleFree`` (r=0, no warmup) equal
  ``schedule_free_sgd`` / ``schedule_free_adamw``. With a warmup they differ: the authors use
  ``lr (k+1) / warmup_steps`` for both the step and the averaging weight at step ``k`` (from 0);
  Optax and we step with ``lr k / warmup_steps`` and weight with ``lr (k+1) / warmup_steps``.
- ``prodigyopt.Prodigy(use_bias_correction=True)`` equals ``prodigy``; the authors' default is
  ``use_bias_correction=False`` (``dlr = d lr``), and they skip the whole step while the
  denominator ``||s||_1`` is 0, where we keep ``d`` and take the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_lite import contrib

torch = pytest.importorskip("torch")

N_STEPS = 200


def _grads(x, k, curv, target, freq):
    return curv * (x - target) + 0.1 * np.sin(k * freq)


def _problem():
    rng = np.random.default_rng(3)
    shapes = [(3,), (2, 3)]
    make = lambda: [rng.standard_normal(s) for s in shapes]  # noqa: E731
    x0, target, freq = make(), make(), make()
    curv = [0.5 + np.abs(c) for c in make()]
    return x0, curv, target, freq


def _run_torch(make_opt):
    x0, curv, target, freq = _problem()
    params = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in x0]
    opt = make_opt(params)
    if hasattr(opt, "train"):
        opt.train()
    out = []
    for k in range(N_STEPS):
        for p, c, t, w in zip(params, curv, target, freq):
            p.grad = torch.tensor(_grads(p.detach().numpy(), k, c, t, w))
        opt.step()
        out.append([p.detach().numpy().copy() for p in params])
    return out


def _run_ours(opt):
    x0, curv, target, freq = (list(map(jnp.asarray, v)) for v in _problem())

    def body(carry, k):
        x, state = carry
        g = [c * (x_ - t) + 0.1 * jnp.sin(k * w) for x_, c, t, w in zip(x, curv, target, freq)]
        u, state = opt.update(g, state, x)
        x = [a + b for a, b in zip(x, u)]
        return (x, state), x

    _, xs = jax.jit(lambda: jax.lax.scan(body, (x0, opt.init(x0)), jnp.arange(N_STEPS, dtype=jnp.float64)))()
    return [[np.asarray(leaf[k]) for leaf in xs] for k in range(N_STEPS)]


def _assert_same(ours, theirs, rtol):
    for k, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.max(np.abs(y)), err_msg=f"step {k + 1}")


def test_schedule_free_sgd_matches_schedulefree():
    schedulefree = pytest.importorskip("schedulefree")
    theirs = _run_torch(lambda p: schedulefree.SGDScheduleFree(p, lr=0.1, momentum=0.8, weight_decay=0.01))
    ours = _run_ours(contrib.schedule_free_sgd(0.1, b1=0.8, weight_decay=0.01))
    _assert_same(ours, theirs, 1e-11)


def test_schedule_free_adamw_matches_schedulefree():
    schedulefree = pytest.importorskip("schedulefree")
    theirs = _run_torch(
        lambda p: schedulefree.AdamWScheduleFree(p, lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    )
    ours = _run_ours(contrib.schedule_free_adamw(0.05, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01))
    _assert_same(ours, theirs, 1e-11)


def test_prodigy_matches_prodigyopt_with_bias_correction():
    prodigyopt = pytest.importorskip("prodigyopt")
    theirs = _run_torch(
        lambda p: prodigyopt.Prodigy(p, lr=1.0, betas=(0.9, 0.999), weight_decay=0.01, use_bias_correction=True)
    )
    ours = _run_ours(contrib.prodigy(1.0, betas=(0.9, 0.999), weight_decay=0.01))
    _assert_same(ours, theirs, 1e-10)
