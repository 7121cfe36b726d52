"""Tables for the terminal and ``report.md``, and ``results.json``.

Each section's table is built once (:func:`tables`) and rendered twice: as
aligned text for the terminal and as a Markdown table for the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.context import Context


@dataclass
class Table:
    section: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


# --- number formatting -------------------------------------------------------------------------------

def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if not math.isfinite(x):
        return "diverged"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.{max(digits - 1, 1)}e}"


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def fmt_timing(t: dict | None) -> str:
    """``median ± IQR/2``."""
    if not t:
        return "—"
    return f"{fmt_time(t['median_s'])} ±{fmt_time(t['iqr_s'] / 2)}"


def fmt_pct(r: float | None) -> str:
    return "—" if r is None else f"{100 * r:.0f}%"


def fmt_n(n: int) -> str:
    for unit, scale in (("M", 2**20), ("k", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n / 1e6:.3g}M" if n >= 10**6 else f"{n:,}"


def _compile_s(rec: dict) -> str:
    """Lowering plus compiling, as one figure."""
    return f"{rec['lower_s'] + rec['compile_s']:.2f} s"


def _err(rec: dict) -> str | None:
    """A short cell for a failed measurement (the message is in the report's Errors section)."""
    return f"error: {rec['error'].split(':')[0]}" if "error" in rec else None


# --- tables ------------------------------------------------------------------------------------------

def _toy_tables(toy: dict) -> list[Table]:
    problems = list(toy)
    names = list(dict.fromkeys(o for p in problems for o in toy[p]["results"]))
    steps, final, wall = [], [], []
    for o in names:
        recs = [toy[p]["results"].get(o, {"error": "missing"}) for p in problems]
        steps.append([o] + [_err(r) and "error" or fmt(r["steps_to_target"]) for r in recs])
        final.append([o] + [_err(r) and "error" or (fmt(r["final_loss"]) if r["finite"] else "diverged")
                            for r in recs])
        wall.append([o] + [_err(r) and "error" or f"{fmt_time(r['run']['median_s'])} / {_compile_s(r['compile'])}"
                           for r in recs])
    targets = ", ".join(f"{p}: f <= {fmt(toy[p]['problem']['target'])}" for p in problems)
    return [
        Table("toy", "Toy problems: steps to reach the target (— = not reached)", ["optimizer", *problems], steps,
              f"Targets: {targets}. Saddle and x^3 are unbounded below: the target means escaping below -1."),
        Table("toy", "Toy problems: final loss", ["optimizer", *problems], final),
        Table("toy", "Toy problems: run time (jitted scan, median) / compile time", ["optimizer", *problems], wall),
    ]


def _logistic_table(sec: dict) -> Table:
    rows = []
    for mode, r in sec["modes"].items():
        if _err(r):
            rows.append([mode, _err(r)] + [""] * 7)
            continue
        rows.append([mode, fmt(r["batch_size"]), fmt(r["lr"]), fmt(r["steps_per_epoch"]), fmt(r["final_suboptimality"]),
                     fmt(r["epochs_to_tolerance"]), fmt_pct(r["test_accuracy"]), fmt_timing(r["run"]),
                     fmt_time(r["seconds_per_epoch"])])
    note = (f"n_train={sec['n_train']}, d={sec['dim']}, {sec['epochs']} epochs, L2={sec['l2']:g}; "
            f"f* by Newton's method; tolerance f - f* <= {sec['tolerance']:g}; "
            f"learning rates in units of 1/L, L={sec['smoothness_L']:.3g}.")
    return Table("logistic", "Logistic regression: full-batch vs mini-batch vs stochastic gradient descent",
                 ["mode", "batch", "lr", "steps/epoch", "final f - f*", "epochs to tol", "test acc", "run time",
                  "time/epoch"], rows, note)


def _mlp_table(sec: dict) -> Table:
    rows = []
    for o, r in sec["results"].items():
        if _err(r):
            rows.append([o, _err(r)] + [""] * 7)
            continue
        rows.append([o, fmt(r["best_lr"]) + (" (edge)" if r["best_at_grid_edge"] else ""), fmt(r["final_train_loss"]),
                     fmt_pct(r["val_accuracy"]), fmt_pct(r["test_accuracy"]), fmt(r["epochs_to_tolerance"]),
                     _compile_s(r["compile"]), fmt_timing(r["sweep_run"])])
    note = (f"MLP {sec['sizes']}, batch {sec['batch_size']}, {sec['epochs']} epochs; learning rate chosen among "
            f"{sec['sweep_points']} log-spaced rates (+-{sec['sweep_decades']} decades around the table's rate) by "
            f"{sec['selection']}, all rates in one jit(vmap) program. 'edge': the best rate is at the grid's edge. "
            + sec.get("note", ""))
    return Table("mlp", "Digits MLP: each optimizer at its best swept learning rate",
                 ["optimizer", "best lr", "train loss", "val acc", "test acc",
                  f"epochs to loss<={sec['train_loss_tolerance']}", "compile", "sweep run"], rows, note)


def _mlp_low_precision_table(sec: dict) -> Table:
    rows = []
    for mode, r in sec["low_precision"].items():
        if _err(r):
            rows.append([mode, _err(r)] + [""] * 6)
            continue
        vs = r.get("val_loss_vs_float32")
        rows.append([mode, fmt(r["lr"]), fmt(r["final_train_loss"]), fmt(r["final_val_loss"]),
                     "—" if vs is None else f"{100 * vs:+.1f}%", fmt_pct(r["test_accuracy"]),
                     fmt(r["state_bytes_per_param"]), _compile_s(r["compile"])])
    note = ("Adam with warmup-cosine (to 0) at the sweep's best Adam rate; '_slow' rows at a tenth of it, where most "
            "steps are below half a bfloat16 spacing of the weights. bf16_*: bfloat16 parameters and moments "
            "(nearest: apply_updates; stochastic: chain(adam, stochastic_rounding(0)); kahan: chain(adam, "
            "kahan_summation())); 8bit_state: quantize_state(adam, min_size=0); bf16_state_stochastic: float32 "
            "parameters, low_precision_state(adam, key=0). 'vs float32': final validation loss against the float32 "
            "row of the same rate. State bytes per parameter: jax.eval_shape(init).")
    return Table("mlp_low_precision", "Digits MLP: low-precision parameters and low-memory state",
                 ["mode", "lr", "train loss", "val loss", "vs float32", "test acc", "state B/param", "compile"], rows,
                 note)


def _transformer_tables(sec: dict) -> list[Table]:
    rows = []
    for name, r in sec["results"].items():
        if _err(r):
            rows.append([name, _err(r)] + [""] * 7)
            continue
        rel = r.get("val_loss_vs_float32")
        rows.append([name, fmt(r["lr"]), fmt(r["final_val_loss"], 4), fmt(r["final_train_loss"], 4),
                     "—" if rel is None else f"{100 * rel:+.1f}%", fmt(r["state_bytes_per_param"]),
                     fmt_time(r["step_s"]), fmt_time(r["run_s"]), _compile_s(r["compile"])])
    note = (f"{sec['layers']} layers, d_model {sec['d_model']}, {sec['heads']} heads, context {sec['context']}, "
            f"batch {sec['batch_size']}, {sec['n_params']:,} params, vocabulary {sec['vocab']} ({sec['text']}); "
            f"{sec['steps']} steps. Swept optimizers: the best of {len(sec['lr_factors'])} rates "
            f"({', '.join(fmt(f) for f in sec['lr_factors'])} x the usual one) by final validation loss, in one "
            "jit(vmap) program; the adamw_cosine rows run at AdamW's best rate with warmup and cosine decay to 0, "
            "and 'vs float32' compares them with adamw_cosine. Validation loss: mean cross-entropy "
            f"(nats) over {sec['validation_batches']} held-out batches at the end (schedule-free: at the averaged "
            "iterate). State bytes per parameter from jax.eval_shape(init). "
            "Step time: one run's wall time over its steps (forward, backward and update).")
    if sec.get("absent"):
        note += f" Not in the library under test: {', '.join(sec['absent'])}."
    out = [Table("transformer", "Transformer LM: final loss per optimizer",
                 ["optimizer", "lr", "val loss", "train loss (last 10%)", "vs float32", "state B/param", "step",
                  "run", "compile"], rows, note)]
    mb = sec.get("muon_batching")
    if mb and not _err(mb):
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in mb["shapes"].items())
        out.append(Table("transformer", "Muon: one batched Newton-Schulz call per shape vs one call per leaf",
                         ["layers", "batched", "one call per leaf", "batched vs per leaf", "compile batched",
                          "compile per leaf", "max abs diff"],
                         [[fmt(mb["layers"]), fmt_timing(mb["batched"]["time"]), fmt_timing(mb["per_leaf"]["time"]),
                           fmt_faster(mb["speedup"]), _compile_s(mb["batched"]["compile"]),
                           _compile_s(mb["per_leaf"]["compile"]), fmt(mb["max_abs_diff"])]],
                         f"scale_by_muon's update (5 Newton-Schulz steps, float32) on {mb['layers']} layers of "
                         f"{shapes}; 'one call per leaf' applies the same transform to one-leaf trees."))
    elif mb:
        out.append(Table("transformer", "Muon: batched vs per leaf", ["error"], [[_err(mb)]]))
    mem = sec.get("state_bytes_per_param")
    if mem and not _err(mem):
        out.append(Table("transformer", "Optimizer state of the methods not trained above (bytes per parameter)",
                         list(mem), [[fmt(v) for v in mem.values()]],
                         f"jax.eval_shape(init) on the same {sec['n_params']:,}-parameter model, float32 parameters; "
                         "the trained methods' figures are in the table above."))
    return out


