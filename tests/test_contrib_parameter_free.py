"""Parameter-free and contrib optimizers: schedule-free, Prodigy, D-Adapt AdamW, DoG/DoWG/LDoG,
Mechanic, COCOB, MoMo, ACProp, MADGRAD.

Each configuration runs 200 float64 steps on a stochastic quadratic, in one jitted ``lax.scan``
for this library and one for Optax 0.2.8, on two pytrees; the trajectories must agree with
Optax's to ~1e-12 and, on the first tree, with a NumPy reference written here from the paper's
update rule (the tree flattened to one vector: every global quantity is over all leaves).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol
from jaxopt_lite import contrib

N_STEPS = 200
RTOL = 1e-11
# With a warmup, Optax's schedule-free runs differ from ours and from the float64 NumPy reference
# (which ours matches to 1e-9) at about 1e-8: Optax's warmup schedule value, not the update rule.
OPTAX_RTOL = {
    "schedule_free_sgd_warmup_wd": 1e-6,
    "schedule_free_adamw": 1e-6,
    # 2.5e-9 to 8e-9 apart after N_STEPS: more than one rounding, far less than a convention difference
    # (both take jnp.cbrt of the same sum); the order of float64 operations differs.
    "madgrad": 1e-7,
    "madgrad_wd": 1e-7,
    "mechanize_adam": 1e-9,  # over its first OPTAX_STEPS only, see there
}
# Mechanic with an Adam base on tree a amplifies rounding: both runs are bit-identical to step 40; the first
# difference (2e-15, step 60: the order of float64 operations) grows about tenfold every 8 steps, to 6e-7 at
# step 150 and 1e-4 at step 200. The update rule is the same (with the SGD base, or before the growth, the
# runs agree to 1e-11 and match the NumPy reference), so the comparison stops before the amplification.
OPTAX_STEPS = {"mechanize_adam": 110}
# Tree b has a scalar leaf whose size drops well below the others': relative to it, the same float64
# operation-order differences as on tree a (madgrad: both take jnp.cbrt of the same sum) and Optax's warmup
# value (schedule-free AdamW) reach 1.2e-6 over the 200 steps. Not shown to be more than that.
OPTAX_RTOL_TREE_B = {"madgrad": 1e-6, "madgrad_wd": 1e-6, "schedule_free_adamw": 5e-6}
# Mechanic with the SGD base against its NumPy reference: bit-identical to step 30, then rounding (4e-17 at
# step 40) grows to 2e-11 at step 80, 2e-7 at 150 and 8e-6 at 190, as with the Adam base against Optax.
REFERENCE_STEPS = {"mechanize_sgd": 90}


# --------------------------------------------------------------------------- #
# The problem: f_k(x) = sum 0.5 c (x - t)^2 + 0.1 sin(k w) x, gradient c (x - t) + 0.1 sin(k w)
# --------------------------------------------------------------------------- #


def _tree_a(rng):
    return {"a": rng.standard_normal(3), "b": rng.standard_normal((2, 3))}


def _tree_b(rng):
    return [rng.standard_normal(4), {"x": rng.standard_normal((2, 2)), "y": rng.standard_normal(())}]


def _problem(make, seed):
    rng = np.random.default_rng(seed)
    x0, target, freq = make(rng), make(rng), make(rng)
    curv = jax.tree.map(lambda v: 0.5 + np.abs(v), make(rng))
    return x0, curv, target, freq


PROBLEMS = {"a": _problem(_tree_a, 0), "b": _problem(_tree_b, 1)}


def _grad_and_value(x, k, curv, target, freq):
    g = jax.tree.map(lambda x_, c, t, w: c * (x_ - t) + 0.1 * jnp.sin(k * w), x, curv, target, freq)
    f = sum(
        jnp.sum(0.5 * c * (x_ - t) ** 2 + 0.1 * jnp.sin(k * w) * x_)
        for x_, c, t, w in zip(*(jax.tree.leaves(v) for v in (x, curv, target, freq)))
    )
    return g, f + 1.0


def _trajectory(opt, problem, pass_value=False):
    x0, curv, target, freq = jax.tree.map(jnp.asarray, problem)

    def body(carry, k):
        x, state = carry
        g, f = _grad_and_value(x, k, curv, target, freq)
        extra = {"value": f} if pass_value else {}
        u, state = opt.update(g, state, x, **extra)
        x = jax.tree.map(lambda a, b: a + b, x, u)
        return (x, state), x

    (_, state), xs = jax.lax.scan(body, (x0, opt.init(x0)), jnp.arange(N_STEPS, dtype=jnp.float64))
    return xs, state


# name -> (constructor taking the contrib module, ours or Optax's; whether update needs the loss value)
CONFIGS = {
    "schedule_free_sgd": (lambda m: m.schedule_free_sgd(0.1), False),
    "schedule_free_sgd_warmup_wd": (
        lambda m: m.schedule_free_sgd(0.2, warmup_steps=10, b1=0.8, weight_decay=0.01),
        False,
    ),
    "schedule_free_adamw": (lambda m: m.schedule_free_adamw(0.05, warmup_steps=5, weight_decay=0.01), False),
    "prodigy": (lambda m: m.prodigy(weight_decay=0.01), False),
    "prodigy_safeguard": (lambda m: m.prodigy(0.5, betas=(0.8, 0.99), beta3=0.9, safeguard_warmup=True), False),
    "dadapt_adamw": (lambda m: m.dadapt_adamw(weight_decay=0.01), False),
    "dog": (lambda m: m.dog(), False),
    "dog_learning_rate": (lambda m: m.dog(0.5, init_step=("learning_rate", 0.01), weight_decay=1e-3), False),
    "dog_distance": (lambda m: m.dog(init_step=("distance", 1e-3)), False),
    "dowg": (lambda m: m.dowg(), False),
    "dowg_wd": (lambda m: m.dowg(0.5, init_estim_sq_dist=1e-3, weight_decay=1e-3), False),
    "mechanize_sgd": (lambda m: m.mechanize(_top(m).sgd(1e-2)), False),
    "mechanize_adam": (lambda m: m.mechanize(_top(m).adam(1e-2), weight_decay=0.0, num_betas=3), False),
    "cocob": (lambda m: m.cocob(), False),
    "cocob_wd": (lambda m: m.cocob(0.5, alpha=10.0, weight_decay=0.01), False),
    "momo": (lambda m: m.momo(0.5), True),
    "momo_adapt": (lambda m: m.momo(0.5, lower_bound=-5.0, weight_decay=0.01, adapt_lower_bound=True), True),
    "momo_adam": (lambda m: m.momo_adam(0.1), True),
    "momo_adam_adapt": (lambda m: m.momo_adam(0.1, lower_bound=-5.0, weight_decay=0.01, adapt_lower_bound=True), True),
    "acprop": (lambda m: m.acprop(0.01), False),
    "acprop_wd": (lambda m: m.acprop(0.01, b1=0.5, weight_decay=0.01), False),
    "madgrad": (lambda m: m.madgrad(0.01), False),
    "madgrad_wd": (lambda m: m.madgrad(0.02, momentum=0.5, weight_decay=0.01), False),
    "ldog": (lambda m: _ldog(m), False),
}


def _top(module):
    return jol if module is contrib else optax


def _ldog(module):
    top = _top(module)
    return top.chain(top.scale_by_distance_over_gradients(param_dtype=jnp.float64), top.scale(-0.5))


@functools.cache
def trajectories(name, problem):
    make, pass_value = CONFIGS[name]
    ours = jax.jit(lambda: _trajectory(make(contrib), PROBLEMS[problem], pass_value))()
    theirs = jax.jit(lambda: _trajectory(make(optax.contrib), PROBLEMS[problem], pass_value))()
    return ours, theirs


def _assert_close(actual, expected, rtol, what):
    for i, (a, e) in enumerate(zip(jax.tree.leaves(actual), jax.tree.leaves(expected))):
        a, e = np.asarray(a), np.asarray(e)
        # Relative to the leaf's size at that step, floored at 1% of its largest size along the trajectory:
        # a scalar leaf passing near 0 would otherwise turn rounding into an unbounded relative error.
        scale = np.maximum(np.max(np.abs(e), axis=tuple(range(1, e.ndim)), keepdims=True), 1e-2 * np.max(np.abs(e)))
        scale = scale + 1e-30
        err = np.max(np.abs(a - e) / scale)
        assert err <= rtol, f"{what}: leaf {i} relative error {err:.3g} > {rtol:g}"


@pytest.mark.parametrize("problem", ["a", "b"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_optax_step_by_step(name, problem):
    if name == "ldog" and problem == "b":
        pytest.skip("Optax's LDoG returns a (1,)-shaped update for a scalar parameter (tree b's 'y'), so its "
                    "trajectory cannot run; ours keeps the shape () (tree a compares the two)")
    (ours, _), (theirs, _) = trajectories(name, problem)
    assert np.all(np.isfinite(np.concatenate([np.ravel(x) for x in jax.tree.leaves(ours)])))
    steps = OPTAX_STEPS.get(name, N_STEPS)
    ours_prefix, theirs_prefix = (jax.tree.map(lambda x: x[:steps], t) for t in (ours, theirs))
    rtol = OPTAX_RTOL_TREE_B.get(name) if problem == "b" and name in OPTAX_RTOL_TREE_B else OPTAX_RTOL.get(name, RTOL)
    _assert_close(ours_prefix, theirs_prefix, rtol, f"{name} vs optax.contrib on tree {problem}")
    moved = max(np.max(np.abs(np.asarray(x)[-1] - np.asarray(x)[0])) for x in jax.tree.leaves(ours))
    assert moved > 1e-3, f"{name}: the parameters barely moved ({moved:g})"


# --------------------------------------------------------------------------- #
# NumPy references from the papers (one flat vector)
# --------------------------------------------------------------------------- #


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


def _numpy_run(step, state, n=N_STEPS):
    x0, curv, target, freq = (_flat(v) for v in PROBLEMS["a"])
    x, xs = x0.copy(), []
    for k in range(n):
        g = curv * (x - target) + 0.1 * np.sin(k * freq)
        f = np.sum(0.5 * curv * (x - target) ** 2 + 0.1 * np.sin(k * freq) * x) + 1.0
        x = step(x, g, f, k, state)
        xs.append(x.copy())
    return np.stack(xs)


def ref_schedule_free(lr_fn, b1, wd, adam=None, power=2.0):
    """Defazio et al. 2024, Algorithm 1 (y, z stored; x recovered), base SGD or Adam without momentum."""
    st = {"z": None, "wsum": 0.0, "max_lr": 0.0, "v": None}

    def step(y, g, f, k, st):
        if st["z"] is None:
            st["z"], st["v"] = y.copy(), np.zeros_like(y)
        lr_w, lr_b = lr_fn(k + 1), lr_fn(k)  # the weights use the count from 1, the base optimizer from 0
        st["max_lr"] = max(st["max_lr"], lr_w)
        w = st["max_lr"] ** power
        st["wsum"] += w
        c = w / st["wsum"]
        if adam is None:
            direction = g + wd * y
        else:
            b2, eps = adam
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            direction = g / (np.sqrt(st["v"] / (1 - b2 ** (k + 1))) + eps) + wd * y
        x = (y - (1 - b1) * st["z"]) / b1
        st["z"] = st["z"] - lr_b * direction
        x = (1 - c) * x + c * st["z"]
        return b1 * x + (1 - b1) * st["z"]

    return step, st


def _warmup(peak, steps):
    return lambda k: peak * min(k, steps) / steps if steps else peak


def ref_prodigy(lr, b1, b2, b3, eps, d0, wd, safeguard):
    """Mishchenko & Defazio 2024, Algorithm 4 (Adam version) with Adam's bias correction in dlr."""
    st = {"k": 0}

    def step(x, g, f, k, st):
        if st["k"] == 0:
            st.update(x0=x.copy(), m=0 * x, v=0 * x, s=0 * x, r=0.0, d=d0)
        st["k"] += 1
        t, d = st["k"], st["d"]
        dlr = d * lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        st["m"] = b1 * st["m"] + (1 - b1) * d * g
        st["v"] = b2 * st["v"] + (1 - b2) * d * d * g * g
        st["r"] = b3 * st["r"] + (d / d0) * dlr * g @ (st["x0"] - x)
        st["s"] = b3 * st["s"] + (d if safeguard else dlr) * d / d0 * g
        st["d"] = max(d, st["r"] / np.abs(st["s"]).sum())
        return x - dlr * wd * x - dlr * st["m"] / (np.sqrt(st["v"]) + st["d"] * eps)

    return step, st


