"""PNG figures (matplotlib, Agg backend), each drawn from the collected results.

``make_all`` draws whatever the sections that ran allow and returns the files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks import problems as problems_mod
from benchmarks.context import Context

DPI = 110

# One colour per series, the same in every panel and every figure.
IMPL_COLORS = {
    "jaxopt_lite": "#1f77b4",         # blue: the library's tree path
    "jaxopt_lite_fused": "#2ca02c",   # green: its fused layout
    "jaxopt_lite_kernel": "#9467bd",  # purple: its one-pass CPU kernel
    "jaxopt_lite_flatten": "#aec7e8", # light blue: flatten(optimizer) on the tree path
    "optax": "#ff7f0e",               # orange
    "torch_foreach": "#d62728",       # red
    "torch_fused": "#8c564b",         # brown
}
ROOFLINE_COLOR = "black"
OTHER_IMPL_COLORS = ["#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

# Optimizer families: the toy and MLP figures draw one panel per family, so no colour repeats in a panel.
FAMILIES: dict[str, tuple[str, ...]] = {
    "SGD family": ("sgd", "momentum", "nesterov", "noisy_sgd", "optimistic_gradient_descent", "sign_sgd", "signum",
                   "polyak_sgd"),
    "AdaGrad / RMSprop family": ("adagrad", "adadelta", "rmsprop", "sm3", "rprop", "adafactor"),
    "Adam family": ("adam", "adamw", "amsgrad", "adamax", "adamaxw", "nadam", "nadamw"),
    "Adam variants": ("radam", "adabelief", "adan", "yogi", "novograd", "optimistic_adam"),
    "sign, layer-wise and others": ("lion", "lamb", "lars", "fromage", "lbfgs"),
}
_FAMILY_OF = {name: fam for fam, names in FAMILIES.items() for name in names}
_TAB20 = plt.get_cmap("tab20").colors


def impl_color(impl: str, order: list[str]) -> str:
    if impl in IMPL_COLORS:
        return IMPL_COLORS[impl]
    base = impl.split("_", 1)
    if len(base) == 2 and base[0] in ("optax",):
        return IMPL_COLORS["optax"]
    others = [i for i in order if i not in IMPL_COLORS]
    return OTHER_IMPL_COLORS[others.index(impl) % len(OTHER_IMPL_COLORS)] if impl in others else "#7f7f7f"


def group_by_family(names: list[str]) -> dict[str, list[str]]:
    """``{family: [optimizer, ...]}`` in the families' order; unknown names go to the last family."""
    last = list(FAMILIES)[-1]
    groups: dict[str, list[str]] = {fam: [] for fam in FAMILIES}
    for name in names:
        groups[_FAMILY_OF.get(name, last)].append(name)
    return {fam: members for fam, members in groups.items() if members}


# Forty distinct colours: the dark then the light halves of tab20 and tab20b.
_PALETTE = _TAB20[0::2] + plt.get_cmap("tab20b").colors[0::2] + _TAB20[1::2] + plt.get_cmap("tab20b").colors[1::2]


def optimizer_colors(names: list[str]) -> dict[str, tuple]:
    """A colour per optimizer, the same in every panel and figure, distinct from every other optimizer's
    (up to forty; beyond, distinct within each family panel)."""
    ordered = [name for members in group_by_family(names).values() for name in members]
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(ordered)}


