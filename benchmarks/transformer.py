"""A small decoder-only transformer language model, trained by the optimizers users reach for today.

* ``transformer``: a character-level decoder-only transformer (pre-norm with RMSNorm,
  causal multi-head attention, a GELU MLP, learned positions, untied embeddings) on
  generated text: lines of sums such as ``481+37=518``. The first part of each line is
  noise the model can only learn the statistics of; the sum is learnable. Every
  optimizer of :data:`SPECS` the library has (AdamW, Muon, SOAP, Shampoo, Schedule-Free
  AdamW, Prodigy, C-AdamW) runs at its best learning rate from a ``jit(vmap)`` sweep
  over a few rates around its usual one. The section records the loss against steps
  and against wall time, and the validation loss at the end (at the averaged iterate for
  schedule-free). The low-memory and low-precision variants (:data:`LOW_PRECISION`:
  bfloat16 parameters rounded to nearest, stochastically, or Kahan-compensated; 8-bit
  moments; bfloat16 moments rounded stochastically) then run at AdamW's best rate with a
  warmup-cosine schedule (small late steps
  are where bfloat16 rounding to nearest loses updates), against float32 AdamW on the same
  schedule. Last,
  Muon's step with every same-shaped matrix in one batched Newton-Schulz call is timed
  against one call per leaf, at 24 layers.

Keys that start with ``_`` hold full arrays for the plots and stay out of ``results.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.context import Context, Task, downsample, error_record, finite_or_none
from benchmarks.loops import vmap_sweep
from benchmarks.timing import Runner, compile_timed, measure

SECTION = "transformer"


def settings(ctx: Context) -> dict:
    pick = ctx.config.pick
    return {
        "d_model": pick(32, 64, 128),
        "layers": pick(1, 2, 4),
        "heads": pick(2, 4, 4),
        "context": pick(16, 32, 64),
        "batch_size": pick(8, 16, 32),
        "steps": pick(20, 200, 1000),
        "lr_factors": pick([1.0], [1 / 3, 1.0, 3.0], [0.1, 1 / 3, 1.0, 3.0, 10.0]),
        "validation_batches": pick(2, 8, 16),
        "muon_layers": pick(4, 24, 24),
    }


# --- data and model -------------------------------------------------------------------------------------


def corpus(seed: int, lines: int = 20_000) -> tuple[np.ndarray, str]:
    """Character codes of generated sums (``a+b=c``, ``a, b < 1000``), and the alphabet."""
    rng = np.random.default_rng(seed)
    text = "".join(f"{a}+{b}={a + b}\n" for a, b in rng.integers(0, 1000, (lines, 2)))
    alphabet = "".join(sorted(set(text)))
    return np.frombuffer(text.encode(), np.uint8).astype(np.int32), alphabet


def batches(ctx: Context, n: int, seed_offset: int) -> jax.Array:
    """``[n, batch, context + 1]`` token windows of the corpus (fixed by the seed)."""
    s = settings(ctx)
    codes, alphabet = corpus(ctx.config.seed)
    lookup = np.zeros(256, np.int32)
    lookup[np.frombuffer(alphabet.encode(), np.uint8)] = np.arange(len(alphabet))
    tokens = lookup[codes]
    rng = np.random.default_rng(ctx.config.seed + seed_offset)
    starts = rng.integers(0, len(tokens) - s["context"] - 1, (n, s["batch_size"]))
    return jnp.asarray(tokens[starts[..., None] + np.arange(s["context"] + 1)])


def vocab_size(ctx: Context) -> int:
    return len(corpus(ctx.config.seed)[1])


def init_params(key: jax.Array, vocab: int, d: int, layers: int, context: int) -> dict:
    keys = iter(jax.random.split(key, 3 + 4 * layers))

    def normal(shape, scale=0.02):
        return scale * jax.random.normal(next(keys), shape, jnp.float32)

    blocks = [
        {
            "norm1": jnp.ones(d),
            "qkv": normal((d, 3 * d)),
            "proj": normal((d, d)),
            "norm2": jnp.ones(d),
            "up": normal((d, 4 * d)),
            "down": normal((4 * d, d)),
        }
        for _ in range(layers)
    ]
    return {
        "embed": normal((vocab, d)),
        "pos": normal((context, d)),
        "blocks": blocks,
        "norm": jnp.ones(d),
        "unembed": normal((d, vocab)),
    }


def _rms_norm(x, scale):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def loss_fn(heads: int):
    """Mean next-character cross-entropy (nats); parameters of any float dtype are computed in float32."""

    def loss(params, window):
        p = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        tokens, targets = window[:, :-1], window[:, 1:]
        t = tokens.shape[-1]
        x = p["embed"][tokens] + p["pos"][:t]
        causal = jnp.tril(jnp.ones((t, t), bool))
        for b in p["blocks"]:
            q, k, v = jnp.split(_rms_norm(x, b["norm1"]) @ b["qkv"], 3, axis=-1)
            split = lambda z: z.reshape(*z.shape[:-1], heads, -1)  # noqa: E731
            scores = jnp.einsum("bqhc,bkhc->bhqk", split(q), split(k)) / np.sqrt(q.shape[-1] // heads)
            attn = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
            x = x + jnp.einsum("bhqk,bkhc->bqhc", attn, split(v)).reshape(x.shape) @ b["proj"]
            x = x + jax.nn.gelu(_rms_norm(x, b["norm2"]) @ b["up"]) @ b["down"]
        logits = _rms_norm(x, p["norm"]) @ p["unembed"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1))

    return loss


def hidden_matrices(params: Any) -> Any:
    """Muon's dimension numbers: the attention and MLP matrices; embeddings, positions, norms and the
    output layer go to AdamW (Jordan's and Moonlight's convention)."""
    import jaxopt_lite as jol

    none = jax.tree.map(lambda _: None, params)
    return {
        **none,
        "blocks": [
            {k: jol.contrib.MuonDimensionNumbers() if jnp.ndim(v) == 2 else None for k, v in b.items()}
            for b in params["blocks"]
        ],
    }


# --- the optimizers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMSpec:
    """An optimizer of this section: ``build(lib, lr, steps)`` and the centre of its learning-rate sweep."""

    name: str
    needs: str  # the attribute path the library must have
    lr: float
    build: Callable[[Any, Any, int], Any]
    param_dtype: str = "float32"
    eval_params: Callable[[Any, Any, Any], Any] | None = None  # (lib, state, params) -> where to evaluate


def _has(lib, path: str) -> bool:
    obj = lib
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def _schedule_free_eval(lib, state, params):
    return lib.contrib.schedule_free_eval_params(state, params)


SPECS: tuple[LMSpec, ...] = (
    LMSpec("adamw", "adamw", 1e-3, lambda lib, lr, n: lib.adamw(lr, weight_decay=0.01)),
    LMSpec(
        "muon",
        "muon",
        0.02,
        lambda lib, lr, n: lib.muon(
            lr,
            adam_learning_rate=3e-3,
            weight_decay=0.01,
            adam_weight_decay=0.01,
            muon_weight_dimension_numbers=hidden_matrices,
        ),
    ),
    LMSpec("soap", "soap", 3e-3, lambda lib, lr, n: lib.soap(lr)),
    LMSpec("shampoo", "shampoo", 1e-3, lambda lib, lr, n: lib.shampoo(lr)),
    LMSpec(
        "schedule_free_adamw",
        "contrib.schedule_free_adamw",
        3e-3,
        lambda lib, lr, n: lib.contrib.schedule_free_adamw(lr, warmup_steps=max(n // 10, 1), weight_decay=0.01),
        eval_params=_schedule_free_eval,
    ),
    LMSpec("prodigy", "contrib.prodigy", 1.0, lambda lib, lr, n: lib.contrib.prodigy(lr, weight_decay=0.01)),
    LMSpec("cautious_adamw", "cautious_adamw", 3e-3, lambda lib, lr, n: lib.cautious_adamw(lr, weight_decay=0.01)),
)


def _cosine(lib, lr, n):
    """Warmup over the first tenth, then a cosine decay to 0: late steps are small, as in real training."""
    return lib.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=max(n // 10, 1), decay_steps=n)


def _adamw_cosine(lib, lr, n):
    return lib.adamw(_cosine(lib, lr, n), weight_decay=0.01)


# Run at AdamW's best rate with a cosine schedule, not swept (``lr`` unused); compared with the first row.
LOW_PRECISION: tuple[LMSpec, ...] = (
    LMSpec("adamw_cosine", "adamw", 0.0, _adamw_cosine),
    LMSpec("adamw_cosine_bf16_nearest", "adamw", 0.0, _adamw_cosine, param_dtype="bfloat16"),
    LMSpec(
        "adamw_cosine_bf16_stochastic",
        "stochastic_rounding",
        0.0,
        lambda lib, lr, n: lib.chain(_adamw_cosine(lib, lr, n), lib.stochastic_rounding(0)),
        param_dtype="bfloat16",
    ),
    LMSpec(
        "adamw_cosine_bf16_kahan",
        "kahan_summation",
        0.0,
        lambda lib, lr, n: lib.chain(_adamw_cosine(lib, lr, n), lib.kahan_summation()),
        param_dtype="bfloat16",
    ),
    LMSpec(
        "adamw_cosine_8bit",
        "quantize_state",
        0.0,
        lambda lib, lr, n: lib.quantize_state(_adamw_cosine(lib, lr, n), bits=8),
    ),
    LMSpec(
        "adamw_cosine_bf16_state_stochastic",
        "low_precision_state",
        0.0,
        lambda lib, lr, n: lib.low_precision_state(_adamw_cosine(lib, lr, n), key=0),
    ),
)


def _params0(ctx: Context, spec: LMSpec) -> Any:
    s = settings(ctx)
    p = init_params(jax.random.key(ctx.config.seed), vocab_size(ctx), s["d_model"], s["layers"], s["context"])
    return jax.tree.map(lambda a: a.astype(spec.param_dtype), p)


def trainer(ctx: Context, spec: LMSpec):
    """``(lr, train_windows, val_windows) -> (losses per step, final validation loss)``."""
    lib, s = ctx.lib, settings(ctx)
    loss = loss_fn(s["heads"])
    params0 = _params0(ctx, spec)

    def train(lr, windows, val_windows):
        tx = spec.build(lib, lr, s["steps"])

        def body(carry, window):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, window)
            updates, state = tx.update(grads, state, params)
            return (lib.apply_updates(params, updates), state), value

        (params, state), losses = jax.lax.scan(body, (params0, tx.init(params0)), windows)
        at = spec.eval_params(lib, state, params) if spec.eval_params else params
        val = jnp.mean(jax.vmap(lambda w: loss(at, w))(val_windows))
        return losses, val

    return train


def bytes_per_param(tx: Any, params: Any) -> float:
    """The bytes of ``tx``'s state (``jax.eval_shape`` of its ``init``: nothing runs) per parameter."""
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / sum(x.size for x in jax.tree.leaves(params))


