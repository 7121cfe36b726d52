"""Speed suite: one optimizer update step, jitted with params and state donated.

For sgd, momentum, adam, adamw and
``chain(clip_by_global_norm(1.0), adamw(warmup_cosine_decay_schedule(...)))``:

* ``update``: one leaf of 1M..16M float32 parameters (64M with ``--full``; capped by ``--max-params``);
* ``leaves``: 4M parameters (10M with ``--full``) split into 1 to 5000 leaves. The tree path (and Optax's)
  runs up to ``--max-leaves`` leaves (default 300; its XLA compile time grows faster than linearly, to
  minutes at 5000 leaves); the fused layout (and torch.optim) run at every count.

Every figure is relative to a peer timed in the same process, samples
interleaved: the roofline (STREAM kernels of the same total size, see
:mod:`benchmarks.roofline`), Optax, and torch.optim (foreach and fused) when
importable. Compile time is ``lower()`` + ``compile()``, timed; XLA's cost
model gives the bytes it expects the step to move.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import roofline
from benchmarks.context import Context, Task, error_record
from benchmarks.timing import Compiled, Runner, compile_timed, measure

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "clip_adamw_cosine")
# Float32 bytes a fused update must move per parameter: read p, g (+ moments), write p (+ moments);
# the global-norm chain reads g once more for the norm.
NOMINAL_BYTES = {"sgd": 12, "momentum": 20, "adam": 28, "adamw": 28, "clip_adamw_cosine": 32}
DESCRIPTION = {
    "sgd": "sgd(1e-3)",
    "momentum": "sgd(1e-3, momentum=0.9)",
    "adam": "adam(1e-3)",
    "adamw": "adamw(1e-3, weight_decay=1e-4)",
    "clip_adamw_cosine": "chain(clip_by_global_norm(1.0), "
                         "adamw(warmup_cosine_decay_schedule(0, 1e-3, 100, 10k, 1e-5)))",
}
LR, WEIGHT_DECAY, MOMENTUM = 1e-3, 1e-4, 0.9
SCHEDULE = {"init_value": 0.0, "peak_value": 1e-3, "warmup_steps": 100, "decay_steps": 10_000, "end_value": 1e-5}

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


# --- sizes -------------------------------------------------------------------------------------------

def single_leaf_sizes(ctx: Context) -> list[int]:
    sizes = ctx.config.pick([2**16, 2**20], [2**20, 2**22, 2**24], [2**20, 2**22, 2**24, 2**26])
    return [n for n in sizes if n <= ctx.config.max_params] or [min(sizes[0], ctx.config.max_params)]


def leaves_total(ctx: Context) -> int:
    return min(ctx.config.pick(2**18, 2**22, 10_000_000), ctx.config.max_params)


def leaf_counts(ctx: Context) -> list[int]:
    counts = ctx.config.pick([1, 4, 32, 128], [1, 10, 100, 300, 1000, 5000], [1, 100, 1000, 5000])
    return [k for k in counts if k <= leaves_total(ctx)]


def tree_leaf_limit(ctx: Context) -> int:
    """The most leaves at which the tree path (this library's and Optax's) is compiled: ``--max-leaves``."""
    return ctx.config.max_leaves or ctx.config.pick(32, 300, 5000)


# Rough XLA:CPU compile seconds of one tree-path step at 1000 leaves on 2 cores, and how it grows with the
# leaf count beyond 1000 (about linearly below; fitted to 100, 1000 and 5000 leaves): it weighs the progress bar.
_COMPILE_AT_1000 = {"sgd": 1.2, "momentum": 2.6, "adam": 8.5, "adamw": 9.5, "clip_adamw_cosine": 17.0}
_COMPILE_GROWTH = {"sgd": 1.2, "momentum": 1.25, "adam": 1.5, "adamw": 1.4, "clip_adamw_cosine": 2.6}


def expected_seconds(name: str, n: int, leaves: int, tree_path: bool) -> float:
    timing = 1.0 + 2.5 * n / 2**24  # warm-up and repeats: grows with the bytes moved
    if not tree_path:
        return timing + 0.5
    growth = 1.1 if leaves <= 1000 else _COMPILE_GROWTH[name]
    return timing + 2 * _COMPILE_AT_1000[name] * (leaves / 1000) ** growth  # this library's and Optax's


def split_sizes(total: int, leaves: int) -> list[int]:
    base, extra = divmod(total, leaves)
    return [base + (i < extra) for i in range(leaves)]


def make_tree(sizes: list[int], fill: float | None, seed: int | None = None) -> dict[str, jax.Array]:
    """``{"p0000": array, ...}``: constant ``fill`` or, with ``seed``, standard normal values.

    Random values are drawn with NumPy and put on the device leaf by leaf
    (``jnp.split`` of one array into 5000 leaves takes minutes to compile).
    """
    if seed is None:
        return {f"p{i:04d}": jnp.full((s,), fill, jnp.float32) for i, s in enumerate(sizes)}
    flat = np.random.default_rng(seed).standard_normal(sum(sizes), dtype=np.float32)
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return {f"p{i:04d}": jax.device_put(p) for i, p in enumerate(parts)}


# --- implementations ---------------------------------------------------------------------------------

def build(lib, name: str):
    """The benchmarked optimizers, through the Optax API (jaxopt_lite and optax alike)."""
    if name == "sgd":
        return lib.sgd(LR)
    if name == "momentum":
        return lib.sgd(LR, momentum=MOMENTUM)
    if name == "adam":
        return lib.adam(LR)
    if name == "adamw":
        return lib.adamw(LR, weight_decay=WEIGHT_DECAY)
    if name == "clip_adamw_cosine":
        schedule = lib.warmup_cosine_decay_schedule(**SCHEDULE)
        return lib.chain(lib.clip_by_global_norm(1.0), lib.adamw(schedule, weight_decay=WEIGHT_DECAY))
    raise ValueError(name)


def donated_runner(step, params, state, grads) -> tuple[Runner, Compiled]:
    """``(params, state) <- step(params, state, grads)``, AOT-compiled with params and state donated."""
    compiled = compile_timed(jax.jit(step, donate_argnums=(0, 1)), params, state, grads)
    return Runner(lambda carry: compiled.executable(*carry, grads), (params, state)), compiled


def update_and_apply(lib, tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state

    return step


def jax_runner(lib, name: str, sizes: list[int], grads) -> tuple[Runner, Compiled]:
    """The optimizer's update plus ``apply_updates``, donated and AOT-compiled, and its compile record."""
    tx = build(lib, name)
    params = make_tree(sizes, 0.01)
    return donated_runner(update_and_apply(lib, tx), params, tx.init(params), grads)