def _roofline_table(sec: dict) -> Table:
    kernels = list(sec.get("kernels", {}))
    rows = []
    for n, r in sorted(sec.get("sizes", {}).items(), key=lambda kv: int(kv[0])):
        if _err(r):
            rows.append([fmt_n(int(n)), _err(r)] + [""] * (len(kernels) + 1))
            continue
        rows.append([fmt_n(int(n))] + [f"{fmt(r['kernels'][k]['best_gb_s'])} ({fmt(r['kernels'][k]['median_gb_s'])})"
                                       for k in kernels] + [f"{fmt(r['bandwidth_gb_s'])} ({r['best_kernel']})"])
    note = ("Kernels: " + "; ".join(f"{k}: {d}" for k, d in sec.get("kernels", {}).items())
            + ". GB/s from the best sample (median in parentheses); the reference is the best kernel at each size.")
    return Table("roofline", "Roofline: memory bandwidth of STREAM kernels (GB/s)",
                 ["params", *kernels, "reference"], rows, note)


def fmt_faster(r: float | None) -> str:
    """A peer's time over the subject's, read the natural way: ``1.6x faster`` / ``1.3x slower``."""
    if r is None:
        return "—"
    if 0.995 <= r <= 1.005:
        return "same"
    return f"{r:.2f}x faster" if r > 1 else f"{1 / r:.2f}x slower"