def state_bytes_per_param(ctx: Context, spec: LMSpec, lr: float) -> float:
    return bytes_per_param(spec.build(ctx.lib, lr, settings(ctx)["steps"]), _params0(ctx, spec))


def _data(ctx: Context) -> tuple[jax.Array, jax.Array]:
    section = ctx.section(SECTION)
    if "_data" not in section:
        s = settings(ctx)
        section["_data"] = (batches(ctx, s["steps"], 1), batches(ctx, s["validation_batches"], 2))
    return section["_data"]


def _timed_run(ctx: Context, spec: LMSpec, lr: float) -> dict:
    """One run at ``lr``, compiled with the rate as an argument and timed (the better of two runs)."""
    train_windows, val_windows = _data(ctx)
    compiled = compile_timed(jax.jit(trainer(ctx, spec)), jnp.float32(lr), train_windows, val_windows)
    best, out = float("inf"), None
    for _ in range(2):
        t = time.perf_counter()
        out = jax.block_until_ready(compiled.executable(jnp.float32(lr), train_windows, val_windows))
        best = min(best, time.perf_counter() - t)
    losses, val = (np.asarray(x, np.float64) for x in out)
    steps = len(losses)
    return {
        "lr": lr,
        "compile": compiled.to_json(),
        "run_s": best,
        "step_s": best / steps,
        "final_val_loss": finite_or_none(val),
        "final_train_loss": finite_or_none(np.mean(losses[-max(steps // 10, 1) :])),
        "train_loss": downsample(losses),
        "_train_loss": losses,
        "state_bytes_per_param": state_bytes_per_param(ctx, spec, lr),
    }


def run_swept(ctx: Context, spec: LMSpec) -> dict:
    s = settings(ctx)
    train_windows, val_windows = _data(ctx)
    grid = jnp.asarray(np.asarray(s["lr_factors"]) * spec.lr, jnp.float32)
    record: dict[str, Any] = {"lr_grid": np.asarray(grid).tolist()}
    if len(grid) > 1:
        compiled = compile_timed(jax.jit(vmap_sweep(ctx.lib, trainer(ctx, spec))), grid, train_windows, val_windows)
        _, vals = jax.block_until_ready(compiled.executable(grid, train_windows, val_windows))
        vals = np.asarray(vals, np.float64)
        record["sweep_compile"] = compiled.to_json()
        record["final_val_loss_per_lr"] = [finite_or_none(v) for v in vals]
        best = float(grid[int(np.nanargmin(np.where(np.isfinite(vals), vals, np.nan)))])
    else:
        best = float(grid[0])
    record.update(_timed_run(ctx, spec, best))
    return record


def run_low_precision(ctx: Context, spec: LMSpec) -> dict:
    results = ctx.section(SECTION).get("results", {})
    lr = results.get("adamw", {}).get("lr", next(s.lr for s in SPECS if s.name == "adamw"))
    record = _timed_run(ctx, spec, lr)
    reference = results.get(LOW_PRECISION[0].name, {}).get("final_val_loss")
    if reference and record["final_val_loss"] is not None and spec is not LOW_PRECISION[0]:
        record["val_loss_vs_float32"] = record["final_val_loss"] / reference - 1.0
    return record


# --- Muon: one batched Newton-Schulz call vs one per leaf ------------------------------------------------


def muon_batching(ctx: Context) -> dict:
    lib, s = ctx.lib, settings(ctx)
    d, layers = s["d_model"], s["muon_layers"]
    shapes = {"qkv": (d, 3 * d), "proj": (d, d), "up": (d, 4 * d), "down": (4 * d, d)}
    rng = np.random.default_rng(ctx.config.seed)
    grads = [{k: jnp.asarray(rng.standard_normal(v), jnp.float32) for k, v in shapes.items()} for _ in range(layers)]
    tx = lib.contrib.scale_by_muon()
    state = tx.init(grads)
    per_leaf = [tx.init(g) for g in jax.tree.leaves(grads)]

    def batched(g, st):
        return tx.update(g, st)[0]

    def one_per_leaf(g, states):  # the same transform on one-leaf trees: nothing to stack
        return [tx.update(x, st)[0] for x, st in zip(jax.tree.leaves(g), states)]

    cb = compile_timed(jax.jit(batched), grads, state)
    cl = compile_timed(jax.jit(one_per_leaf), grads, per_leaf)
    runners = {
        "batched": Runner(lambda _: cb.executable(grads, state), None),
        "per_leaf": Runner(lambda _: cl.executable(grads, per_leaf), None),
    }
    t = measure(runners, ctx.config.repeats, warmup_calls=1)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(cb.executable(grads, state)), cl.executable(grads, per_leaf))
    )
    return {
        "layers": layers,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "batched": {"time": t["batched"].to_json(), "compile": cb.to_json()},
        "per_leaf": {"time": t["per_leaf"].to_json(), "compile": cl.to_json()},
        "speedup": t["per_leaf"].median_s / t["batched"].median_s,
        "max_abs_diff": diff,
    }


# --- state memory of every frontier method --------------------------------------------------------------

# Built only to measure their state (jax.eval_shape of init: nothing is compiled or run).
MEMORY_ONLY: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("came", "came", lambda lib: lib.came(1e-3)),
    ("adam_mini", "adam_mini", lambda lib: lib.adam_mini(1e-3)),
    ("kron", "kron", lambda lib: lib.kron(1e-3)),
    ("adafactor", "adafactor", lambda lib: lib.adafactor(1e-3)),
    ("lion", "lion", lambda lib: lib.lion(1e-4)),
    ("sophia", "contrib.sophia", lambda lib: lib.contrib.sophia(1e-3)),
    ("adamw_4bit", "quantize_state", lambda lib: lib.quantize_state(lib.adamw(1e-3), bits=4)),
)


def state_memory(ctx: Context) -> dict:
    """Optimizer state bytes per parameter on this section's model, for the methods not trained above."""
    params = _params0(ctx, SPECS[0])
    return {name: bytes_per_param(build(ctx.lib), params) for name, needs, build in MEMORY_ONLY if _has(ctx.lib, needs)}


# --- tasks ------------------------------------------------------------------------------------------------


def _section(ctx: Context) -> dict:
    section = ctx.section(SECTION)
    if "results" not in section:
        s = settings(ctx)
        section.update(
            s,
            vocab=vocab_size(ctx),
            results={},
            absent=[],
            n_params=sum(x.size for x in jax.tree.leaves(_params0(ctx, SPECS[0]))),
            text="generated sums a+b=c, a, b < 1000, one a line",
        )
    return section


def _task(spec: LMSpec, run: Callable[[Context, LMSpec], dict], cost: float) -> Task:
    def go(ctx: Context) -> None:
        section = _section(ctx)
        if not _has(ctx.lib, spec.needs):
            section["absent"].append(spec.name)
            return
        try:
            section["results"][spec.name] = run(ctx, spec)
        except Exception as exc:  # noqa: BLE001 - one optimizer's failure must not cost the section
            section["results"][spec.name] = error_record(exc)

    return Task(SECTION, f"transformer LM: {spec.name}", go, cost=cost)


def _muon_task() -> Task:
    def go(ctx: Context) -> None:
        section = _section(ctx)
        if _has(ctx.lib, "contrib.scale_by_muon"):
            try:
                section["muon_batching"] = muon_batching(ctx)
            except Exception as exc:  # noqa: BLE001
                section["muon_batching"] = error_record(exc)
        try:
            section["state_bytes_per_param"] = state_memory(ctx)
        except Exception as exc:  # noqa: BLE001
            section["state_bytes_per_param"] = error_record(exc)

    return Task(SECTION, "Muon: batched Newton-Schulz vs one call per leaf; state bytes of the others", go, cost=5.0)


def tasks(ctx: Context, section: str) -> list[Task]:
    """Every optimizer of :data:`SPECS` (``--optimizers`` narrows them; AdamW always runs, the others' reference),
    then the low-precision rows and the Muon timing."""
    cost = ctx.config.pick(1.0, 12.0, 60.0)
    only = ctx.config.optimizers
    swept = [s for s in SPECS if not only or s.name in only or s.name == "adamw"]
    return (
        [_task(s, run_swept, cost) for s in swept]
        + [_task(s, run_low_precision, cost / 3) for s in LOW_PRECISION]
        + [_muon_task()]
    )