def fused_runner(lib, name: str, sizes: list[int], grads) -> tuple[Runner, Compiled]:
    """The same step with params, grads and state in the library's fused layout (one buffer, any leaf count)."""
    tx = build(lib, name)
    layout = lib.Layout.of(grads)
    params = lib.Fused((jnp.full((sum(sizes),), 0.01, jnp.float32),), layout)
    flat_grads = lib.Fused((jax.device_put(np.concatenate([np.asarray(g) for g in jax.tree.leaves(grads)])),), layout)
    return donated_runner(update_and_apply(lib, tx), params, tx.init(params), flat_grads)


KERNEL_ARGS = {
    "adam": {},
    "adamw": {"weight_decay": WEIGHT_DECAY},
    "clip_adamw_cosine": {"weight_decay": WEIGHT_DECAY, "max_grad_norm": 1.0},
}


def flatten_runner(lib, name: str, sizes: list[int], grads) -> tuple[Runner, Compiled]:
    """The tree path with leaves grouped by ``flatten(optimizer)``: each step concatenates the gradients, updates
    one buffer and splits the updates back into the user's tree (issue 15's automatic-grouping question)."""
    tx = lib.flatten(build(lib, name))
    params = make_tree(sizes, 0.01)
    return donated_runner(update_and_apply(lib, tx), params, tx.init(params), grads)


def groups_leaves(ctx: Context) -> bool:
    """Whether the leaves section times ``flatten`` too: on accelerators, where grouping may pay, and in ``--full``
    runs (on XLA:CPU it costs more than it saves: ``results/2026-11-30-cpu-2core-grouping-probe``)."""
    return jax.default_backend() != "cpu" or ctx.config.mode == "full"


def kernel_runner(lib, name: str, sizes: list[int], grads) -> tuple[Runner, Compiled]:
    """The library's one-pass AdamW step (``kernels.adamw_step``), which also applies the update."""
    lr = lib.warmup_cosine_decay_schedule(**SCHEDULE) if name == "clip_adamw_cosine" else LR
    opt = lib.kernels.adamw_step(lr, **KERNEL_ARGS[name])
    params = make_tree(sizes, 0.01)
    return donated_runner(lambda p, s, g: opt.step(p, g, s), params, opt.init(params), grads)