def _speed_table(section: str, sec: dict) -> Table:
    rows_in = sec.get("rows", [])
    lib = next((r["subject"].removesuffix("_fused") for r in rows_in if "subject" in r), "subject")
    fused, kernel, flat = f"{lib}_fused", f"{lib}_kernel", f"{lib}_flatten"
    own = (fused, kernel, flat)
    peers = [p for p in dict.fromkeys(p for r in rows_in for p in r.get("speedup_vs", {})) if p not in own]
    has_fused = any(fused in r.get("impls", {}) for r in rows_in)
    has_flat = any(flat in r.get("impls", {}) for r in rows_in)
    has_kernel = any(kernel in r.get("impls", {}) for r in rows_in)
    has_optax = any("optax" in r.get("impls", {}) for r in rows_in)
    headers = ["optimizer", "params", "leaves", "step (tree path)", "% roofline", "roofline GB/s", "compile",
               *(["optax compile"] if has_optax else []), "XLA B/param (nominal)"]
    if has_fused:
        headers += ["fused step", "fused % roofline", "fused compile", "fused vs tree path"]
    if has_flat:
        headers += ["flatten step", "flatten compile", "flatten vs tree path"]
    if has_kernel:
        headers += ["kernel step", "kernel % roofline", "kernel vs XLA path"]
    headers += [f"vs {p}" for p in peers]
    rows = []
    for r in rows_in:
        head = [r["optimizer"], fmt_n(r["n_params"]), fmt(r["n_leaves"])]
        if _err(r):
            rows.append(head + [_err(r)] + [""] * (len(headers) - 4))
            continue
        impls = r["impls"]
        tree = impls.get(lib)
        # The subject of the peer columns: the tree path, or the fused layout where the tree path was skipped.
        subject = impls[r["subject"]]
        subject_t = subject.get("time", {}).get("median_s")

        def vs(impl: str) -> str:
            rec = impls.get(impl)
            if rec is None:
                return ""
            if _err(rec):
                return _err(rec)
            return fmt_faster(rec["time"]["median_s"] / subject_t) if subject_t else "—"

        peer = impls.get("optax") or {}
        optax_compile = ([_compile_s(peer["compile"]) if peer.get("compile") else ""] if has_optax else [])
        if tree is None:
            cells = ["skipped (> max leaves)", "", fmt(r["bandwidth_gb_s"]), "", *optax_compile, ""]
        elif _err(tree):
            cells = [_err(tree), "", fmt(r["bandwidth_gb_s"]), "", *optax_compile, ""]
        else:
            xla = tree["xla_bytes_per_param"]
            cells = [fmt_timing(tree["time"]), fmt_pct(tree["fraction_of_roofline"]), fmt(r["bandwidth_gb_s"]),
                     _compile_s(tree["compile"]), *optax_compile, f"{fmt(xla)} ({r['nominal_bytes_per_param']})"]
        def columns(impl: str, *fields: str) -> list[str]:
            """The step, the requested fields and the ratio to the tree path of one of this library's own paths."""
            rec = impls.get(impl)
            if rec is None or _err(rec):
                return [_err(rec) if rec else ""] + [""] * (len(fields) + 1)
            ratio = tree["time"]["median_s"] / rec["time"]["median_s"] if tree and not _err(tree) else None
            shown = {"roofline": fmt_pct(rec["fraction_of_roofline"]), "compile": _compile_s(rec["compile"])}
            return [fmt_timing(rec["time"]), *(shown[f] for f in fields), fmt_faster(ratio) if ratio else "—"]

        if has_fused:
            cells += columns(fused, "roofline", "compile")
        if has_flat:
            cells += columns(flat, "compile")
        if has_kernel:
            cells += columns(kernel, "roofline")
        rows.append(head + cells + [vs(p) for p in peers])
    title = {"update": "Update step, one leaf", "leaves": "Update step, many leaves"}[section]
    refs = sorted({r["bandwidth_reference"] for r in rows_in if "bandwidth_reference" in r} - {"STREAM kernels"})
    note = ("Step: jitted, params and state donated, median ± IQR/2. % roofline: the time the nominal bytes per "
            "parameter take at the reference bandwidth, over the measured median: the reference is the best sample "
            "of STREAM kernels (scale/add/triad, in place) of the same size timed alongside and in the roofline "
            "section"
            + (f", or, where it streamed faster still, the best sample of {', '.join(refs)}" if refs else "")
            + ". Compile: trace and lower plus XLA compile of the whole step (update and apply_updates)"
            + ". XLA B/param: XLA's cost model (bytes accessed / params) vs the nominal bytes of a fully fused "
            "update. 'vs X': how this library's step compares with X's ('1.6x faster': X takes 1.6 times as long); "
            "where the tree path was skipped, the fused layout is compared. 'fused': params, grads and state in the "
            "fused layout (jaxopt_lite.fuse); 'kernel': jaxopt_lite.kernels.adamw_step, the one-pass step that also "
            "applies the update"
            + ("; 'flatten': flatten(optimizer) on the tree path, which concatenates the gradients each step, "
               "updates one buffer and splits the updates back into leaves" if has_flat else "")
            + ". Samples interleaved across implementations and the STREAM kernels.")
    if section == "leaves" and sec.get("tree_path_max_leaves"):
        note += f" Tree path (this library's and Optax's) compiled up to {sec['tree_path_max_leaves']:,} leaves."
    for peer, why in sec.get("peers_absent", {}).items():
        note += f" {peer}: {why}."
    return Table(section, title, headers, rows, note)


