"""Low-memory state and low-precision parameters: what each mode costs per step, and what it does to training.

* ``update`` section (:func:`measure_modes`): one leaf of float32 (or bfloat16) parameters, Adam's update plus
  ``apply_updates``, jitted with params and state donated, every mode timed in the same interleaved run: the median
  step, its ratio to float32 Adam's, and the state bytes per parameter from ``jax.eval_shape(init)``. Optax's
  ``adam(mu_dtype=bfloat16)`` is the peer.
* ``mlp`` section (:func:`mlp_modes`): the digits MLP trained by Adam with warmup-cosine at the sweep's best rate in
  each mode, against float32; and at a tenth of that rate, where most steps fall below half a bfloat16 spacing of
  the weights, so that plain bfloat16 parameters stall and the remedies show what they are for.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import optimizers, problems
from benchmarks.context import Context, Task, error_record, finite_or_none
from benchmarks.loops import make_step, run_epochs
from benchmarks.speed import LR, donated_runner, peer_libraries, update_and_apply
from benchmarks.timing import Runner, compile_timed, measure
from benchmarks.transformer import bytes_per_param

BASELINE = "adam_float32"
# name -> (params dtype, builder of the transformation from the library, what it is)
MODES: dict[str, tuple[jnp.dtype, Callable, str]] = {
    BASELINE: (jnp.float32, lambda lib: lib.adam(LR), "adam(1e-3), float32 params and state"),
    "adam_bf16_moments": (jnp.float32, lambda lib: lib.adam(LR, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
                          "mu_dtype = nu_dtype = bfloat16 (float32 arithmetic, rounded to nearest)"),
    "low_precision_state_sr": (jnp.float32, lambda lib: lib.low_precision_state(lib.adam(LR), key=0),
                               "low_precision_state(adam, key=0): bfloat16 moments, stochastic rounding"),
    "quantize_state_8bit": (jnp.float32, lambda lib: lib.quantize_state(lib.adam(LR)), "quantize_state(adam): 8-bit"),
    "quantize_state_4bit": (jnp.float32, lambda lib: lib.quantize_state(lib.adam(LR), bits=4),
                            "quantize_state(adam, bits=4)"),
    "quantize_state_4bit_sr": (jnp.float32, lambda lib: lib.quantize_state(lib.adam(LR), bits=4, key=0),
                               "quantize_state(adam, bits=4, key=0): stochastic rounding"),
    "bf16_params": (jnp.bfloat16, lambda lib: lib.adam(LR),
                    "bfloat16 params and moments, rounded to nearest (apply_updates)"),
    "bf16_params_sr": (jnp.bfloat16, lambda lib: lib.chain(lib.adam(LR), lib.stochastic_rounding(0)),
                       "bfloat16 params and moments, chain(adam, stochastic_rounding(0))"),
    "bf16_params_kahan": (jnp.bfloat16, lambda lib: lib.chain(lib.adam(LR), lib.kahan_summation()),
                          "bfloat16 params and moments, chain(adam, kahan_summation())"),
}
OPTAX_PEER = "optax_adam_bf16_mu"


def n_params(ctx: Context) -> int:
    return min(ctx.config.pick(2**16, 2**22, 2**24), ctx.config.max_params)


def measure_modes(ctx: Context, n: int) -> dict:
    rng = np.random.default_rng(ctx.config.seed)
    grads32 = {"w": jax.device_put(rng.standard_normal(n, dtype=np.float32))}
    builders: dict[str, tuple[Callable, jnp.dtype]] = {
        mode: (lambda b=build: b(ctx.lib), dtype) for mode, (dtype, build, _) in MODES.items()
    }
    optax = peer_libraries(ctx).get("optax")
    if optax is not None:
        builders[OPTAX_PEER] = (lambda: optax.adam(LR, mu_dtype=jnp.bfloat16), jnp.float32)
    runners: dict[str, Runner] = {}
    records: dict[str, dict] = {}
    for mode, (build, dtype) in builders.items():
        try:
            tx = build()
            params = {"w": jnp.full((n,), 0.01, dtype)}
            grads = jax.tree.map(lambda g, d=dtype: g.astype(d), grads32)
            lib = optax if mode == OPTAX_PEER else ctx.lib
            runners[mode], compiled = donated_runner(update_and_apply(lib, tx), params, tx.init(params), grads)
            records[mode] = {"state_bytes_per_param": bytes_per_param(tx, params), "compile": compiled.to_json()}
        except Exception as exc:  # noqa: BLE001 - the run goes on; the report shows the error
            records[mode] = error_record(exc)
    timings = measure(runners, ctx.config.repeats, min_sample_s=ctx.config.pick(0.005, 0.02))
    base = timings.get(BASELINE)
    for mode, t in timings.items():
        records[mode]["time"] = t.to_json()
        records[mode]["vs_float32_adam"] = t.median_s / base.median_s if base else None
    return {"n_params": n, "modes": records,
            "descriptions": {m: d for m, (_, _, d) in MODES.items()} | {OPTAX_PEER: "optax.adam(1e-3, mu_dtype=bf16)"}}


# --- training quality: the digits MLP ----------------------------------------------------------------------

# name -> (params dtype, tx from (lib, schedule)); "_slow" rows run at a tenth of the rate.
MLP_MODES: dict[str, tuple[jnp.dtype, Callable]] = {
    "float32": (jnp.float32, lambda lib, lr: lib.adam(lr)),
    "bf16_nearest": (jnp.bfloat16, lambda lib, lr: lib.adam(lr)),
    "bf16_stochastic": (jnp.bfloat16, lambda lib, lr: lib.chain(lib.adam(lr), lib.stochastic_rounding(0))),
    "bf16_kahan": (jnp.bfloat16, lambda lib, lr: lib.chain(lib.adam(lr), lib.kahan_summation())),
    "8bit_state": (jnp.float32, lambda lib, lr: lib.quantize_state(lib.adam(lr), min_size=0)),
    "bf16_state_stochastic": (jnp.float32, lambda lib, lr: lib.low_precision_state(lib.adam(lr), key=0)),
}
SLOW = ("float32", "bf16_nearest", "bf16_stochastic", "bf16_kahan")


def _mlp_run(ctx: Context, mode: str, lr: float) -> dict:
    from benchmarks.convergence import mlp_data, mlp_settings  # convergence imports this module's tasks

    lib, settings = ctx.lib, mlp_settings(ctx)
    dtype, build = MLP_MODES[mode]
    data = mlp_data(ctx)
    steps = int(np.prod(data["orders"].shape[:2]))
    schedule = lib.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=max(steps // 20, 1), decay_steps=steps)
    tx = build(lib, schedule)
    params0 = problems.mlp_init(jax.random.key(ctx.config.seed), tuple(settings["sizes"]))
    params0 = jax.tree.map(lambda a: a.astype(dtype), params0)

    def train(d):
        def evaluate(p):
            return {"train_loss": problems.mlp_loss(p, (d["x_train"], d["y_train"])),
                    "val_loss": problems.mlp_loss(p, (d["x_val"], d["y_val"])),
                    "test_acc": problems.mlp_accuracy(p, d["x_test"], d["y_test"])}

        step = make_step(lib, tx, problems.mlp_loss)
        return run_epochs(step, params0, tx.init(params0), (d["x_train"], d["y_train"]), d["orders"], evaluate)[1]

    compiled = compile_timed(jax.jit(train), data)
    evals = jax.tree.map(np.asarray, compiled.executable(data))
    return {"lr": lr, "final_train_loss": finite_or_none(evals["train_loss"][-1]),
            "final_val_loss": finite_or_none(evals["val_loss"][-1]),
            "test_accuracy": finite_or_none(evals["test_acc"][-1]),
            "train_loss_per_epoch": [finite_or_none(v) for v in evals["train_loss"]],
            "state_bytes_per_param": bytes_per_param(tx, params0), "compile": compiled.to_json()}


def mlp_modes(ctx: Context) -> dict:
    """Every mode at the MLP sweep's best Adam rate, and :data:`SLOW` at a tenth of it; 'vs float32' per rate."""
    best = ctx.section("mlp").get("results", {}).get("adam", {}).get("best_lr")
    lr = best if best is not None else next(s.mlp_lr for s in optimizers.TABLE if s.name == "adam")
    out: dict[str, dict] = {}
    for suffix, factor, modes in (("", 1.0, list(MLP_MODES)), ("_slow", 0.1, SLOW)):
        for mode in modes:
            try:
                out[mode + suffix] = _mlp_run(ctx, mode, lr * factor)
            except Exception as exc:  # noqa: BLE001
                out[mode + suffix] = error_record(exc)
        reference = out.get("float32" + suffix, {}).get("final_val_loss")
        for mode in modes:
            r = out[mode + suffix]
            if reference and r.get("final_val_loss") is not None and mode != "float32":
                r["val_loss_vs_float32"] = r["final_val_loss"] / reference - 1.0
    return out


def mlp_task(ctx: Context) -> list[Task]:
    if not hasattr(ctx.lib, "quantize_state"):
        return []

    def run(c: Context) -> None:
        try:
            c.section("mlp")["low_precision"] = mlp_modes(c)
        except Exception as exc:  # noqa: BLE001
            c.section("mlp")["low_precision"] = error_record(exc)

    return [Task("mlp", "digits MLP: low-precision parameters and low-memory state", run,
                 cost=ctx.config.pick(8.0, 20.0, 30.0))]


def tasks(ctx: Context) -> list[Task]:
    if not hasattr(ctx.lib, "quantize_state"):
        return []
    n = n_params(ctx)

    def run(c: Context) -> None:
        try:
            c.section("update")["state_modes"] = measure_modes(c, n)
        except Exception as exc:  # noqa: BLE001
            c.section("update")["state_modes"] = error_record(exc)

    return [Task("update", f"update: low-memory state modes, {n:,} params", run, cost=4.0 + 30.0 * n / 2**24)]