def _torch_lr_lambda(step: int) -> float:
    """The same warmup-cosine schedule as :data:`SCHEDULE`, as a multiplier of the peak rate."""
    s = SCHEDULE
    if step < s["warmup_steps"]:
        return step / s["warmup_steps"]
    t = min(step - s["warmup_steps"], s["decay_steps"] - s["warmup_steps"]) / (s["decay_steps"] - s["warmup_steps"])
    end = s["end_value"] / s["peak_value"]
    return end + (1 - end) * 0.5 * (1 + np.cos(np.pi * t))


def torch_runner(name: str, sizes: list[int], grads, variant: str) -> Runner:
    """``torch.optim`` with ``foreach=True`` or ``fused=True`` on the same shapes and gradients."""
    import torch

    flags = {variant: True}
    params = [torch.full((s,), 0.01, requires_grad=True) for s in sizes]
    for p, g in zip(params, jax.tree.leaves(grads)):
        p.grad = torch.from_numpy(np.array(g))
    if name in ("sgd", "momentum"):
        opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM if name == "momentum" else 0.0, **flags)
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=LR, **flags)
    else:
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, **flags)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, _torch_lr_lambda) if name == "clip_adamw_cosine" else None

    @torch.no_grad()
    def step(carry):
        if schedule is not None:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        if schedule is not None:
            schedule.step()
        return carry

    return Runner(step, None, sync=lambda carry: carry)


TORCH_HINT = ("not installed; for these columns: pip install torch --index-url https://download.pytorch.org/whl/cpu "
              "(or pip install '.[peers]')")


def _torch_variants(ctx: Context) -> list[str]:
    """torch peers, when torch is importable and runs on the same kind of device as JAX."""
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or a broken install
        return []
    return ["foreach", "fused"] if jax.devices()[0].platform == "cpu" else []


def absent_peers(ctx: Context) -> dict[str, str]:
    """Peers whose columns are missing, and why (the report says so instead of leaving a silent gap)."""
    absent = {}
    if ctx.lib.__name__ != "optax" and "optax" not in peer_libraries(ctx):
        absent["optax"] = "not installed; pip install optax"
    try:
        import torch  # noqa: F401
    except ImportError:
        absent["torch.optim"] = TORCH_HINT
    except Exception as exc:  # noqa: BLE001 - a broken install
        absent["torch.optim"] = f"import failed ({type(exc).__name__}); {TORCH_HINT}"
    else:
        if jax.devices()[0].platform != "cpu":
            absent["torch.optim"] = "compared on CPU only"
    return absent


def peer_libraries(ctx: Context) -> dict[str, object]:
    peers = {}
    for name in ("optax",):
        if name == ctx.lib.__name__:
            continue
        try:
            peers[name] = importlib.import_module(name)
        except ImportError:
            pass
    return peers


def _measured_bandwidth(ctx: Context, n: int) -> float | None:
    """The roofline section's reference bandwidth at size ``n`` (GB/s), when it ran."""
    rec = ctx.results.get("roofline", {}).get("sizes", {}).get(str(n), {})
    return rec.get("bandwidth_gb_s")


