"""A vmapped learning-rate sweep vs a Python loop of jitted runs.

The same training run (the digits MLP, ``adam``, a fixed sequence of
mini-batches) for ``K`` learning rates: once as one ``jit(vmap(train))``
program, once as ``K`` calls of one ``jit(train)`` (compiled once, the rate an
argument). The figure is the loop's time over the vmapped program's, with the
samples of the two interleaved; both must also compute the same losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import convergence, optimizers, problems
from benchmarks.context import Context, Task, error_record
from benchmarks.loops import make_step, run_steps, vmap_sweep
from benchmarks.timing import Runner, compile_timed, measure

OPTIMIZER = "adam"
SWEEP_SIZES = (1, 8, 32, 128)
COST = {1: 1.0, 8: 2.0, 32: 5.0, 128: 15.0}  # seconds on 2 cores, default mode
BATCH = 64


def settings(ctx: Context) -> dict:
    return {"optimizer": OPTIMIZER, "steps": ctx.config.pick(20, 100, 200), "batch_size": BATCH,
            "problem": f"digits MLP {convergence.mlp_settings(ctx)['sizes']}"}


def trainer(ctx: Context):
    """``(lr, batches) -> losses``: ``steps`` adam steps on the given mini-batches."""
    spec = next(s for s in optimizers.TABLE if s.name == OPTIMIZER)
    params0 = problems.mlp_init(jax.random.key(ctx.config.seed), tuple(convergence.mlp_settings(ctx)["sizes"]))

    def train(lr, batches):
        tx = optimizers.build(ctx.lib, spec, lr)
        step = make_step(ctx.lib, tx, problems.mlp_loss)
        return run_steps(step, params0, tx.init(params0), batches)[2]

    return spec, train


def batches(ctx: Context, steps: int) -> tuple[jax.Array, jax.Array]:
    data = problems.digits_data(ctx.config.seed)
    rng = np.random.default_rng(ctx.config.seed)
    idx = rng.integers(0, len(data["y_train"]), size=(steps, BATCH))
    return jnp.asarray(data["x_train"][idx]), jnp.asarray(data["y_train"][idx])


def measure_sweep(ctx: Context, k: int) -> dict:
    section = ctx.section("sweep")
    spec, train = trainer(ctx)
    data = batches(ctx, section["steps"])
    grid = jnp.asarray(convergence.lr_grid(spec.mlp_lr, k, 1.5 if k > 1 else 0.0))
    rates = [grid[i] for i in range(k)]

    single = section.get("_single")
    if single is None:  # the loop's program does not depend on K: compile it once
        single = section["_single"] = compile_timed(jax.jit(train), rates[0], data)
        section["loop_compile"] = single.to_json()
    batched = compile_timed(jax.jit(vmap_sweep(ctx.lib, train)), grid, data)

    runners = {
        "vmap": Runner(lambda _: batched.executable(grid, data), None),
        "loop": Runner(lambda _: [single.executable(lr, data) for lr in rates], None),
    }
    timings = measure(runners, ctx.config.repeats, warmup_calls=1)
    # Both must compute the same runs. Early losses agree to float32 rounding; later ones only where training
    # is stable (at the largest rates it is chaotic, and rounding differences of the batched matmuls grow).
    vmapped = np.asarray(batched.executable(grid, data), np.float64)
    looped = np.stack([np.asarray(single.executable(lr, data), np.float64) for lr in rates])
    diff = np.abs(vmapped - looped) / np.maximum(np.abs(looped), 1e-6)
    return {
        "k": k,
        "vmap": {"time": timings["vmap"].to_json(), "compile": batched.to_json()},
        "loop": {"time": timings["loop"].to_json()},
        "speedup_vmap_vs_loop": timings["loop"].median_s / timings["vmap"].median_s,
        "vmap_seconds_per_run": timings["vmap"].median_s / k,
        "loop_seconds_per_run": timings["loop"].median_s / k,
        "max_rel_diff_first_10_steps": float(np.nanmax(diff[:, :10])),
        "median_rel_diff_final_loss": float(np.nanmedian(diff[:, -1])),
    }


def _task(k: int) -> Task:
    def run(ctx: Context) -> None:
        section = ctx.section("sweep")
        if "rows" not in section:
            section.update(settings(ctx), rows=[])
        try:
            section["rows"].append(measure_sweep(ctx, k))
        except Exception as exc:  # noqa: BLE001
            section["rows"].append({"k": k, **error_record(exc)})

    return Task("sweep", f"lr sweep: K={k}, vmap vs loop", run, cost=COST[k])


def tasks(ctx: Context, section: str) -> list[Task]:
    return [_task(k) for k in SWEEP_SIZES]