def ref_dadapt_adamw(lr, b1, b2, eps, d0, wd):
    """Defazio & Mishchenko 2023, Algorithm 3 (Adam), with Adam's bias correction in dlr."""
    st = {"k": 0}
    sb2 = np.sqrt(b2)

    def step(x, g, f, k, st):
        if st["k"] == 0:
            st.update(m=0 * x, v=0 * x, s=0 * x, r=0.0, d=d0)
        st["k"] += 1
        t, d = st["k"], st["d"]
        dlr = d * lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        st["r"] = sb2 * st["r"] + (1 - sb2) * dlr * g @ (st["s"] / (np.sqrt(st["v"]) + eps))
        st["m"] = b1 * st["m"] + (1 - b1) * dlr * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        st["s"] = sb2 * st["s"] + (1 - sb2) * dlr * g
        st["d"] = max(d, st["r"] / ((1 - sb2) * np.abs(st["s"]).sum()))
        return x - st["m"] / (np.sqrt(st["v"]) + eps) - wd * dlr * x

    return step, st


def ref_dog(lr, kind, value, eps, wd):
    """Ivgi et al. 2023, Algorithm 1: eta_t = rbar_t / sqrt(sum ||g||^2)."""
    st = {}

    def step(x, g, f, k, st):
        if not st:
            r_eps = {"distance": value, "heuristic": value * (1 + np.linalg.norm(x)), "learning_rate": 0.0}[kind]
            st.update(x0=x.copy(), r=r_eps, G=0.0)
        g = g + wd * x
        st["r"] = max(st["r"], np.linalg.norm(x - st["x0"]))
        st["G"] += g @ g
        eta = value if (kind == "learning_rate" and k == 0) else st["r"] / np.sqrt(st["G"] + eps)
        return x - lr * eta * g

    return step, st