def _few_ticks(ax, x: int = 4, y: int = 4) -> None:
    """At most a few tick labels per axis, all the same size, so none overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    for axis, n, lim in ((ax.xaxis, x, ax.get_xlim()), (ax.yaxis, y, ax.get_ylim())):
        if axis.get_scale() == "log":
            lo, hi = sorted(abs(v) for v in lim)
            narrow = lo > 0 and hi / lo < 100  # under two decades: label 1, 2, 5 x 10^k in plain numbers
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,), numticks=n + 1))
            if narrow:
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        elif axis.get_scale() == "linear":
            axis.set_major_locator(MaxNLocator(n))
    ax.tick_params(which="both", labelsize=6)


def _save(fig, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _grid(n: int, width: float = 3.0, height: float = 2.6, share: bool = False):
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharex=share,
                             sharey=share)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _finite_prefix(a: np.ndarray) -> np.ndarray:
    """The iterates up to the first non-finite one (a diverged run ends there)."""
    bad = ~np.all(np.isfinite(np.reshape(a, (len(a), -1))), axis=1)
    return a[: np.argmax(bad)] if bad.any() else a


# --- toy problems ------------------------------------------------------------------------------------

def _surface(problem, box, points: int = 100):
    import jax

    fn = jax.jit(jax.vmap(problem.fn))
    if problem.dim == 1:
        xs = np.linspace(*box[0], 400, dtype=np.float32)
        return xs, np.asarray(fn(xs[:, None]))
    xs = np.linspace(*box[0], points, dtype=np.float32)
    ys = np.linspace(*box[1], points, dtype=np.float32)
    xx, yy = np.meshgrid(xs, ys)
    zz = np.asarray(fn(np.stack([xx.ravel(), yy.ravel()], axis=1))).reshape(xx.shape)
    return xx, yy, zz


def trajectories(problem, entries: dict, out: Path, colors: dict | None = None) -> Path:
    """One contour plot per optimizer with its iterates drawn over it (in the optimizer's colour)."""
    box = problem.box
    names = [o for o, r in entries.items() if "_path" in r]
    colors = colors or optimizer_colors(names)
    fig, axes = _grid(len(names), share=True)  # one box for all: tick labels on the outer panels only
    surface = _surface(problem, box)
    for ax, name in zip(axes, names):
        r = entries[name]
        path = _finite_prefix(r["_path"])
        color = colors.get(name, "C3")
        if problem.dim == 1:
            xs, fs = surface
            ax.plot(xs, fs, color="0.6", lw=1)
            fx = _finite_prefix(r["_losses"])
            n = min(len(path), len(fx))
            ax.plot(path[:n, 0], fx[:n], "o-", ms=2.5, lw=0.8, color=color)
            ax.set_xlim(*box[0])
            lo, hi = float(fs.min()), float(fs.max())
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
        else:
            xx, yy, zz = surface
            if problem.f_star is not None and zz.min() >= 0:
                levels = np.geomspace(max(zz.min(), 1e-3), zz.max(), 20)
                ax.contour(xx, yy, zz, levels=levels, norm=matplotlib.colors.LogNorm(), cmap="Greys",
                           linewidths=0.6)
            else:
                ax.contour(xx, yy, zz, levels=20, cmap="Greys", linewidths=0.6)
            ax.plot(path[:, 0], path[:, 1], "o-", ms=2, lw=0.8, color=color, markevery=max(1, len(path) // 60))
            ax.set_xlim(*box[0])
            ax.set_ylim(*box[1])
            if problem.x_star is not None:
                ax.plot(*problem.x_star, "k*", ms=8)
        x0 = np.asarray(problem.x0, np.float32)
        start = problem.x0 if problem.dim == 2 else (problem.x0[0], float(problem.fn(x0)))
        ax.plot(*start, "ks", ms=4)
        ax.set_title(f"{name} (lr={r['lr']:.3g})", fontsize=8)
        ax.tick_params(labelsize=6)
        _few_ticks(ax)
    cols = min(len(axes), 5)
    for i, ax in enumerate(axes):
        if i + cols >= len(axes):  # no panel below it
            ax.set_xlabel("x (dimensionless)" if problem.dim == 1 else "x1 (dimensionless)", fontsize=7)
            ax.xaxis.set_tick_params(labelbottom=True)
        if i % cols == 0:
            ax.set_ylabel("f(x) (dimensionless)" if problem.dim == 1 else "x2 (dimensionless)", fontsize=7)
    fig.suptitle(f"{problem.name}: f = {problem.formula}, {problem.steps} steps (square: start, star: minimum)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # 0.4 inch for the title above the panels' titles
    return _save(fig, out, f"trajectories__{problem.name}")


def toy_losses(toy: dict, out: Path, colors: dict | None = None) -> Path:
    """Small multiples: a row per problem, a column per optimizer family (no colour repeats in a panel)."""
    names = list(dict.fromkeys(o for entry in toy.values() for o, r in entry["results"].items() if "_losses" in r))
    families = group_by_family(names)
    colors = colors or optimizer_colors(names)
    n_rows, n_cols = len(toy), len(families)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.1 * n_cols, 2.3 * n_rows + 1.2), squeeze=False)
    for i, (pname, entry) in enumerate(toy.items()):
        f_star = entry["problem"]["f_star"]
        for j, (family, members) in enumerate(families.items()):
            ax = axes[i, j]
            for o in members:
                r = entry["results"].get(o, {})
                if "_losses" not in r:
                    continue
                losses = _finite_prefix(r["_losses"]).astype(np.float64)
                # Clipped so that a diverging run does not squash the others.
                y = np.clip(losses - f_star, 1e-16, 1e6) if f_star is not None else np.clip(losses, -1e6, 1e6)
                ax.plot(np.arange(1, len(y) + 1), y, lw=1.0, color=colors[o], label=o)
            ax.set_yscale("log" if f_star is not None else "symlog")
            ax.set_xscale("log")
            ax.set_xlim(1, entry["problem"]["steps"] + 1)
            ax.tick_params(labelsize=6)
            _few_ticks(ax, 3, 4)
            if j == 0:
                ax.set_ylabel(f"{pname}\n" + ("f − f* (dimensionless)" if f_star is not None else "f (dimensionless)"),
                              fontsize=7)
            if i == n_rows - 1:
                ax.set_xlabel("step + 1 (count)", fontsize=7)
            if i == 0:
                ax.set_title(family, fontsize=9)
                ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, 1.95), ncol=2, frameon=False)
    fig.suptitle("Toy problems: loss per step, one row per problem, one column per optimizer family", fontsize=11,
                 y=1.0)
    fig.tight_layout()
    return _save(fig, out, "toy_losses")


