"""Sharded parameters give identically sharded optimizer state and updates.

JAX fixes the number of CPU devices when its backend starts, and the test
process has already imported JAX, so the check runs in a subprocess started
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``. The subprocess
prints a JSON report, one entry per optimizer; the tests parse it and assert
per optimizer. It runs twice: with ``jax_enable_x64`` (as the rest of the
suite) and in JAX's default 32-bit mode. It starts no optimizer after the
worker's test-time budget (``conftest.py``) is spent; the tests of those it
did not reach are skipped and say so.

On a 2x4 mesh (axes ``x``, ``y``) the parameters are

- ``rows``: a (8, 6) matrix sharded on axis 0 over all 8 devices,
- ``cols``: a (6, 8) matrix sharded on axis 1 over ``y``,
- ``grid``: a (4, 8) matrix sharded on both axes,
- ``bias``: a (5,) vector, replicated,
- ``scale``: a scalar, replicated,
- ``weak``: a weak-typed (8,) vector (``jnp.full(shape, 0.1)``) sharded over ``x``,

and every optimizer-state leaf with its parameter's shape, found under the
parameter's own path in the state, must have its parameter's sharding after
``init``, after ``jit(init)`` and after a jitted ``update`` (as must the
updates and the new parameters).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import budget_left_s

# One optimizer per state layout and update family (an alias that only adds a flag to another one's
# transform shares its sharding behaviour): each costs two 8-device compilations per mode.
OPTIMIZER_NAMES = [
    "sgd",
    "sgd_momentum",
    "noisy_sgd",
    "adagrad",
    "adadelta",
    "rmsprop_centered_momentum",
    "adamw",
    "amsgrad",
    "adamaxw",
    "nadamw_momentum_decay",
    "radam",
    "lion",
    "adabelief",
    "lamb",
    "lars",
    "chain_clip_adam_schedule",
]

SCRIPT = textwrap.dedent(
    r'''
    import json
    import sys
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxopt_lite as jol
    from jaxopt_lite import schedules as sch

    X64 = bool(jax.config.jax_enable_x64)


    def chain_clip_adam_schedule(learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8, max_norm=1.0):
        schedule = sch.warmup_cosine_decay_schedule(0.0, learning_rate, 2, 10, 0.0)
        return jol.chain(jol.clip_by_global_norm(max_norm), jol.adam(schedule, b1=b1, b2=b2, eps=eps))


    # name -> (constructor, fixed keyword arguments, float hyperparameters passed as arrays)
    OPTIMIZERS = {
        "sgd": (jol.sgd, {}, {}),
        "sgd_momentum": (jol.sgd, {}, {"momentum": 0.9}),
        "sgd_nesterov": (jol.sgd, {"nesterov": True}, {"momentum": 0.9}),
        "sgd_momentum_dampening": (jol.sgd, {}, {"momentum": 0.9, "dampening": 0.5}),
        "noisy_sgd": (jol.noisy_sgd, {"key": 0}, {"eta": 0.01, "gamma": 0.55}),
        "sign_sgd": (jol.sign_sgd, {}, {}),
        "adagrad": (jol.adagrad, {}, {"initial_accumulator_value": 0.1, "eps": 1e-7}),
        "adadelta": (jol.adadelta, {}, {"rho": 0.9, "eps": 1e-6, "weight_decay": 0.01}),
        "rmsprop": (jol.rmsprop, {}, {"decay": 0.9, "eps": 1e-8, "initial_scale": 0.1}),
        "rmsprop_centered_momentum": (
            jol.rmsprop, {"centered": True}, {"decay": 0.9, "eps": 1e-8, "initial_scale": 0.1, "momentum": 0.9}),
        "adam": (jol.adam, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 1e-12}),
        "adamw": (jol.adamw, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4}),
        "amsgrad": (jol.amsgrad, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
        "adamax": (jol.adamax, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
        "adamaxw": (jol.adamaxw, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4}),
        "nadam": (jol.nadam, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
        "nadam_momentum_decay": (jol.nadam, {}, {"b1": 0.9, "b2": 0.999, "momentum_decay": 0.004}),
        "nadamw": (jol.nadamw, {}, {"b1": 0.9, "b2": 0.999, "weight_decay": 1e-4}),
        "nadamw_momentum_decay": (jol.nadamw, {}, {"b1": 0.9, "weight_decay": 1e-4, "momentum_decay": 0.004}),
        "radam": (jol.radam, {}, {"b1": 0.9, "b2": 0.999, "threshold": 5.0}),
        "lion": (jol.lion, {}, {"b1": 0.9, "b2": 0.99, "weight_decay": 1e-3}),
        "adabelief": (jol.adabelief, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-16, "eps_root": 1e-16}),
        "lamb": (jol.lamb, {}, {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.01}),
        "lars": (jol.lars, {}, {"weight_decay": 0.01, "trust_coefficient": 0.001, "eps": 1e-8, "momentum": 0.9}),
        "chain_clip_adam_schedule": (chain_clip_adam_schedule, {}, {"b1": 0.9, "max_norm": 1.0}),
    }


    def build(name, hps):
        fn, fixed, _ = OPTIMIZERS[name]
        return fn(**fixed, **hps)


    devices = np.array(jax.devices()).reshape(2, 4)
    mesh = Mesh(devices, ("x", "y"))
    SPECS = {
        "rows": ((8, 6), P(("x", "y"), None)),
        "cols": ((6, 8), P(None, "y")),
        "grid": ((4, 8), P("x", "y")),
        "bias": ((5,), P()),
        "scale": ((), P()),
    }


    def make(seed, dtype):
        rng = np.random.default_rng(seed)
        tree = {
            k: jax.device_put(jnp.asarray(rng.standard_normal(shape), dtype), NamedSharding(mesh, spec))
            for k, (shape, spec) in SPECS.items()
        }
        # A weak-typed leaf (as jnp.full(shape, 0.1) makes): eager zeros_like drops its sharding.
        tree["weak"] = jax.device_put(jnp.full((8,), 0.1 * (seed + 1)), NamedSharding(mesh, P("x")))
        return tree


    def key_of(entry):
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return getattr(entry, attr)
        return str(entry)


    def sharding_problems(tree, params, what):
        """Leaves of ``tree`` under a parameter's path, with its shape, sharded differently."""
        problems, checked = [], 0
        by_key = {k: params[k] for k in params}
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not hasattr(leaf, "sharding") or not path:
                continue
            k = key_of(path[-1])
            if k not in by_key or leaf.shape != by_key[k].shape:
                continue
            checked += 1
            p_sharding = by_key[k].sharding
            if not leaf.sharding.is_equivalent_to(p_sharding, leaf.ndim):
                problems.append(
                    f"{what} {jax.tree_util.keystr(path)}: {leaf.sharding} != param {p_sharding}")
        return problems, checked


    def under_param(tree, key):
        """The leaves of ``tree`` found under the parameter path ``key``."""
        return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                if path and key_of(path[-1]) == key]


    def float_dtypes(leaves):
        return sorted({str(jnp.result_type(x)) for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.floating)})


    # float32 and bfloat16 parameters in one (unsharded) tree for the dtype check.
    _rng = np.random.default_rng(2)
    MIXED = {f"{k}_{jnp.dtype(dt).name}": jnp.asarray(_rng.standard_normal(shape), dt)
             for k, shape in [("m", (4, 3)), ("s", ())] for dt in (jnp.float32, jnp.bfloat16)}
    MIXED_GRADS = jax.tree.map(lambda x: (0.5 * x + 0.1).astype(x.dtype), MIXED)

    report = {"x64": X64, "n_devices": len(jax.devices()), "optimizers": {}, "not_run": []}
    deadline = time.monotonic() + float(sys.argv[1])
    for name in sys.argv[2:]:
        if time.monotonic() > deadline:  # the test run's time budget is spent: say so, do not start another
            report["not_run"].append(name)
            continue
        entry = {"sharding_problems": {}, "checked": {}, "dtype_problems": []}
        try:
            params, grads = make(0, jnp.float32), make(1, jnp.float32)
            # Sharding, with Python-number hyperparameters (the common case).
            opt = build(name, {"learning_rate": 0.1, **OPTIMIZERS[name][2]})
            state = opt.init(params)
            updates, new_state = jax.jit(opt.update)(grads, state, params)
            new_params = jax.jit(jol.apply_updates)(params, updates)
            stages = [
                ("init", state),
                ("jit(init)", jax.jit(opt.init)(params)),
                ("updates", updates),
                ("state after jitted update", new_state),
                ("params after apply_updates", new_params),
            ]
            for what, tree in stages:
                problems, n = sharding_problems(tree, params, what)
                entry["sharding_problems"][what] = problems
                entry["checked"][what] = n

            # dtypes: every float hyperparameter a float32 array traced by jit; nothing under a
            # parameter's path may take another dtype than the parameter's.
            hps = {k: jnp.asarray(v, jnp.float32) for k, v in {"learning_rate": 0.1, **OPTIMIZERS[name][2]}.items()}

            @jax.jit
            def one_step(hps, p, g):
                opt = build(name, hps)
                s = opt.init(p)
                u, s = opt.update(g, s, p)
                return u, s, jol.apply_updates(p, u)

            u, s, p2 = one_step(hps, MIXED, MIXED_GRADS)
            for key, x in MIXED.items():
                for what, tree in [("updates", u), ("state", s), ("params", p2)]:
                    for leaf in under_param(tree, key):
                        dt = jnp.result_type(leaf)
                        if jnp.issubdtype(dt, jnp.floating) and dt != x.dtype:
                            entry["dtype_problems"].append(f"{what} of {key}: {dt}")
                    if what == "params":
                        leaf = under_param(tree, key)[0]
                        if not bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32)))):
                            entry["dtype_problems"].append(f"params of {key}: not finite")
            entry["state_float_dtypes"] = float_dtypes(jax.tree.leaves(s))
        except Exception as e:  # reported per optimizer, so one failure does not hide the others
            entry["error"] = f"{type(e).__name__}: {e}"
        report["optimizers"][name] = entry

    # The one-pass CPU kernel: each device steps its own shard (nothing gathered), as the pure-JAX step.
    if time.monotonic() <= deadline:
        kernel = {}
        try:
            params, grads = ({k: v for k, v in make(seed, jnp.float32).items() if k != "weak"} for seed in (0, 1))
            step = jol.kernels.adamw_step(0.1, weight_decay=0.01)
            run = jax.jit(step.step)
            state = step.init(params)
            new_params, new_state = run(params, grads, state)
            want, _ = jax.jit(jol.kernels.adamw_step(0.1, weight_decay=0.01, use_kernel=False).step)(
                params, grads, state)
            kernel["available"] = jol.kernels.kernel_available()
            kernel["sharding_problems"] = (sharding_problems(new_params, params, "params")[0]
                                           + sharding_problems(new_state, params, "state")[0])
            kernel["max_diff"] = max(float(jnp.max(jnp.abs(new_params[k] - want[k]))) for k in params)
            kernel["all_gather"] = "all-gather" in run.lower(params, grads, state).compile().as_text()
        except Exception as e:
            kernel["error"] = f"{type(e).__name__}: {e}"
        report["kernel"] = kernel

    print("REPORT " + json.dumps(report))
    '''
)


def _start(x64: bool, seconds: float) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_ENABLE_X64"] = "1" if x64 else "0"
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(seconds), *OPTIMIZER_NAMES], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _collect(proc: subprocess.Popen) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (
        f"sharding subprocess failed (rc={proc.returncode})\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    )
    return json.loads(lines[-1][len("REPORT ") :])


@pytest.fixture(scope="module")
def reports():
    """Both reports; the two subprocesses run at the same time."""
    seconds = max(60.0, budget_left_s())  # optimizers not started by then are reported as not run
    procs = {x64: _start(x64, seconds) for x64 in (True, False)}
    return {x64: _collect(proc) for x64, proc in procs.items()}


@pytest.fixture(params=[True, False], ids=["x64", "32bit"])
def report(request, reports):
    return reports[request.param]


def test_subprocess_setup(report):
    assert report["n_devices"] == 8
    assert sorted([*report["optimizers"], *report["not_run"]]) == sorted(OPTIMIZER_NAMES)
    assert report["optimizers"], "the time budget was spent before the first optimizer"


def test_x64_mode_matches_request(report, request):
    assert report["x64"] is ("x64" in request.node.callspec.id)


STATELESS = ("sgd", "noisy_sgd")  # no state leaf shaped like a parameter
N_PARAMS = 6  # the leaves of make() in SCRIPT


def _entry(report, name):
    if name in report["not_run"]:
        pytest.skip(f"over the test-time budget: the sharding subprocess did not reach {name}")
    entry = report["optimizers"][name]
    assert "error" not in entry, entry.get("error")
    return entry


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_init_state_keeps_param_sharding(report, name):
    entry = _entry(report, name)
    assert entry["sharding_problems"]["init"] == [], "\n".join(entry["sharding_problems"]["init"])
    if name not in STATELESS:
        assert entry["checked"]["init"] >= N_PARAMS  # at least one state leaf per parameter


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_jitted_update_keeps_param_sharding(report, name):
    entry = _entry(report, name)
    for stage in ("updates", "state after jitted update", "params after apply_updates"):
        assert entry["sharding_problems"][stage] == [], "\n".join(entry["sharding_problems"][stage])
    # updates and the new params are trees shaped like params: all their leaves are checked.
    assert entry["checked"]["updates"] == N_PARAMS
    assert entry["checked"]["params after apply_updates"] == N_PARAMS
    assert entry["checked"]["state after jitted update"] == entry["checked"]["init"]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_jitted_init_keeps_param_sharding(report, name):
    """``jax.jit(opt.init)(params)`` is the usual way to build the state of a sharded model."""
    entry = _entry(report, name)
    assert entry["checked"]["jit(init)"] == entry["checked"]["init"]
    assert entry["sharding_problems"]["jit(init)"] == [], "\n".join(entry["sharding_problems"]["jit(init)"])


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_float32_and_bfloat16_params_are_not_upcast_by_float32_hyperparameters(report, name):
    entry = _entry(report, name)
    assert entry["dtype_problems"] == [], "\n".join(entry["dtype_problems"])
    if not report["x64"]:
        # In 32-bit mode nothing in the state is wider than float32.
        assert set(entry["state_float_dtypes"]) <= {"float32", "bfloat16"}, entry["state_float_dtypes"]


def test_kernel_step_keeps_param_sharding(report):
    """``kernels.adamw_step`` on sharded params: every device steps its shard; nothing is gathered."""
    if "kernel" not in report:
        pytest.skip("over the test-time budget: the sharding subprocess did not reach the kernel")
    kernel = report["kernel"]
    assert "error" not in kernel, kernel.get("error")
    if not kernel["available"]:
        pytest.skip("no C++ compiler here: adamw_step runs its pure-JAX fallback")
    assert kernel["sharding_problems"] == [], "\n".join(kernel["sharding_problems"])
    assert not kernel["all_gather"], "the kernel step gathers the sharded params"
    assert kernel["max_diff"] < 1e-5, kernel["max_diff"]