def ref_dowg(lr, r2_0, eps, wd):
    """Khaled et al. 2023, Algorithm 1: eta_t = rbar_t^2 / sqrt(v_t), v_t = sum rbar_k^2 ||g_k||^2."""
    st = {}

    def step(x, g, f, k, st):
        if not st:
            st.update(x0=x.copy(), r2=r2_0, v=0.0)
        g = g + wd * x
        st["r2"] = max(st["r2"], np.sum((x - st["x0"]) ** 2))
        st["v"] += st["r2"] * (g @ g)
        return x - lr * st["r2"] / (np.sqrt(st["v"]) + eps) * g

    return step, st


def ref_ldog(scale, reps, eps, sizes):
    """LDoG (Ivgi et al. 2023, section 4): DoG's step for each parameter array."""
    st = {}
    cuts = np.cumsum(sizes)[:-1]

    def step(x, g, f, k, st):
        if not st:
            st.update(x0=x.copy(), r=[reps * (1 + np.linalg.norm(p)) for p in np.split(x, cuts)], G=[0.0] * len(sizes))
        out = []
        for i, (p, p0, gi) in enumerate(zip(np.split(x, cuts), np.split(st["x0"], cuts), np.split(g, cuts))):
            st["r"][i] = max(st["r"][i], np.linalg.norm(p - p0))
            st["G"][i] += gi @ gi
            out.append(p + scale * st["r"][i] / np.sqrt(st["G"][i] + eps) * gi)
        return np.concatenate(out)

    return step, st


