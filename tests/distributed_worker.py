"""One process of tests/test_multiprocess.py (not a test module; run as a script).

``train``: one of several ``jax.distributed`` processes on localhost; trains a
small MLP with AdamW on a global mesh over every process's CPU devices, with
ZeRO-1 optimizer state, and saves params and optimizer state with Orbax.
``resume``: a single process restores that checkpoint onto another mesh (data x
model, params split over "model"), trains on, and also runs the same number of
steps uninterrupted on one device for comparison.

Usage: ``python distributed_worker.py MODE OUT_JSON CKPT_DIR [PROCESS_ID NUM_PROCESSES PORT]``.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxopt_lite as jol

STEPS_BEFORE, STEPS_AFTER = 3, 3
SHAPES = {"w1": (8, 16), "b1": (16,), "w2": (16, 4)}


def problem():
    """Deterministic params and a fixed global batch (the same in every process)."""
    rng = np.random.default_rng(0)
    params = {k: (0.5 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    x = rng.standard_normal((32, 8)).astype(np.float32)
    y = np.sin(x[:, :4]).astype(np.float32)
    return params, x, y


def loss_fn(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] - y) ** 2)


def optimizer():
    schedule = jol.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=2, decay_steps=10)
    return jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(schedule, weight_decay=1e-3))


def global_array(value, sharding):
    """An array over ``sharding``'s devices (of every process) from a host value every process holds."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def train_steps(opt, params, opt_state, x, y, shardings, n):
    param_sh, state_sh, batch_sh = shardings

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return jol.apply_updates(params, updates), opt_state, loss

    if param_sh is not None:
        step = jax.jit(
            step,
            in_shardings=(param_sh, state_sh, batch_sh, batch_sh),
            out_shardings=(param_sh, state_sh, NamedSharding(batch_sh.mesh, P())),
        )
    losses = []
    for _ in range(n):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    return params, opt_state, losses


def to_host(tree):
    """Every leaf gathered to a host list (each process holds the whole of a fully addressable array)."""
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)).tolist(), tree)


def train(out, ckpt_dir, process_id, num_processes, port):
    import orbax.checkpoint as ocp

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    host_params, x, y = problem()
    param_sh = jax.tree.map(lambda _: NamedSharding(mesh, P()), host_params)
    batch_sh = NamedSharding(mesh, P("data"))
    params = jax.tree.map(global_array, host_params, param_sh)
    x, y = global_array(x, batch_sh), global_array(y, batch_sh)

    opt = optimizer()
    state_sh = jol.sharding.state_shardings(opt, params, param_sh, zero_axis="data")
    opt_state = jol.sharding.init_sharded(opt, params, param_sh, zero_axis="data")
    params, opt_state, losses = train_steps(opt, params, opt_state, x, y, (param_sh, state_sh, batch_sh), STEPS_BEFORE)

    mu = opt_state[1][0].mu["w1"]  # adamw's first moment of w1: split over the 8 devices of both processes
    shard_rows = sorted({s.data.shape for s in mu.addressable_shards})
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(ckpt_dir, {"params": params, "opt_state": opt_state})
    checkpointer.wait_until_finished()
    result = {
        "process_id": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "losses": losses,
        "mu_w1_shape": list(mu.shape),
        "mu_w1_local_shard_shapes": [list(s) for s in shard_rows],
        "mu_w1_local_shards": len(mu.addressable_shards),
    }
    with open(out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


def resume(out, ckpt_dir):
    import orbax.checkpoint as ocp

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    host_params, x_host, y_host = problem()
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None)}
    param_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    batch_sh = NamedSharding(mesh, P("data"))
    opt = optimizer()
    abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), host_params)
    state_sh = jol.sharding.state_shardings(opt, abstract_params, param_sh, zero_axis="data")
    abstract_state = jax.eval_shape(opt.init, abstract_params)
    target = {
        "params": jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params, param_sh
        ),
        "opt_state": jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh
        ),
    }
    restored = ocp.StandardCheckpointer().restore(ckpt_dir, target)
    params, opt_state = restored["params"], restored["opt_state"]
    restored_ok = all(
        a.sharding.is_equivalent_to(s, a.ndim)
        for a, s in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves((param_sh, state_sh)))
    )
    x, y = jax.device_put(x_host, batch_sh), jax.device_put(y_host, batch_sh)
    params, opt_state, losses_after = train_steps(
        opt, params, opt_state, x, y, (param_sh, state_sh, batch_sh), STEPS_AFTER
    )

    # The same steps uninterrupted, on one device.
    ref_params = jax.tree.map(jnp.asarray, host_params)
    ref_state = opt.init(ref_params)
    ref_params, ref_state, ref_losses = train_steps(
        opt,
        ref_params,
        ref_state,
        jnp.asarray(x_host),
        jnp.asarray(y_host),
        (None, None, None),
        STEPS_BEFORE + STEPS_AFTER,
    )
    result = {
        "devices": jax.device_count(),
        "restored_with_target_shardings": restored_ok,
        "count_after": int(opt_state[1][0].count),
        "losses_after": losses_after,
        "reference_losses": ref_losses,
        "params": to_host(params),
        "reference_params": to_host(ref_params),
        "state": to_host(opt_state),
        "reference_state": to_host(ref_state),
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    mode, out, ckpt = sys.argv[1:4]
    if mode == "train":
        train(out, ckpt, *map(int, sys.argv[4:7]))
    else:
        resume(out, ckpt)