# --- logistic regression and MLP ---------------------------------------------------------------------

MODE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")


def logistic(sec: dict, out: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (mode, r) in enumerate(sec["modes"].items()):
        if "_subopt" not in r:
            continue
        y = np.maximum(r["_subopt"], 1e-12)
        epochs = np.arange(len(y))
        style = {"color": MODE_COLORS[k % 3], "label": mode, "ms": 3}
        a1.plot(epochs, y, "o-", **style)
        a2.plot(epochs * r["seconds_per_epoch"] * 1e3, y, "o-", **style)
    for ax, xlabel in ((a1, "epoch (passes over the data)"), (a2, "wall time (ms, jitted)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("f − f* (mean log-loss, nats)")
        ax.axhline(sec["tolerance"], color="k", lw=0.6, ls=":")
        _few_ticks(ax, 5, 5)
    a1.legend(fontsize=8)
    fig.suptitle(f"Logistic regression, n={sec['n_train']}, d={sec['dim']} (dotted: tolerance)")
    fig.tight_layout()
    return _save(fig, out, "logistic")


def mlp(sec: dict, out: Path, colors: dict | None = None) -> Path:
    """Per optimizer family: the train loss at the best rate (top) and the final validation loss per rate (bottom)."""
    names = [o for o, r in sec["results"].items() if "_train_loss" in r]
    families = group_by_family(names)
    colors = colors or optimizer_colors(names)
    fig, axes = plt.subplots(2, len(families), figsize=(3.2 * len(families), 6.2), squeeze=False)
    for j, (family, members) in enumerate(families.items()):
        a1, a2 = axes[0, j], axes[1, j]
        for o in members:
            r = sec["results"][o]
            a1.plot(np.arange(len(r["_train_loss"])), r["_train_loss"], color=colors[o], label=o)
            val = np.array([np.nan if v is None else v for v in r["final_val_loss_per_lr"]], dtype=float)
            a2.plot(r["lr_grid"], val, marker="o", ms=3, color=colors[o])
        a1.set_yscale("log")
        a1.set_xlabel("epoch (count)", fontsize=7)
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("learning rate (dimensionless)", fontsize=7)
        if j == 0:
            a1.set_ylabel("train loss at the best rate\n(cross-entropy, nats)", fontsize=7)
            a2.set_ylabel("final validation loss\n(cross-entropy, nats)", fontsize=7)
        a1.set_title(family, fontsize=9)
        a1.legend(fontsize=6, ncol=2)
        for ax in (a1, a2):
            ax.tick_params(labelsize=6)
            _few_ticks(ax, 4, 4)
    fig.suptitle("Digits MLP: loss curves at the best rate (top), and the jit(vmap) learning-rate sweep (bottom)")
    fig.tight_layout()
    return _save(fig, out, "mlp")


def mlp_low_precision(sec: dict, out: Path) -> Path:
    """Train loss per epoch of each low-precision mode, at the best rate (left) and at a tenth of it (right)."""
    runs = {m: r for m, r in sec["low_precision"].items() if "train_loss_per_epoch" in r}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    colors = optimizer_colors(sorted({m.removesuffix("_slow") for m in runs}))
    for ax, slow in zip(axes[0], (False, True)):
        for m, r in runs.items():
            if m.endswith("_slow") == slow:
                y = np.array([np.nan if v is None else v for v in r["train_loss_per_epoch"]], dtype=float)
                ax.plot(np.arange(len(y)), y, color=colors[m.removesuffix("_slow")], label=m.removesuffix("_slow"),
                        lw=1.2, ls="--" if m.startswith("bf16_nearest") else "-")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (count)", fontsize=8)
        ax.set_ylabel("train loss (cross-entropy, nats)", fontsize=8)
        ax.set_title("a tenth of the best rate" if slow else "the best Adam rate", fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(which="both", labelsize=7)
        _few_ticks(ax, 4, 4)
    fig.suptitle("Digits MLP, Adam with warmup-cosine: float32 vs bfloat16 parameters and low-memory state", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "mlp_low_precision")


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """A trailing moving average (mini-batch losses are noisy); the first points average what there is."""
    c = np.cumsum(np.insert(np.asarray(y, np.float64), 0, 0.0))
    n = np.arange(1, len(y) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def transformer(sec: dict, out: Path, names: list[str], stem: str, title: str) -> Path:
    """Loss against steps and wall time for ``names`` (and the sweep, when there was one)."""
    runs = {n: sec["results"][n] for n in names if "_train_loss" in sec["results"].get(n, {})}
    swept = {n: r for n, r in runs.items() if r.get("final_val_loss_per_lr")}
    colors = optimizer_colors(list(runs))
    fig, axes = plt.subplots(1, 3 if swept else 2, figsize=(13 if swept else 9, 3.6), squeeze=False)
    a_step, a_time = axes[0, 0], axes[0, 1]
    window = max(len(next(iter(runs.values()))["_train_loss"]) // 20, 1) if runs else 1
    for n, r in runs.items():
        y = _smooth(r["_train_loss"], window)
        a_step.plot(np.arange(len(y)), y, color=colors[n], label=n, lw=1.2)
        a_time.plot(np.arange(1, len(y) + 1) * r["step_s"], y, color=colors[n], label=n, lw=1.2)
    a_step.set_xlabel("step (count)", fontsize=8)
    a_time.set_xlabel("wall time (s)", fontsize=8)
    a_step.set_ylabel(f"train loss, moving average of {window}\n(cross-entropy, nats)", fontsize=8)
    a_step.set_title("loss against steps", fontsize=9)
    a_time.set_title("loss against wall time", fontsize=9)
    a_step.legend(fontsize=7)
    if swept:
        a_lr = axes[0, 2]
        for n, r in swept.items():
            val = np.array([np.nan if v is None else v for v in r["final_val_loss_per_lr"]], dtype=float)
            factors = np.asarray(r["lr_grid"]) / r["lr_grid"][len(r["lr_grid"]) // 2]
            a_lr.plot(factors, val, marker="o", ms=3, color=colors[n], label=n)
        a_lr.set_xscale("log")
        a_lr.set_xlabel("learning rate / the usual one (dimensionless)", fontsize=8)
        a_lr.set_ylabel("final validation loss (nats)", fontsize=8)
        a_lr.set_title("learning-rate sweep", fontsize=9)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
        _few_ticks(ax, 4, 4)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, stem)


# --- speed ---------------------------------------------------------------------------------------------

def _speed(rows: list[dict], x_key: str, xlabel: str, out: Path, name: str, title: str) -> Path:
    rows = [r for r in rows if "impls" in r]
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    order = list(dict.fromkeys(i for r in rows for i in r["impls"]))
    fig, axes = _grid(len(opts), 3.4, 3.0)
    drawn: dict[str, object] = {}
    for ax, opt in zip(axes, opts):
        mine = sorted((r for r in rows if r["optimizer"] == opt), key=lambda r: r[x_key])
        for impl in order:
            pts = [(r[x_key], 1e3 * r["impls"][impl]["time"]["median_s"]) for r in mine
                   if "time" in r["impls"].get(impl, {})]
            if pts:
                (line,) = ax.plot(*zip(*pts), "o-", ms=3, lw=1.2, color=impl_color(impl, order), label=impl)
                drawn.setdefault(impl, line)
        roof = [(r[x_key], 1e3 * r["roofline_time_s"]) for r in mine if r.get("roofline_time_s")]
        if roof:
            (line,) = ax.plot(*zip(*roof), "--", color=ROOFLINE_COLOR, lw=1, label="roofline")
            drawn.setdefault("roofline", line)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel("step time (ms)", fontsize=7)
        ax.set_title(f"{opt} ({mine[0]['nominal_bytes_per_param']} B/param)", fontsize=8)
        ax.tick_params(labelsize=6)
        _few_ticks(ax, 4, 4)
    labels = {"roofline": "roofline: nominal bytes at the reference bandwidth"}
    fig.legend(list(drawn.values()), [labels.get(k, k) for k in drawn], loc="lower center", ncol=min(len(drawn), 4),
               fontsize=7, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, out, name)


def sweep(sec: dict, out: Path) -> Path:
    rows = [r for r in sec["rows"] if "vmap" in r]
    ks = [r["k"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ks, [r["vmap"]["time"]["median_s"] for r in rows], "o-", color="#1f77b4", label="jit(vmap(train))")
    a1.plot(ks, [r["loop"]["time"]["median_s"] for r in rows], "s-", color="#7f7f7f", label="loop of jit(train)")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("K (learning rates, count)")
    a1.set_ylabel("time for all K runs (s)")
    a1.legend(fontsize=8)
    a2.plot(ks, [r["speedup_vmap_vs_loop"] for r in rows], "o-", color="#1f77b4")
    a2.axhline(1.0, color="k", lw=0.6, ls=":")
    a2.set_xscale("log")
    a2.set_xlabel("K (learning rates, count)")
    a2.set_ylabel("loop time / vmap time\n(ratio; > 1: vmap faster)")
    for ax in (a1, a2):
        _few_ticks(ax, 5, 5)
    fig.suptitle(f"Learning-rate sweep: {sec.get('problem')}, {sec.get('optimizer')}, {sec.get('steps')} steps")
    fig.tight_layout()
    return _save(fig, out, "sweep")


def make_all(ctx: Context, out: Path, sections: list[str] | None = None) -> tuple[list[Path], dict[str, str]]:
    """Draws every figure the results of ``sections`` (default: all) allow: ``(files, {figure: error})``."""
    r = ctx.results
    want = set(sections) if sections is not None else None
    on = lambda section: want is None or section in want  # noqa: E731
    names = [s["name"] for s in r.get("optimizers", {}).get("specs", [])]
    colors = optimizer_colors(names)
    todo: list[tuple[str, Callable[[], Path]]] = []
    if on("toy") and r.get("toy"):
        by_name = {p.name: p for p in problems_mod.toy_problems()}
        for pname, entry in r["toy"].items():
            todo.append((f"trajectories__{pname}", partial(trajectories, by_name[pname], entry["results"], out, colors)))
        todo.append(("toy_losses", partial(toy_losses, r["toy"], out, colors)))
    if on("logistic") and r.get("logistic", {}).get("modes"):
        todo.append(("logistic", partial(logistic, r["logistic"], out)))
    if on("mlp") and r.get("mlp", {}).get("results"):
        todo.append(("mlp", partial(mlp, r["mlp"], out, colors)))
    if on("mlp") and isinstance(r.get("mlp", {}).get("low_precision"), dict) and "error" not in r["mlp"]["low_precision"]:
        todo.append(("mlp_low_precision", partial(mlp_low_precision, r["mlp"], out)))
    if on("transformer") and r.get("transformer", {}).get("results"):
        from benchmarks.transformer import LOW_PRECISION, SPECS

        sec = r["transformer"]
        todo.append(("transformer", partial(
            transformer, sec, out, [s.name for s in SPECS], "transformer",
            f"Transformer LM ({sec['n_params']:,} params, {sec['steps']} steps): each optimizer at its best rate")))
        low = [s.name for s in LOW_PRECISION]
        if any(n in sec["results"] for n in low[1:]):
            todo.append(("transformer_low_precision", partial(
                transformer, sec, out, low, "transformer_low_precision",
                "Transformer LM: AdamW with warmup-cosine, float32 vs bfloat16 parameters, 8-bit and bfloat16 moments")))
    if on("update") and r.get("update", {}).get("rows"):
        todo.append(("speed_vs_params", partial(_speed, r["update"]["rows"], "n_params", "parameters (count, one leaf)",
                                                out, "speed_vs_params", "Update step time vs number of parameters")))
    if on("leaves") and r.get("leaves", {}).get("rows"):
        rows = r["leaves"]["rows"]
        n = next((row["n_params"] for row in rows), 0)
        draw = partial(_speed, rows, "n_leaves", "leaves (count)", out, "speed_vs_leaves",
                       f"Update step time vs number of leaves ({n:,} parameters in all)")
        todo.append(("speed_vs_leaves", draw))
    if on("sweep") and any("vmap" in row for row in r.get("sweep", {}).get("rows", [])):
        todo.append(("sweep", partial(sweep, r["sweep"], out)))
    made, failed = [], {}
    for name, draw in todo:
        try:
            made.append(draw())
        except Exception as exc:  # noqa: BLE001 - a figure must not cost the report
            plt.close("all")
            failed[name] = f"{type(exc).__name__}: {exc}"
    return made, failed