def ref_mechanic_sgd(lr, wd, eps, s_init, n_betas):
    """Cutkosky et al. 2023, Algorithm 1 (with the h clipping of the authors' code), base SGD."""
    betas = 1 - 0.1 ** np.arange(1, n_betas + 1)
    st = {}

    def step(x, g, f, k, st):
        if not st:
            st.update(x0=x.copy(), r=np.zeros(n_betas), m=np.zeros(n_betas), v=np.zeros(n_betas))
            st["s"] = np.full(n_betas, s_init)
        total = st["s"].sum()
        base = -lr * g
        g = g + wd * total * np.linalg.norm(g) / (np.linalg.norm(x) + eps) * x
        delta = (st["x0"] - x) / (total + eps)
        h = g @ delta
        clipped = np.clip(h, -st["m"], st["m"])
        st["m"] = np.maximum(betas * st["m"], abs(h) + eps)
        st["v"] = betas**2 * st["v"] + h * h
        st["r"] = betas * st["r"] + clipped * st["s"]
        st["s"] = (s_init / n_betas * st["m"] + np.maximum(st["r"], 0)) / (np.sqrt(st["v"]) + eps)
        return st["x0"] - st["s"].sum() * (delta - base)

    return step, st


def ref_cocob(lr, alpha, eps, wd):
    """Orabona & Tommasi 2017, Algorithm 2 (COCOB-Backprop)."""
    st = {}

    def step(x, g, f, k, st):
        if not st:
            st.update(x0=x.copy(), L=np.full_like(x, eps), G=0 * x, R=0 * x, theta=0 * x)
        g = lr * (g + wd * x)
        st["L"] = np.maximum(st["L"], np.abs(g))
        st["G"] = st["G"] + np.abs(g)
        st["R"] = np.maximum(st["R"] - g * (x - st["x0"]), 0)
        st["theta"] = st["theta"] - g
        return st["x0"] + st["theta"] / (st["L"] * np.maximum(st["G"] + st["L"], alpha * st["L"])) * (st["L"] + st["R"])

    return step, st