def measure_step(ctx: Context, name: str, sizes: list[int], tree_path: bool = True) -> dict:
    """All implementations of optimizer ``name`` on params of the given leaf sizes, interleaved.

    ``tree_path=False`` leaves out the per-leaf tree path (this library's and Optax's): only the fused
    layout and torch.optim run, and the fused layout is the subject the peers are compared with.
    """
    n = sum(sizes)
    lib_name = ctx.lib.__name__
    grads = make_tree(sizes, None, seed=ctx.config.seed)
    builders: dict[str, Callable[[], tuple[Runner, Compiled | None]]] = {}
    if tree_path:
        builders[lib_name] = lambda: jax_runner(ctx.lib, name, sizes, grads)
    if len(sizes) == 1 and name in KERNEL_ARGS and hasattr(ctx.lib, "kernels"):
        builders[f"{lib_name}_kernel"] = lambda: kernel_runner(ctx.lib, name, sizes, grads)
    if len(sizes) > 1 and hasattr(ctx.lib, "fuse"):
        builders[f"{lib_name}_fused"] = lambda: fused_runner(ctx.lib, name, sizes, grads)
    if tree_path:
        for peer, lib in peer_libraries(ctx).items():
            builders[peer] = lambda lib=lib: jax_runner(lib, name, sizes, grads)
    # Last: its big concatenate/split compile slowed the compiles measured after it (Optax's by up to 1.3x).
    if tree_path and len(sizes) > 1 and hasattr(ctx.lib, "flatten") and groups_leaves(ctx):
        builders[f"{lib_name}_flatten"] = lambda: flatten_runner(ctx.lib, name, sizes, grads)
    for variant in _torch_variants(ctx):
        builders[f"torch_{variant}"] = lambda v=variant: (torch_runner(name, sizes, grads, v), None)

    impls: dict[str, dict] = {}
    runners: dict[str, Runner] = roofline.stream_runners(n)
    for impl, make in builders.items():
        try:
            runners[impl], compiled = make()
            impls[impl] = {"compile": compiled.to_json() if compiled else None}
        except Exception as exc:  # noqa: BLE001 - e.g. a torch build without fused CPU kernels
            impls[impl] = error_record(exc)
    timings = measure(runners, ctx.config.repeats, min_sample_s=ctx.config.pick(0.005, 0.02))

    stream = roofline.stream_record(n, {k: timings.pop(k) for k in list(timings) if k.startswith("stream_")})
    nominal = NOMINAL_BYTES[name] * n
    # The reference: the best STREAM kernel, here or in the roofline section; if an implementation streamed
    # memory faster still (its best sample), that is the bandwidth this machine demonstrably reaches.
    candidates = {"STREAM kernels": max(stream["bandwidth_gb_s"], _measured_bandwidth(ctx, n) or 0.0)}
    for impl, t in timings.items():
        candidates[impl] = nominal / t.min_s / 1e9
    reference = max(candidates, key=candidates.get)
    bw = candidates[reference] * 1e9
    roof_s = nominal / bw
    for impl, t in timings.items():
        rec = impls[impl]
        rec["time"] = t.to_json()
        rec["achieved_gb_s"] = nominal / t.median_s / 1e9
        rec["fraction_of_roofline"] = roof_s / t.median_s
        xla_bytes = (rec.get("compile") or {}).get("xla_bytes_accessed")
        rec["xla_bytes_per_param"] = xla_bytes / n if xla_bytes else None
    subject = lib_name if tree_path else f"{lib_name}_fused"
    subject_t = timings.get(subject)
    peers = {impl: t for impl, t in timings.items() if impl != subject}
    speedup = {impl: t.median_s / subject_t.median_s for impl, t in peers.items()} if subject_t else {}
    return {
        "optimizer": name,
        "description": DESCRIPTION[name],
        "n_params": n,
        "n_leaves": len(sizes),
        "tree_path": tree_path,
        "nominal_bytes_per_param": NOMINAL_BYTES[name],
        "stream": stream,
        "bandwidth_gb_s": candidates[reference],
        "bandwidth_reference": reference,
        "roofline_time_s": roof_s,
        "subject": subject,
        "impls": impls,
        "speedup_vs": speedup,
    }


def _task(section: str, name: str, n: int, leaves: int, tree_path: bool = True) -> Task:
    def run(ctx: Context) -> None:
        rows = ctx.section(section).setdefault("rows", [])
        try:
            rows.append(measure_step(ctx, name, split_sizes(n, leaves), tree_path))
        except Exception as exc:  # noqa: BLE001
            rows.append({"optimizer": name, "n_params": n, "n_leaves": leaves, **error_record(exc)})

    path = "" if tree_path else " (fused layout only)"
    return Task(section, f"{section}: {name}, {n:,} params in {leaves} leaves{path}", run,
                cost=expected_seconds(name, n, leaves, tree_path))


def tasks(ctx: Context, section: str) -> list[Task]:
    ctx.section(section)["peers_absent"] = absent_peers(ctx)
    if section == "update":
        from benchmarks import low_memory  # here: it imports this module

        return [_task(section, name, n, 1) for n in single_leaf_sizes(ctx) for name in OPTIMIZERS] + low_memory.tasks(ctx)
    if section == "leaves":
        limit = tree_leaf_limit(ctx)
        fused = hasattr(ctx.lib, "fuse")
        sec = ctx.section(section)
        sec["tree_path_max_leaves"] = limit
        sec["n_params"] = leaves_total(ctx)
        return [_task(section, name, leaves_total(ctx), k, tree_path=k <= limit)
                for k in leaf_counts(ctx) if k <= limit or fused for name in OPTIMIZERS]
    raise ValueError(section)


def slow_compile_note(ctx: Context) -> str | None:
    """One line explaining XLA's "Very slow compile?" alarm, when this run will compile a big tree path."""
    if "leaves" not in ctx.config.sections:
        return None
    big = [k for k in leaf_counts(ctx) if k <= tree_leaf_limit(ctx) and k >= 1000]
    if not big:
        return None
    return (f"note: the leaves section compiles the tree path at {max(big):,} leaves, which takes minutes per "
            "optimizer; XLA may print 'Very slow compile?' meanwhile; that is expected (it is what the fused layout "
            "avoids); --max-leaves N skips tree paths above N leaves.")
