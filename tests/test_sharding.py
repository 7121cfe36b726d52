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
updates and the new parameters); a scalar under a parameter's path (a
statistic per array, as NovoGrad's second moment) must be replicated over the
parameter's mesh. A parameter's leaves are those under a dict key naming it,
at any depth (SM3's list of accumulators per parameter). Factored or per-axis
statistics of a matrix (Adafactor's row and column statistics, SM3's
accumulators) have other shapes and are not checked.

The optimizers are every row of the property tests' table
(``tests/test_properties.py``, ``OPTIMIZERS``), which the subprocess imports:
a row added there is checked here, built by that table's ``build(name)`` (its
Python-number hyperparameters). For the dtype check each swept float
hyperparameter of the row is instead a float32 array traced by ``jit``, at the
value ``build(name)`` gives it (the row's fixed argument, else the
constructor's default, else, for wrappers taking ``**kwargs``, the middle value
of the table's ``SWEEP``); step counts stay Python ints. That step is compiled
and run in the 32-bit run (its new parameters must be finite) and only traced
(``jax.eval_shape``) in the x64 run: the dtypes, without a second compilation
per optimizer. Both runs check that the new parameters of the sharded step are
finite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import budget_left_s, eight_cpu_devices_env
from test_properties import OPTIMIZERS as PROPERTY_OPTIMIZERS

# Every row of the property tests' table (tests/test_properties.py): a row added there is checked
# here too. The subprocess imports the same table (constructors, wrappers and fixed arguments).
OPTIMIZER_NAMES = list(PROPERTY_OPTIMIZERS)
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent(
    r'''
    import inspect
    import json
    import sys
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxopt_lite as jol

    X64 = bool(jax.config.jax_enable_x64)


    # The property tests' table: name -> (constructor, fixed keyword arguments, swept hyperparameters).
    sys.path.insert(0, sys.argv[2])
    from test_properties import LR, OPTIMIZERS, STEP_COUNT_HPS, SWEEP, build


    def array_value(name, hp):
        """The value ``build(name)`` gives ``hp``: its fixed argument, else the constructor's numeric
        default, else (a wrapper taking ``**kwargs``, or a ``None`` default) SWEEP's middle value."""
        fn, fixed, _ = OPTIMIZERS[name]
        if hp == "learning_rate":
            return LR
        if hp in fixed:
            return fixed[hp]
        try:
            default = inspect.signature(fn).parameters[hp].default
        except (KeyError, TypeError, ValueError):
            default = None
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            return default
        return SWEEP[hp][1]


    def array_hyperparameters(name):
        """Every swept float hyperparameter (step counts stay Python ints) at build()'s value."""
        return {hp: array_value(name, hp) for hp in OPTIMIZERS[name][2] if hp not in STEP_COUNT_HPS}


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


    def param_key(path, params):
        """The parameter a leaf at ``path`` is under: the last dict key on the path naming a parameter
        (SM3 keeps a list of accumulators under each parameter's key); ``None`` if none does.
        Attribute names of the state (a field ``scale``) are not dict keys: they never match."""
        keys = [e.key for e in path if isinstance(e, jax.tree_util.DictKey) and e.key in params]
        return keys[-1] if keys else None


    def sharding_problems(tree, params, what):
        """Leaves of ``tree`` under a parameter's path sharded unlike it: with its shape, the parameter's
        sharding; a scalar of an array (a per-array statistic), replicated over the parameter's mesh."""
        problems, checked = [], 0
        by_key = {k: params[k] for k in params}
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not hasattr(leaf, "sharding") or not path:
                continue
            k = param_key(path, by_key)
            if k is None:
                continue
            if leaf.shape == by_key[k].shape:
                p_sharding = by_key[k].sharding
            elif leaf.shape == ():
                p_sharding = NamedSharding(by_key[k].sharding.mesh, P())
            else:  # factored or per-axis statistics: not checked
                continue
            checked += 1
            if not leaf.sharding.is_equivalent_to(p_sharding, leaf.ndim):
                problems.append(
                    f"{what} {jax.tree_util.keystr(path)}: {leaf.sharding} != param {p_sharding}")
        return problems, checked


    def under_param(tree, key):
        """``(path, leaf)`` for the leaves of ``tree`` under the parameter ``key`` of ``MIXED``."""
        return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                if path and param_key(path, MIXED) == key]


    def float_dtypes(leaves):
        return sorted({str(jnp.result_type(x)) for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.floating)})


    # float32 and bfloat16 parameters in one (unsharded) tree for the dtype check.
    _rng = np.random.default_rng(2)
    MIXED = {f"{k}_{jnp.dtype(dt).name}": jnp.asarray(_rng.standard_normal(shape), dt)
             for k, shape in [("m", (4, 3)), ("s", ())] for dt in (jnp.float32, jnp.bfloat16)}
    MIXED_GRADS = jax.tree.map(lambda x: (0.5 * x + 0.1).astype(x.dtype), MIXED)

    report = {"x64": X64, "n_devices": len(jax.devices()), "optimizers": {}, "not_run": []}
    deadline = time.monotonic() + float(sys.argv[1])
    for name in sys.argv[3:]:
        if time.monotonic() > deadline:  # the test run's time budget is spent: say so, do not start another
            report["not_run"].append(name)
            continue
        entry = {"sharding_problems": {}, "checked": {}, "dtype_problems": []}
        started = time.monotonic()
        try:
            params, grads = make(0, jnp.float32), make(1, jnp.float32)
            # Sharding, with Python-number hyperparameters (the common case): the table's build().
            opt = build(name)
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
            entry["not_finite"] = [k for k, v in new_params.items() if not bool(jnp.all(jnp.isfinite(v)))]

            # dtypes: every float hyperparameter a float32 array traced by jit; nothing under a
            # parameter's path may take another dtype than the parameter's. The 32-bit run compiles
            # and runs the step (the new bfloat16 and float32 params must be finite); the x64 run
            # only traces it (jax.eval_shape: the dtypes, at a fraction of the compile time).
            entry["array_hyperparameters"] = array_hyperparameters(name)
            hps = {k: jnp.asarray(v, jnp.float32) for k, v in entry["array_hyperparameters"].items()}

            @jax.jit
            def one_step(hps, p, g):
                opt = build(name, **hps)
                s = opt.init(p)
                u, s = opt.update(g, s, p)
                return u, s, jol.apply_updates(p, u)

            args = (hps, MIXED, MIXED_GRADS)
            u, s, p2 = jax.eval_shape(one_step, *args) if X64 else one_step(*args)
            for key, x in MIXED.items():
                for what, tree in [("updates", u), ("state", s), ("params", p2)]:
                    for path, leaf in under_param(tree, key):
                        dt = jnp.result_type(leaf)
                        if jnp.issubdtype(dt, jnp.floating) and dt != x.dtype:
                            entry["dtype_problems"].append(f"{what} {path}: {dt} (param {x.dtype})")
                    if what == "params" and not X64:
                        leaf = under_param(tree, key)[0][1]
                        if not bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32)))):
                            entry["dtype_problems"].append(f"params of {key}: not finite")
            entry["state_float_dtypes"] = float_dtypes(jax.tree.leaves(s))
        except Exception as e:  # reported per optimizer, so one failure does not hide the others
            entry["error"] = f"{type(e).__name__}: {e}"
        entry["seconds"] = round(time.monotonic() - started, 2)
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
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(seconds), TESTS_DIR, *OPTIMIZER_NAMES],
        env=eight_cpu_devices_env(x64), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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


N_PARAMS = 6  # the leaves of make() in SCRIPT
# Optimizers with fewer than one checked state leaf per parameter, and how many they have; any other
# must have at least one (the check found its state under the parameters' paths). A new row
# without a state buffer per parameter belongs here.
FEW_CHECKED_STATE_LEAVES = {
    "sgd": 0,  # no momentum: no state
    "noisy_sgd": 0,  # a key and a count
    "sign_sgd": 0,
    "fromage": 0,
    "polyak_sgd": 0,  # the step comes from the loss value passed to update
    "adafactor": 3,  # rows, cols and grid are factored: row and column statistics only (not checked)
}
# State leaves kept in float32 for bfloat16 parameters on purpose: optimizer -> (state fields, why).
FLOAT32_STATE_BY_DESIGN = {
    "adafactor_momentum_wd": (("ema",), "the momentum is kept in dtype_momentum, float32 by default (as Optax)"),
    "ldog": (("max_dist", "grad_sum_of_squares"), "its two scalars per array are kept in at least float32"),
    "shampoo": (("stats", "roots"), "Kronecker factors and their inverse roots: eigh needs at least float32"),
    "soap": (("factors", "bases"), "Kronecker factors and their eigenbases: eigh and QR need at least float32"),
    "kron": (("Qs",), "PSGD-Kron's factors (precond_dtype): triangular solves need at least float32"),
}


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
    if name in FEW_CHECKED_STATE_LEAVES:
        assert entry["checked"]["init"] == FEW_CHECKED_STATE_LEAVES[name]
    else:
        assert entry["checked"]["init"] >= N_PARAMS, (
            f"{name}: {entry['checked']['init']} state leaves under the parameters' paths (fewer than one per "
            "parameter: if it keeps no buffer per parameter, add it to FEW_CHECKED_STATE_LEAVES)")


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_jitted_update_keeps_param_sharding(report, name):
    entry = _entry(report, name)
    for stage in ("updates", "state after jitted update", "params after apply_updates"):
        assert entry["sharding_problems"][stage] == [], "\n".join(entry["sharding_problems"][stage])
    assert entry["not_finite"] == [], f"new params not finite: {entry['not_finite']}"
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
    fields, _ = FLOAT32_STATE_BY_DESIGN.get(name, ((), ""))
    by_design = [p for p in entry["dtype_problems"]
                 if p.startswith("state ") and p.split(": ")[1].startswith("float32 ")
                 and any(f".{field}[" in p for field in fields)]
    problems = [p for p in entry["dtype_problems"] if p not in by_design]
    assert problems == [], "\n".join(problems)
    assert bool(by_design) == bool(fields), f"{name}: FLOAT32_STATE_BY_DESIGN is out of date: {by_design}"
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