def ref_momo(lr, beta, lb0, wd, adapt):
    """Schaipp et al. 2024, Algorithm 1 (MoMo) and MoMo* (adaptive lower bound, Algorithm 2), with Optax's
    decay step ``x / (1 + lr wd) - tau d`` (the paper divides ``tau d`` by ``1 + lr wd`` too)."""
    st = {}

    def step(x, g, f, k, st):
        b = 0.0 if not st else beta
        if not st:
            st.update(d=0 * x, fbar=0.0, gamma=0.0, lb=lb0)
        st["fbar"] = b * st["fbar"] + (1 - b) * f
        st["d"] = b * st["d"] + (1 - b) * g
        st["gamma"] = b * st["gamma"] + (1 - b) * g @ x
        dd, inner, shrink = st["d"] @ st["d"], st["d"] @ x, 1 + lr * wd
        lb = st["lb"]
        if adapt:
            cap = shrink * (st["fbar"] - st["gamma"]) + inner
            if cap < shrink * lb:
                lb = max(cap / (2 * shrink), lb0)
        tau = min(lr, max(shrink * (st["fbar"] - lb - st["gamma"]) + inner, 0) / dd)
        if adapt:
            st["lb"] = max(st["fbar"] + inner - st["gamma"] - 0.5 * tau * dd, lb0)
        return x / shrink - tau * st["d"]

    return step, st