def _state_modes_table(sec: dict) -> Table:
    modes = sec.get("modes", {})
    rows = []
    for mode, r in modes.items():
        if _err(r):
            rows.append([mode, _err(r), "", "", "", ""])
            continue
        ratio = r.get("vs_float32_adam")
        rows.append([mode, fmt_timing(r.get("time")), "1 (baseline)" if mode == "adam_float32" else
                     (f"{ratio:.2f}x" if ratio is not None else "—"), fmt(r["state_bytes_per_param"]),
                     _compile_s(r["compile"]), sec.get("descriptions", {}).get(mode, "")])
    note = (f"One leaf of {fmt_n(sec.get('n_params', 0))} parameters; Adam's update plus apply_updates, jitted with "
            "params and state donated, median ± IQR/2, every mode sampled in the same interleaved run. 'vs float32 "
            "adam': its median step time over float32 Adam's. State bytes per parameter: jax.eval_shape(init).")
    return Table("state_modes", "Update step: low-memory state and low-precision parameter modes",
                 ["mode", "step", "vs float32 adam", "state B/param", "compile", "what"], rows, note)


def _sweep_table(sec: dict) -> Table:
    rows = []
    for r in sec.get("rows", []):
        if _err(r):
            rows.append([fmt(r["k"]), _err(r)] + [""] * 6)
            continue
        comp = r["vmap"]["compile"]
        rows.append([fmt(r["k"]), fmt_timing(r["vmap"]["time"]), fmt_timing(r["loop"]["time"]),
                     fmt_faster(r["speedup_vmap_vs_loop"]), fmt_time(r["vmap_seconds_per_run"]),
                     _compile_s(comp), fmt(r["max_rel_diff_first_10_steps"]),
                     fmt(r["median_rel_diff_final_loss"])])
    loop = sec.get("loop_compile")
    loop_compile = _compile_s(loop) if loop else "—"
    note = (f"{sec.get('problem')}, {sec.get('optimizer')}, {sec.get('steps')} steps on mini-batches of "
            f"{sec.get('batch_size')} per run. Loop: one jit(train) compiled once ({loop_compile}), called K times. "
            "'vmap vs loop': how the vmapped sweep compares with the loop. Relative differences vmap vs loop: early losses must agree to "
            "rounding; final losses may differ where large rates make training chaotic.")
    return Table("sweep", "Learning-rate sweep: jit(vmap) vs a Python loop of jitted runs",
                 ["K", "vmap", "loop", "vmap vs loop", "vmap per run", "vmap compile", "max rel diff (10 steps)",
                  "median rel diff (final)"], rows, note)


