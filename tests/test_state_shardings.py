"""``jaxopt_lite.sharding``: optimizer-state shardings that follow the parameters, and ZeRO-1.

The rules are checked on an abstract mesh (``jax.sharding.AbstractMesh``: shapes only, no devices) in
the test process. What needs devices runs in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (as ``test_sharding.py``: JAX fixes the number
of CPU devices when its backend starts), in JAX's default 32-bit mode; it prints a JSON report once
and the tests read it:

- follow the parameters (4x2 mesh ``data`` x ``model``, parameters sharded over both axes): for each
  optimizer of ``OPTIMIZERS``, ``jax.jit(tx.init, out_shardings=state_shardings(...))`` gives a state
  with exactly those shardings, a jitted step with them as ``in_shardings``/``out_shardings`` keeps
  them, and equals the same step run on one device;
- ZeRO-1 (``zero_axis="data"``; a 2x4 and a 4x2 mesh ``data`` x ``model``, parameters replicated over
  ``data``): each parameter-shaped state leaf holds ``1 / size(data)`` of its parameter's bytes per
  device, and three steps equal the run on one device;
- the data-parallel example of the module docstring, run as written on the 8 devices.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import eight_cpu_devices_env, run_report_script
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_lite as jol

OPTIMIZER_NAMES = ["adam", "sgd_momentum", "lion", "adafactor", "sm3", "lamb", "clip_adamw_schedule",
                   "multisteps_adam", "inject_adam", "bf16_state_adam"]
MESHES = ["data2_model4", "data4_model2"]  # ZeRO-1 meshes: (data, model) sizes
RTOL = 1e-6  # float32

SCRIPT = textwrap.dedent(
    r'''
    import json
    import re
    import sys
    import textwrap
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxopt_lite as jol
    from jaxopt_lite.sharding import init_sharded, state_shardings

    RTOL = float(sys.argv[1])
    NAMES = sys.argv[2:]
    started = time.monotonic()

    def build(name):
        return {
            "adam": lambda: jol.adam(1e-2),
            "sgd_momentum": lambda: jol.sgd(1e-2, momentum=0.9),
            "lion": lambda: jol.lion(1e-3),
            "adafactor": lambda: jol.adafactor(1e-2, min_dim_size_to_factor=4),  # factors the matrices
            "sm3": lambda: jol.sm3(0.1),
            "lamb": lambda: jol.lamb(1e-2),
            "clip_adamw_schedule": lambda: jol.chain(
                jol.clip_by_global_norm(1.0), jol.adamw(jol.linear_schedule(1e-2, 1e-3, 10), weight_decay=0.1)),
            "multisteps_adam": lambda: jol.MultiSteps(jol.adam(1e-2), every_k_schedule=2),
            "inject_adam": lambda: jol.inject_hyperparams(jol.adam)(learning_rate=1e-2),
            "bf16_state_adam": lambda: jol.low_precision_state(jol.adam(1e-2), key=0),
        }[name]()

    SHAPES = {"w": (8, 12), "v": (12, 8), "g": (8, 8), "b": (16,), "o": (5,), "s": ()}
    # ZeRO-1 splits the state of w, v, g, b; o (no axis divisible) and s (a scalar) keep the parameter's.
    ZERO_SPLIT = ["w", "v", "g", "b"]
    devices = np.array(jax.devices())

    def follow_specs():
        return {"w": P(None, "model"), "v": P("model", None), "g": P("data", "model"), "b": P("data"),
                "o": P(), "s": P()}

    def zero_specs():  # replicated over data
        return {"w": P(None, "model"), "v": P("model", None), "g": P(None, "model"), "b": P(), "o": P(),
                "s": P()}

    rng = np.random.default_rng(0)
    HOST_PARAMS = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in SHAPES.items()}
    TARGETS = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in SHAPES.items()}

    def loss_fn(params):
        return sum(jnp.sum((params[k] - TARGETS[k]) ** 2 + 0.1 * jnp.sin(3.0 * params[k])) for k in params)

    def make_step(tx, **jit_kwargs):
        def step(params, state):
            grads = jax.grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            return jol.apply_updates(params, updates), state
        return jax.jit(step, **jit_kwargs)

    def key_of(entry):
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return getattr(entry, attr)
        return str(entry)

    def param_shaped(tree):
        """(path, leaf, param key) for leaves found under a parameter's key with its shape (an oracle
        independent of the module's matching)."""
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if path and key_of(path[-1]) in SHAPES and tuple(leaf.shape) == SHAPES[key_of(path[-1])]:
                out.append((jax.tree_util.keystr(path), leaf, key_of(path[-1])))
        return out

    def sharding_mismatches(tree, shardings, what):
        """Leaves of ``tree`` whose sharding is not the one ``shardings`` gives them."""
        problems = []
        flat_s = jax.tree.leaves(shardings)
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        if len(flat) != len(flat_s):
            return [f"{what}: {len(flat)} leaves, {len(flat_s)} shardings"]
        for (path, leaf), s in zip(flat, flat_s):
            if leaf.sharding != s:  # equal: the same mesh and the same PartitionSpec
                problems.append(f"{what} {jax.tree_util.keystr(path)}: {leaf.sharding.spec} != {s.spec}")
        return problems

    def compare(got, want):
        """(worst |got - want| / max |want| over the leaves, paths of leaves not within
        allclose(rtol=RTOL, atol=RTOL * max |want|)): a relative tolerance on the scale of each leaf, as
        sharded reductions (norms, means) sum in another order than on one device."""
        worst, bad = 0.0, []

        def plain(x):  # a typed PRNG key (stochastic rounding's) as its key data
            return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x

        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
            a, b = np.asarray(plain(a), np.float64), np.asarray(plain(b), np.float64)
            if not a.size:
                continue
            scale = float(np.max(np.abs(b)))
            err = float(np.max(np.abs(a - b)))
            worst = max(worst, err / scale if scale else err)
            if not np.allclose(a, b, rtol=RTOL, atol=RTOL * scale):
                bad.append(jax.tree_util.keystr(path))
        return worst, bad

    # One-device reference: the same step on uncommitted (default-device) arrays, compiled once per optimizer.
    reference_cache = {}

    def reference(name, n_steps):
        if name not in reference_cache:
            tx = build(name)
            step = make_step(tx)
            params = {k: jnp.asarray(v) for k, v in HOST_PARAMS.items()}
            state = tx.init(params)
            runs = []
            for _ in range(3):
                params, state = step(params, state)
                runs.append((params, state))
            reference_cache[name] = runs
        return reference_cache[name][n_steps - 1]

    report = {"n_devices": len(jax.devices()), "x64": bool(jax.config.jax_enable_x64),
              "follow": {}, "zero": {}, "example": {}, "seconds": {}}

    # ----------------------------------------------------------------- follow the parameters
    mesh = Mesh(devices.reshape(4, 2), ("data", "model"))
    p_shard = {k: NamedSharding(mesh, s) for k, s in follow_specs().items()}
    for name in NAMES:
        t0 = time.monotonic()
        entry = {}
        try:
            tx = build(name)
            params = jax.device_put(HOST_PARAMS, p_shard)
            shardings = state_shardings(tx, params, p_shard)
            state = jax.jit(tx.init, out_shardings=shardings)(params)
            entry["init"] = sharding_mismatches(state, shardings, "jit(init)")
            # Oracle: parameter-shaped leaves get the parameter's sharding, scalars are replicated.
            oracle = []
            found = param_shaped(state)
            for path, leaf, k in found:
                if not leaf.sharding.is_equivalent_to(p_shard[k], leaf.ndim):
                    oracle.append(f"{path}: {leaf.sharding.spec} != param {p_shard[k].spec}")
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
                if leaf.ndim == 0 and not leaf.sharding.is_fully_replicated:
                    oracle.append(f"{jax.tree_util.keystr(path)}: a scalar, not replicated ({leaf.sharding.spec})")
            entry["oracle"] = oracle
            entry["n_param_shaped"] = len(found)
            entry["state_specs"] = {jax.tree_util.keystr(p): str(s.spec)
                                    for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
            step = make_step(tx, in_shardings=(p_shard, shardings), out_shardings=(p_shard, shardings))
            new_params, new_state = step(params, state)
            entry["step"] = (sharding_mismatches(new_state, shardings, "state after step")
                             + sharding_mismatches(new_params, p_shard, "params after step"))
            want_params, want_state = reference(name, 1)
            entry["worst_rel_params"], entry["not_close_params"] = compare(new_params, want_params)
            entry["worst_rel_state"], entry["not_close_state"] = compare(new_state, want_state)
            # init_sharded: the same state, the same shardings.
            again = init_sharded(tx, HOST_PARAMS, p_shard)
            entry["init_sharded"] = sharding_mismatches(again, shardings, "init_sharded")
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
        report["follow"][name] = entry
        report["seconds"][f"follow/{name}"] = round(time.monotonic() - t0, 2)

    # ----------------------------------------------------------------- ZeRO-1
    for mesh_name, shape in [("data2_model4", (2, 4)), ("data4_model2", (4, 2))]:
        mesh = Mesh(devices.reshape(shape), ("data", "model"))
        data_size = mesh.shape["data"]
        p_shard = {k: NamedSharding(mesh, s) for k, s in zero_specs().items()}
        report["zero"][mesh_name] = {}
        for name in NAMES:
            t0 = time.monotonic()
            entry = {"data_size": data_size}
            try:
                tx = build(name)
                params = jax.device_put(HOST_PARAMS, p_shard)
                shardings = state_shardings(tx, params, p_shard, zero_axis="data")
                state = init_sharded(tx, params, p_shard, zero_axis="data")
                entry["init"] = sharding_mismatches(state, shardings, "init_sharded")
                # Bytes per device of each parameter-shaped state leaf, against its parameter's.
                entry["bytes"] = [
                    {"path": path, "param": k, "device": leaf.addressable_shards[0].data.nbytes,
                     "param_device": params[k].addressable_shards[0].data.nbytes
                     * leaf.dtype.itemsize // params[k].dtype.itemsize,
                     "full": leaf.nbytes, "kept_param_sharding": leaf.sharding.is_equivalent_to(p_shard[k], leaf.ndim)}
                    for path, leaf, k in param_shaped(state)
                ]
                step = make_step(tx, in_shardings=(p_shard, shardings), out_shardings=(p_shard, shardings))
                for _ in range(3):
                    params, state = step(params, state)
                entry["step"] = (sharding_mismatches(state, shardings, "state after 3 steps")
                                 + sharding_mismatches(params, p_shard, "params after 3 steps"))
                want_params, want_state = reference(name, 3)
                entry["worst_rel_params"], entry["not_close_params"] = compare(params, want_params)
                entry["worst_rel_state"], entry["not_close_state"] = compare(state, want_state)
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"
            report["zero"][mesh_name][name] = entry
            report["seconds"][f"zero/{mesh_name}/{name}"] = round(time.monotonic() - t0, 2)

    # ----------------------------------------------------------------- the module docstring's example
    t0 = time.monotonic()
    example = {}
    try:
        doc = jol.sharding.__doc__
        code = textwrap.dedent(doc[doc.rindex("::\n") + 3:])
        example["code"] = code
        ns = {"__name__": "sharding_example"}
        exec(compile(code, "jaxopt_lite/sharding.py (docstring example)", "exec"), ns)
        n = len(jax.devices())
        example["data_size"] = ns["mesh"].shape["data"]
        example["state_problems"] = sharding_mismatches(ns["opt_state"], ns["opt_shardings"], "example state")
        example["bytes"] = [{"path": path, "device": leaf.addressable_shards[0].data.nbytes, "full": leaf.nbytes}
                            for path, leaf, _ in
                            [(jax.tree_util.keystr(p), x, None) for p, x in
                             jax.tree_util.tree_flatten_with_path(ns["opt_state"])[0]
                             if p and key_of(p[-1]) in ns["params"]
                             and x.shape == ns["params"][key_of(p[-1])].shape]]
        example["total_state_bytes"] = {
            "device": sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(ns["opt_state"])),
            "full": sum(x.nbytes for x in jax.tree.leaves(ns["opt_state"]))}
        hlo = ns["zero_step"].lower(ns["params"], ns["opt_state"], ns["x"], ns["y"]).compile().as_text()
        example["collectives"] = sorted(set(re.findall(r"\b(all-gather|reduce-scatter|all-reduce|all-to-all)\b", hlo)))
        # The same five steps on one device, from the example's own starting point.
        start = {"__name__": "sharding_example_start"}
        exec(compile(code[: code.index("mesh = ")], "example start", "exec"), start)
        opt, params, x, y = ns["opt"], start["params"], start["x"], start["y"]
        state = opt.init(params)

        @jax.jit
        def plain_step(params, state):
            grads = jax.grad(ns["loss_fn"])(params, x, y)
            updates, state = opt.update(grads, state, params)
            return jol.apply_updates(params, updates), state

        for _ in range(5):
            params, state = plain_step(params, state)
        example["worst_rel_params"], example["not_close_params"] = compare(ns["params"], params)
        example["worst_rel_state"], example["not_close_state"] = compare(ns["opt_state"], state)
    except Exception as e:
        example["error"] = f"{type(e).__name__}: {e}"
    report["example"] = example
    report["seconds"]["example"] = round(time.monotonic() - t0, 2)
    report["seconds"]["total"] = round(time.monotonic() - started, 2)
    print("REPORT " + json.dumps(report))
    '''
)


@pytest.fixture(scope="module")
def report():
    return run_report_script(SCRIPT, str(RTOL), *OPTIMIZER_NAMES, timeout=900)


# --------------------------------------------------------------------------- #
# Rules, on an abstract mesh (no devices)
# --------------------------------------------------------------------------- #

MESH = AbstractMesh((4, 2), ("data", "model"))


def _params(**shapes):
    return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def _shardings(**specs):
    return {k: NamedSharding(MESH, s) for k, s in specs.items()}


def _specs(tree):
    return {jax.tree_util.keystr(p): tuple(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_result_is_shaped_like_the_state_and_follows_the_params():
    params = _params(w=(8, 12), b=(5,))
    shardings = _shardings(w=P(None, "model"), b=P("data"))
    tx = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.linear_schedule(1e-2, 0.0, 10)))
    out = jol.sharding.state_shardings(tx, params, shardings)
    assert jax.tree.structure(out) == jax.tree.structure(jax.eval_shape(tx.init, params))
    specs = _specs(out)
    for field in ("mu", "nu"):
        assert out[1][0]._asdict()[field]["w"] is shardings["w"]
        assert out[1][0]._asdict()[field]["b"] is shardings["b"]
    assert specs["[1][0].count"] == () and specs["[1][2].count"] == ()  # counts: replicated
    assert all(s.mesh == MESH for s in jax.tree.leaves(out))


def test_reduced_statistics_keep_the_remaining_axes_specs():
    # v: (12, 8), Adafactor factors it: v_row drops axis 0 (the largest), v_col drops axis 1.
    params = _params(w=(8, 12), v=(12, 8), sq=(8, 8), b=(5,), s=())
    shardings = _shardings(w=P("data", "model"), v=P("model", None), sq=P("data", "model"), b=P("data"), s=P())
    specs = _specs(jol.sharding.state_shardings(jol.adafactor(1e-2, min_dim_size_to_factor=4), params, shardings))
    assert specs["[0].v_row['w']"] == ("data",)  # w's largest axis is 1: removed
    assert specs["[0].v_col['w']"] == ("model",)
    assert specs["[0].v_row['v']"] == ()  # v's largest axis is 0 (model): removed, None left
    assert specs["[0].v_col['v']"] == ("model",)
    # A square matrix: its row and column statistics have one shape, the axis removed is unknown and the
    # two candidates ("data" / "model") differ: replicated.
    assert specs["[0].v_row['sq']"] == () and specs["[0].v_col['sq']"] == ()
    assert specs["[0].v['b']"] == ("data",)  # not factored: shaped like b
    assert specs["[0].v['w']"] == ()  # the (1,) placeholder of a factored leaf
    assert specs["[0].count"] == ()

    sm3 = _specs(jol.sharding.state_shardings(jol.sm3(0.1), params, shardings))
    assert sm3["[0].mu['w'][0]"] == ("data",) and sm3["[0].mu['w'][1]"] == ("model",)
    assert sm3["[0].mu['v'][0]"] == ("model",) and sm3["[0].mu['v'][1]"] == ()
    assert sm3["[0].mu['sq'][0]"] == () and sm3["[0].mu['sq'][1]"] == ()
    assert sm3["[0].mu['b'][0]"] == ("data",) and sm3["[0].mu['s'][0]"] == ()
    assert sm3["[0].nu['w']"] == ("data", "model")


def test_square_matrix_with_one_spec_on_both_axes_keeps_it():
    params = _params(sq=(8, 8))
    specs = _specs(jol.sharding.state_shardings(jol.sm3(0.1), params, _shardings(sq=P(None, None))))
    assert specs["[0].mu['sq'][0]"] == () and specs["[0].mu['sq'][1]"] == ()
    params = _params(sq=(8, 8), k=(4, 8, 8))
    shardings = _shardings(sq=P(None, None), k=P("model", None, None))
    specs = _specs(jol.sharding.state_shardings(jol.sm3(0.1), params, shardings))
    assert specs["[0].mu['k'][0]"] == ("model",)  # the (4,) axis is unambiguous
    assert specs["[0].mu['k'][1]"] == ()


def test_stacked_parameter_buffers_follow_the_param_on_trailing_axes():
    params = _params(w=(8, 12))
    out = jol.sharding.state_shardings(jol.lbfgs(memory_size=3), params, _shardings(w=P("data", "model")))
    specs = _specs(out)
    assert specs["[0].diff_params_memory['w']"] == (None, "data", "model")
    assert specs["[0].params['w']"] == ("data", "model")
    assert specs["[0].weights_memory"] == ()


def test_zero_axis_splits_the_largest_free_divisible_axis():
    params = _params(w=(8, 12), v=(12, 8), tie=(8, 8), k=(6, 4, 16), odd=(5, 3), fsdp=(8, 8), b=(16,), s=())
    shardings = _shardings(w=P(None, "model"), v=P(), tie=P(), k=P(), odd=P("model"), fsdp=P("data"), b=P(), s=P())
    out = jol.sharding.state_shardings(jol.adam(1e-3), params, shardings, zero_axis="data")
    mu = {k: tuple(s.spec) for k, s in out[0].mu.items()}
    assert mu["w"] == ("data", "model")  # axis 1 is sharded: the other one
    assert mu["v"] == ("data",)  # 12 > 8
    assert mu["tie"] == ("data",)  # a tie: the first axis
    assert mu["k"] == (None, None, "data")  # 6 is not divisible by 4; 16 > 4
    assert mu["odd"] == ("model",)  # nothing divisible: the param's sharding
    assert mu["fsdp"] == ("data",)  # already sharded over data: the param's sharding
    assert mu["b"] == ("data",)
    assert mu["s"] == ()
    assert tuple(out[0].count.spec) == ()
    # A tuple of axes: split over both (size 8).
    both = jol.sharding.state_shardings(jol.adam(1e-3), _params(b=(16,), c=(12,)), _shardings(b=P(), c=P()),
                                        zero_axis=("data", "model"))
    assert tuple(both[0].mu["b"].spec) == (("data", "model"),) and tuple(both[0].mu["c"].spec) == ()


def test_masked_and_single_leaf_params():
    params = _params(w=(8, 12), b=(16,))
    shardings = _shardings(w=P(None, "model"), b=P())
    tx = jol.masked(jol.adam(1e-3), {"w": True, "b": False})
    specs = _specs(jol.sharding.state_shardings(tx, params, shardings, zero_axis="data"))
    assert specs == {".inner_state[0].count": (), ".inner_state[0].mu['w']": ("data", "model"),
                     ".inner_state[0].nu['w']": ("data", "model")}
    # A bare array as the parameters.
    one = jol.sharding.state_shardings(jol.sm3(0.1), jax.ShapeDtypeStruct((8, 12), jnp.float32),
                                       NamedSharding(MESH, P("data", None)))
    assert [tuple(s.spec) for s in one[0].mu] == [("data",), ()]
    assert tuple(one[0].nu.spec) == ("data", None)  # the parameter's own sharding


def test_concrete_arrays_are_accepted_as_params():
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    params = {"w": jnp.ones((4, 2))}
    shardings = {"w": NamedSharding(mesh, P())}
    out = jol.sharding.state_shardings(jol.adam(1e-3), params, shardings, zero_axis="data")
    assert tuple(out[0].mu["w"].spec) == ("data",)
    state = jol.sharding.init_sharded(jol.adam(1e-3), params, shardings, zero_axis="data")
    assert state[0].mu["w"].sharding == out[0].mu["w"]


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_error_zero_axis_not_in_mesh():
    match = r"state_shardings: zero_axis 'batch'.*'batch' is not in .*\('data', 'model'\)"
    with pytest.raises(ValueError, match=match):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,)), _shardings(w=P()), zero_axis="batch")
    with pytest.raises(TypeError, match="state_shardings: zero_axis must be a mesh axis name"):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,)), _shardings(w=P()), zero_axis=0)


def test_error_param_shardings_structure():
    with pytest.raises(ValueError, match=r"state_shardings: param_shardings and params must have the same tree "
                                         r"structure.*one NamedSharding per parameter"):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,), b=(4,)), _shardings(w=P()))


def test_error_not_named_sharding():
    with pytest.raises(TypeError, match=r"state_shardings: param_shardings must hold one jax.sharding.NamedSharding "
                                        r"per parameter.*\['w'\].*PartitionSpec.*NamedSharding\(mesh, "):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,)), {"w": P("data")})
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(TypeError, match="state_shardings: .*SingleDeviceSharding.*not supported"):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,)), {"w": single})


def test_error_several_meshes_and_too_long_spec():
    other = AbstractMesh((8,), ("data",))
    with pytest.raises(ValueError, match="state_shardings: all param_shardings must be on one mesh"):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,), b=(4,)),
                                     {"w": NamedSharding(MESH, P()), "b": NamedSharding(other, P())})
    with pytest.raises(ValueError, match=r"state_shardings: the sharding of \['w'\].*names more axes"):
        jol.sharding.state_shardings(jol.adam(1e-3), _params(w=(8,)), _shardings(w=P("data", "model")))


# --------------------------------------------------------------------------- #
# On 8 devices (the subprocess's report)
# --------------------------------------------------------------------------- #


def test_subprocess_setup(report):
    assert report["n_devices"] == 8
    assert report["x64"] is False
    assert sorted(report["follow"]) == sorted(OPTIMIZER_NAMES)
    assert sorted(report["zero"]) == sorted(MESHES)
    assert all(sorted(report["zero"][m]) == sorted(OPTIMIZER_NAMES) for m in MESHES)


def _error(entry):
    return [f"error: {entry['error']}"] if "error" in entry else []


def _sharding_problems(name, entry):
    """Follow the parameters: jit(init), init_sharded and the jitted step give exactly the computed shardings."""
    if "error" in entry:
        return _error(entry)
    problems = entry["init"] + entry["init_sharded"] + entry["step"] + entry["oracle"]
    # Parameter-shaped state leaves found by the oracle (state leaves under a parameter's key with its shape):
    # Adafactor keeps factored statistics for the three matrices, so only v of b, o and s.
    if entry["n_param_shaped"] < (3 if name == "adafactor" else 6):
        problems.append(f"only {entry['n_param_shaped']} parameter-shaped state leaves: {entry['state_specs']}")
    return problems


def _closeness_problems(entry):
    """The sharded run against the one-device run (allclose, rtol=RTOL and atol=RTOL * max |leaf|)."""
    if "error" in entry:
        return _error(entry)
    return [f"{what} {path} not close (worst relative error {entry[f'worst_rel_{what}']:.2e})"
            for what in ("params", "state") for path in entry[f"not_close_{what}"]]


def _zero_bytes_problems(name, entry):
    """ZeRO-1: parameter-shaped state of w, v, g, b holds 1/size(data) of its parameter's bytes per device; that
    of o (no axis divisible) and s (a scalar) keeps the parameter's sharding."""
    if "error" in entry:
        return _error(entry)
    problems = list(entry["init"] + entry["step"])
    split = [b for b in entry["bytes"] if b["param"] in ("w", "v", "g", "b")]
    kept = [b for b in entry["bytes"] if b["param"] in ("o", "s")]
    # Adafactor keeps factored statistics for the matrices: only its v of b is split.
    if len(split) < (1 if name == "adafactor" else 4):
        problems.append(f"only {len(split)} split leaves: {entry['bytes']}")
    problems += [f"{b['path']}: {b['device']} bytes per device, param {b['param_device']}, data size "
                 f"{entry['data_size']}" for b in split if b["device"] * entry["data_size"] != b["param_device"]]
    problems += [f"{b['path']}: not the parameter's sharding" for b in kept
                 if not b["kept_param_sharding"] or b["device"] != b["param_device"]]
    return problems


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_jitted_init_and_step_keep_state_shardings(report, name):
    problems = _sharding_problems(name, report["follow"][name])
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_sharded_step_equals_one_device_step(report, name):
    problems = _closeness_problems(report["follow"][name])
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_zero1_state_bytes_per_device(report, name, mesh):
    problems = _zero_bytes_problems(name, report["zero"][mesh][name])
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_zero1_three_steps_equal_one_device(report, name, mesh):
    problems = _closeness_problems(report["zero"][mesh][name])
    assert problems == [], "\n".join(problems)


def test_every_case_of_the_report(report):
    """All the cases above at once (the default test tier runs a sample of the parametrized ones)."""
    problems = []
    for name in OPTIMIZER_NAMES:
        follow = report["follow"][name]
        problems += [f"follow/{name}: {p}" for p in _sharding_problems(name, follow) + _closeness_problems(follow)]
        for mesh in MESHES:
            zero = report["zero"][mesh][name]
            problems += [f"zero/{mesh}/{name}: {p}"
                         for p in _zero_bytes_problems(name, zero) + _closeness_problems(zero)]
    assert problems == [], "\n".join(problems)


def test_factored_statistics_on_devices(report):
    entry = report["follow"]["adafactor"]
    assert "error" not in entry, entry.get("error")
    specs = entry["state_specs"]
    assert specs["[0].v_col['w']"] == "P('model',)" and specs["[0].v_row['v']"] == "P()"
    assert specs["[0].v['b']"] == "P('data',)"


def test_data_parallel_example(report):
    example = report["example"]
    assert "error" not in example, example.get("error")
    assert example["data_size"] == 8
    assert example["state_problems"] == []
    assert len(example["bytes"]) == 6  # mu and nu of w1, b1, w2
    for b in example["bytes"]:
        assert b["device"] * 8 == b["full"], b
    assert example["not_close_params"] == [], example["worst_rel_params"]
    assert example["not_close_state"] == [], example["worst_rel_state"]


def test_example_runs_on_any_device_count():
    """The docstring's example, here on this process's devices (one, in float64)."""
    doc = jol.sharding.__doc__
    code = textwrap.dedent(doc[doc.rindex("::\n") + 3:])
    ns = {"__name__": "sharding_example"}
    exec(compile(code, "jaxopt_lite/sharding.py (docstring example)", "exec"), ns)  # noqa: S102
    assert np.all(np.isfinite(np.asarray(ns["params"]["w1"])))


# --------------------------------------------------------------------------- #
# Eager init: every state leaf on the parameters' devices
# --------------------------------------------------------------------------- #

EAGER_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxopt_lite as jol

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("x", "y"))
    params = {"w": jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("x", "y"))),
              "b": jax.device_put(jnp.ones(4), NamedSharding(mesh, P()))}
    optimizers = {
        "adam": jol.adam(1e-3),
        "chain": jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(jol.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10))),
        "noisy_sgd": jol.noisy_sgd(0.1, key=0),
        "inject_hyperparams": jol.inject_hyperparams(jol.adam)(learning_rate=1e-3),
    }
    for name, opt in optimizers.items():
        state = opt.init(params)
        off_mesh = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
                    if x.sharding.device_set != set(mesh.devices.flat)]
        step = jax.jit(lambda p, s, opt=opt: opt.update(p, s, p),
                       in_shardings=(jax.tree.map(lambda x: x.sharding, params), jax.tree.map(lambda x: x.sharding, state)))
        step(params, state)  # the state's own shardings are valid input shardings
        print("RESULT", name, off_mesh)
    """
)


def test_eager_init_puts_every_state_leaf_on_the_params_devices():
    """Step counts, PRNG keys and injected hyperparameters are replicated on the params' mesh (not left on
    one device), so ``jax.tree.map(lambda x: x.sharding, state)`` serves as a jitted step's input shardings."""
    proc = subprocess.run([sys.executable, "-c", EAGER_SCRIPT], check=False, env=eight_cpu_devices_env(),
                          capture_output=True, text=True, timeout=600)
    results = [line.split(" ", 2)[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == 4, proc.stderr[-3000:]
    for name, off_mesh in results:
        assert off_mesh == "[]", f"{name}: state leaves off the params' mesh: {off_mesh}"