def ref_momo_adam(lr, b1, b2, eps, lb0, wd, adapt):
    """Schaipp et al. 2024, Algorithm 3 (MoMo-Adam), with the adaptive lower bound option and Optax's decay step."""
    st = {}

    def step(x, g, f, k, st):
        if not st:
            st.update(d=0 * x, v=0 * x, fbar=0.0, gamma=0.0, lb=lb0)
        t = k + 1
        st["fbar"] = b1 * st["fbar"] + (1 - b1) * f
        st["d"] = b1 * st["d"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        precond = eps + np.sqrt(st["v"] / (1 - b2**t))
        dd = st["d"] @ (st["d"] / precond)
        st["gamma"] = b1 * st["gamma"] + (1 - b1) * g @ x
        inner, shrink, c1 = st["d"] @ x, 1 + lr * wd, 1 - b1**t
        lb = st["lb"]
        if adapt and shrink * (st["fbar"] - st["gamma"]) + inner < shrink * c1 * lb:
            lb = max((shrink * (st["fbar"] - st["gamma"]) + inner) / (2 * c1 * shrink), lb0)
        tau = min(lr / c1, max(shrink * (st["fbar"] - c1 * lb - st["gamma"]) + inner, 0) / dd)
        if adapt:
            st["lb"] = max((st["fbar"] + inner - st["gamma"] - 0.5 * tau * dd) / c1, lb0)
        return x / shrink - tau * st["d"] / precond

    return step, st


def ref_acprop(lr, b1, b2, eps, eps_root, wd):
    """Zhuang et al. 2021, Algorithm 2 (ACProp): the denominator uses s_{t-1}."""
    st = {}

    def step(x, g, f, k, st):
        if not st:
            st.update(m=0 * x, s=0 * x)
        u = g / ((1.0 if k == 0 else np.sqrt(st["s"] / (1 - b2**k))) + eps)
        error = g - st["m"]
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["s"] = b2 * st["s"] + (1 - b2) * error**2 + eps_root
        return x - lr * (u + wd * x)

    return step, st


def ref_madgrad(lr, momentum, wd, eps):
    """Defazio & Jelassi 2021, Algorithm 1 (lr + eps, as the authors' code)."""
    st = {}

    def step(x, g, f, k, st):
        if not st:
            st.update(x0=x.copy(), G=0 * x, s=0 * x)
        g = g + wd * x
        lam = (lr + eps) * np.sqrt(k + 1)
        st["G"] = st["G"] + lam * g * g
        st["s"] = st["s"] + lam * g
        z = st["x0"] - st["s"] / (np.cbrt(st["G"]) + eps)
        return (1 - momentum) * z + momentum * x

    return step, st


_SIZES_A = [3, 6]
REFERENCES = {
    "schedule_free_sgd": lambda: ref_schedule_free(lambda k: 0.1, 0.9, 0.0),
    "schedule_free_sgd_warmup_wd": lambda: ref_schedule_free(_warmup(0.2, 10), 0.8, 0.01),
    "schedule_free_adamw": lambda: ref_schedule_free(_warmup(0.05, 5), 0.9, 0.01, adam=(0.999, 1e-8)),
    "prodigy": lambda: ref_prodigy(1.0, 0.9, 0.999, np.sqrt(0.999), 1e-8, 1e-6, 0.01, False),
    "prodigy_safeguard": lambda: ref_prodigy(0.5, 0.8, 0.99, 0.9, 1e-8, 1e-6, 0.0, True),
    "dadapt_adamw": lambda: ref_dadapt_adamw(1.0, 0.9, 0.999, 1e-8, 1e-6, 0.01),
    "dog": lambda: ref_dog(1.0, "heuristic", 1e-6, 1e-8, 0.0),
    "dog_learning_rate": lambda: ref_dog(0.5, "learning_rate", 0.01, 1e-8, 1e-3),
    "dog_distance": lambda: ref_dog(1.0, "distance", 1e-3, 1e-8, 0.0),
    "dowg": lambda: ref_dowg(1.0, 1e-4, 1e-4, 0.0),
    "dowg_wd": lambda: ref_dowg(0.5, 1e-3, 1e-4, 1e-3),
    "mechanize_sgd": lambda: ref_mechanic_sgd(1e-2, 1e-2, 1e-8, 1e-6, 6),
    "cocob": lambda: ref_cocob(1.0, 100.0, 1e-8, 0.0),
    "cocob_wd": lambda: ref_cocob(0.5, 10.0, 1e-8, 0.01),
    "momo": lambda: ref_momo(0.5, 0.9, 0.0, 0.0, False),
    "momo_adapt": lambda: ref_momo(0.5, 0.9, -5.0, 0.01, True),
    "momo_adam": lambda: ref_momo_adam(0.1, 0.9, 0.999, 1e-8, 0.0, 0.0, False),
    "momo_adam_adapt": lambda: ref_momo_adam(0.1, 0.9, 0.999, 1e-8, -5.0, 0.01, True),
    "acprop": lambda: ref_acprop(0.01, 0.9, 0.999, 1e-16, 1e-16, 0.0),
    "acprop_wd": lambda: ref_acprop(0.01, 0.5, 0.999, 1e-16, 1e-16, 0.01),
    "madgrad": lambda: ref_madgrad(0.01, 0.9, 0.0, 1e-6),
    "madgrad_wd": lambda: ref_madgrad(0.02, 0.5, 0.01, 1e-6),
    "ldog": lambda: ref_ldog(-0.5, 1e-6, 1e-8, _SIZES_A),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_numpy_reference_from_the_paper(name):
    (ours, _), _ = trajectories(name, "a")
    ours_flat = np.concatenate([np.reshape(np.asarray(x), (N_STEPS, -1)) for x in jax.tree.leaves(ours)], axis=1)
    expected = _numpy_run(*REFERENCES[name]())
    steps = REFERENCE_STEPS.get(name, N_STEPS)
    _assert_close(ours_flat[:steps], expected[:steps], 1e-9, f"{name} vs the NumPy reference")


def test_every_config_has_a_reference_or_a_reason():
    # mechanize_adam: the NumPy Mechanic reference takes SGD as its base; Optax covers the Adam base.
    assert set(CONFIGS) - set(REFERENCES) == {"mechanize_adam"}