def tables(results: dict) -> list[Table]:
    out: list[Table] = []
    if results.get("toy"):
        out += _toy_tables(results["toy"])
    if results.get("logistic", {}).get("modes"):
        out.append(_logistic_table(results["logistic"]))
    if results.get("mlp", {}).get("results"):
        out.append(_mlp_table(results["mlp"]))
    if isinstance(results.get("mlp", {}).get("low_precision"), dict) and "error" not in results["mlp"]["low_precision"]:
        out.append(_mlp_low_precision_table(results["mlp"]))
    if results.get("transformer", {}).get("results"):
        out += _transformer_tables(results["transformer"])
    if results.get("roofline"):
        out.append(_roofline_table(results["roofline"]))
    for section in ("update", "leaves"):
        if results.get(section, {}).get("rows"):
            out.append(_speed_table(section, results[section]))
        if section == "update" and results.get(section, {}).get("state_modes"):
            sm = results[section]["state_modes"]
            out.append(Table("state_modes", "Update step: low-memory modes", ["error"], [[_err(sm)]], "")
                       if _err(sm) else _state_modes_table(sm))
    if results.get("sweep", {}).get("rows"):
        out.append(_sweep_table(results["sweep"]))
    return out


# --- rendering ---------------------------------------------------------------------------------------

def render_text(t: Table) -> str:
    cells = [t.headers] + t.rows
    widths = [max(len(str(row[i])) if i < len(row) else 0 for row in cells) for i in range(len(t.headers))]
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
    parts = [t.title, "=" * len(t.title), line(t.headers), line(["-" * w for w in widths])]
    parts += [line(r) for r in t.rows]
    if t.note:
        parts.append(t.note)
    return "\n".join(parts)


def render_markdown(t: Table) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    parts = [f"### {t.title}", "", "| " + " | ".join(map(esc, t.headers)) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    parts += ["| " + " | ".join(esc(c) for c in r) + " |" for r in t.rows]
    if t.note:
        parts += ["", t.note]
    return "\n".join(parts)


# --- results.json and report.md ----------------------------------------------------------------------

def jsonable(obj: Any) -> Any:
    """Plain JSON: keys starting with ``_`` (plot arrays) dropped, NaN/inf as ``null``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_atomic(path: Path, text: str) -> None:
    """Write then rename: a kill mid-write leaves the previous file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(ctx: Context, meta: dict, path: Path) -> dict:
    doc = jsonable({"meta": meta, **ctx.results})
    write_atomic(path, json.dumps(doc, indent=1, allow_nan=False))
    return doc


_PLOT_TITLES = {
    "trajectories": "Trajectories over contour plots",
    "toy_losses": "Toy problems: loss curves",
    "logistic": "Logistic regression",
    "mlp": "Digits MLP",
    "speed_vs_params": "Step time vs number of parameters",
    "speed_vs_leaves": "Step time vs number of leaves",
    "sweep": "Learning-rate sweep",
    "transformer": "Transformer language model",
    "transformer_low_precision": "Transformer LM: low-precision parameters and 8-bit state",
    "mlp_low_precision": "Digits MLP: low-precision parameters and low-memory state",
}


def write_markdown(ctx: Context, meta: dict, all_tables: list[Table], plots: list[Path], path: Path) -> None:
    m = meta["machine"]
    v = m["versions"]
    lines = [
        "# jaxopt_lite benchmarks",
        "",
        f"Command: `{m['command']}`  ",
        (f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, "
         f"{(m['memory_bytes'] or 0) / 2**30:.0f} GiB; device: {m['platform']} ({m['device_kind']})  "),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "  ",
        (f"Library under test: `{meta['config']['library']}`; mode: {meta['config']['mode']}; "
         f"repeats: {meta['config']['repeats']}; started {meta['started']}, took {meta['duration_s']:.0f} s; "
         f"load average {m.get('load_average')} at the start, {meta.get('load_average_at_end')} at the end "
         f"({m['cpu_cores']} cores)."),
        "",
        status_line(meta),
        "",
        ("Speed figures are ratios to a peer measured in the same process (the triad roofline, Optax, torch.optim), "
         "with samples interleaved; absolute times depend on the machine and its load."),
        "",
    ]
    warning = busy_machine_warning(meta)
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    current = None
    for t in all_tables:
        if t.section != current:
            current = t.section
            lines += [f"## {current}", ""]
        lines += [render_markdown(t), ""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            stem = p.stem.split("__")[0]
            lines += [f"### {_PLOT_TITLES.get(stem, stem)}: {p.stem}", "", f"![{p.stem}]({p.name})", ""]
    errors = [(s, e) for s, e in find_errors(ctx.results)]
    if errors:
        lines += ["## Errors", ""] + [f"- `{where}`: {msg}" for where, msg in errors] + [""]
    write_atomic(path, "\n".join(lines))


def status_line(meta: dict) -> str:
    """Which sections are complete, which one was cut short, which never ran."""
    seconds = meta.get("seconds_per_section", {})
    done = ", ".join(f"{s} ({seconds.get(s, 0):.0f} s)" for s in meta.get("sections_done", []))
    line = f"**Status: {meta.get('status', 'complete')}.** Sections complete: {done or 'none'}."
    if meta.get("sections_cut"):
        line += f" Cut short (partial figures): {', '.join(meta['sections_cut'])}."
    if meta.get("sections_not_run"):
        line += f" Not run: {', '.join(meta['sections_not_run'])}."
    return line


def find_errors(tree: Any, where: str = "") -> list[tuple[str, str]]:
    """``(path, message)`` for every failed measurement recorded in the results."""
    found = []
    if isinstance(tree, dict):
        if isinstance(tree.get("error"), str):
            found.append((where, tree["error"]))
        for k, v in tree.items():
            if not str(k).startswith("_"):
                found += find_errors(v, f"{where}.{k}" if where else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            keys = ("optimizer", "n_params", "n_leaves", "k")
            label = ", ".join(f"{k}={v[k]}" for k in keys if k in v) if isinstance(v, dict) else ""
            found += find_errors(v, f"{where}[{label or i}]")
    return found


def busy_machine_warning(meta: dict) -> str | None:
    """A caveat when other work competed for the cores while the figures were taken."""
    cores = meta["machine"].get("cpu_cores") or 1
    loads = [la[0] for la in (meta["machine"].get("load_average"), meta.get("load_average_at_end")) if la]
    if not loads or max(loads) <= 1.2 * cores:
        return None
    return (f"the machine was busy (1-minute load average up to {max(loads):.1f} on {cores} cores): timings are noisy, "
            "and thread-pool barriers (torch.optim's OpenMP kernels in particular) suffer most when cores are "
            "oversubscribed. Compare ratios only, and rerun on an idle machine before quoting them.")
