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


def trajectories(problem, entries: dict, out: Path) -> Path:
    """One contour plot per optimizer with its iterates drawn over it."""
    box = problem.box
    names = [o for o, r in entries.items() if "_path" in r]
    fig, axes = _grid(len(names), share=True)  # one box for all: fewer tick labels to draw
    surface = _surface(problem, box)
    for ax, name in zip(axes, names):
        r = entries[name]
        path = _finite_prefix(r["_path"])
        if problem.dim == 1:
            xs, fs = surface
            ax.plot(xs, fs, color="0.6", lw=1)
            fx = _finite_prefix(r["_losses"])
            n = min(len(path), len(fx))
            ax.plot(path[:n, 0], fx[:n], "o-", ms=2.5, lw=0.8, color="C3")
            ax.set_xlim(*box[0])
            lo, hi = float(fs.min()), float(fs.max())
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
        else:
            xx, yy, zz = surface
            if problem.f_star is not None and zz.min() >= 0:
                levels = np.geomspace(max(zz.min(), 1e-3), zz.max(), 20)
                ax.contour(xx, yy, zz, levels=levels, norm=matplotlib.colors.LogNorm(), cmap="viridis", linewidths=0.6)
            else:
                ax.contour(xx, yy, zz, levels=20, cmap="viridis", linewidths=0.6)
            ax.plot(path[:, 0], path[:, 1], "o-", ms=2, lw=0.8, color="C3", markevery=max(1, len(path) // 60))
            ax.set_xlim(*box[0])
            ax.set_ylim(*box[1])
            if problem.x_star is not None:
                ax.plot(*problem.x_star, "k*", ms=8)
        x0 = np.asarray(problem.x0, np.float32)
        start = problem.x0 if problem.dim == 2 else (problem.x0[0], float(problem.fn(x0)))
        ax.plot(*start, "ks", ms=4)
        ax.set_title(f"{name} (lr={r['lr']:.3g})", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{problem.name}: f = {problem.formula}, {problem.steps} steps", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, f"trajectories__{problem.name}")


def toy_losses(toy: dict, out: Path) -> Path:
    fig, axes = _grid(len(toy), 4.0, 3.0)
    for ax, (pname, entry) in zip(axes, toy.items()):
        f_star = entry["problem"]["f_star"]
        for i, (o, r) in enumerate(entry["results"].items()):
            if "_losses" not in r:
                continue
            losses = _finite_prefix(r["_losses"]).astype(np.float64)
            # Clipped so that a diverging run does not squash the others.
            y = np.clip(losses - f_star, 1e-16, 1e6) if f_star is not None else np.clip(losses, -1e6, 1e6)
            ax.plot(np.arange(1, len(y) + 1), y, lw=0.9, color=f"C{i % 10}", ls=("-", "--", ":")[i // 10 % 3], label=o)
        if f_star is not None:
            ax.set_yscale("log")
            ax.set_ylabel("f - f*", fontsize=7)
        else:
            ax.set_yscale("symlog")
            ax.set_ylabel("f", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(1, entry["problem"]["steps"] + 1)
        ax.set_xlabel("step + 1", fontsize=7)
        ax.set_title(f"{pname}: {entry['problem']['formula']}", fontsize=8)
        ax.tick_params(labelsize=6)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "toy_losses")


# --- logistic regression and MLP ---------------------------------------------------------------------

def logistic(sec: dict, out: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, r in sec["modes"].items():
        if "_subopt" not in r:
            continue
        y = np.maximum(r["_subopt"], 1e-12)
        epochs = np.arange(len(y))
        a1.plot(epochs, y, "o-", ms=3, label=mode)
        a2.plot(epochs * r["seconds_per_epoch"], y, "o-", ms=3, label=mode)
    for ax, xlabel in ((a1, "epoch (passes over the data)"), (a2, "wall time (s, jitted)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("f - f*")
        ax.axhline(sec["tolerance"], color="k", lw=0.6, ls=":")
    a1.legend(fontsize=8)
    fig.suptitle(f"Logistic regression, n={sec['n_train']}, d={sec['dim']}")
    fig.tight_layout()
    return _save(fig, out, "logistic")


def mlp(sec: dict, out: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (o, r) in enumerate(sec["results"].items()):
        if "_train_loss" not in r:
            continue
        style = {"color": f"C{i % 10}", "ls": ("-", "--", ":")[i // 10 % 3], "label": o}
        a1.plot(r["_train_loss"], **style)
        val = np.array([np.nan if v is None else v for v in r["final_val_loss_per_lr"]], dtype=float)
        a2.plot(r["lr_grid"], val, marker="o", ms=3, **style)
    a1.set_yscale("log")
    a1.set_xlabel("epoch")
    a1.set_ylabel("train loss (best lr)")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("learning rate")
    a2.set_ylabel("final validation loss")
    a2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Digits MLP: loss curves at the best rate, and the vmapped sweep")
    fig.tight_layout()
    return _save(fig, out, "mlp")


# --- speed ---------------------------------------------------------------------------------------------

def _speed(rows: list[dict], x_key: str, xlabel: str, out: Path, name: str) -> Path:
    opts = list(dict.fromkeys(r["optimizer"] for r in rows if "impls" in r))
    fig, axes = _grid(len(opts), 3.6, 3.0)
    for ax, opt in zip(axes, opts):
        mine = sorted((r for r in rows if r["optimizer"] == opt and "impls" in r), key=lambda r: r[x_key])
        impls = list(dict.fromkeys(i for r in mine for i in r["impls"]))
        for j, impl in enumerate(impls):
            pts = [(r[x_key], r["impls"][impl]["time"]["median_s"]) for r in mine if "time" in r["impls"].get(impl, {})]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, color=f"C{j}", label=impl)
        roof = [(r[x_key], r["roofline_time_s"]) for r in mine if r.get("roofline_time_s")]
        if roof:
            ax.plot(*zip(*roof), "k--", lw=1, label=f"roofline ({mine[0]['nominal_bytes_per_param']} B/param)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel("step time (s)", fontsize=7)
        ax.set_title(opt, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, out, name)


def sweep(sec: dict, out: Path) -> Path:
    rows = [r for r in sec["rows"] if "vmap" in r]
    ks = [r["k"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ks, [r["vmap"]["time"]["median_s"] for r in rows], "o-", label="jit(vmap(train))")
    a1.plot(ks, [r["loop"]["time"]["median_s"] for r in rows], "s-", label="loop of jit(train)")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("K (learning rates)")
    a1.set_ylabel("time for all K runs (s)")
    a1.legend(fontsize=8)
    a2.plot(ks, [r["speedup_vmap_vs_loop"] for r in rows], "o-")
    a2.axhline(1.0, color="k", lw=0.6, ls=":")
    a2.set_xscale("log")
    a2.set_xlabel("K")
    a2.set_ylabel("loop time / vmap time")
    fig.suptitle(f"Learning-rate sweep: {sec.get('problem')}, {sec.get('optimizer')}, {sec.get('steps')} steps")
    fig.tight_layout()
    return _save(fig, out, "sweep")


def make_all(ctx: Context, out: Path) -> tuple[list[Path], dict[str, str]]:
    """Draws every figure the results allow: ``(files, {figure: error})``."""
    r = ctx.results
    todo: list[tuple[str, Callable[[], Path]]] = []
    if r.get("toy"):
        by_name = {p.name: p for p in problems_mod.toy_problems()}
        for pname, entry in r["toy"].items():
            todo.append((f"trajectories__{pname}", partial(trajectories, by_name[pname], entry["results"], out)))
        todo.append(("toy_losses", partial(toy_losses, r["toy"], out)))
    if r.get("logistic", {}).get("modes"):
        todo.append(("logistic", partial(logistic, r["logistic"], out)))
    if r.get("mlp", {}).get("results"):
        todo.append(("mlp", partial(mlp, r["mlp"], out)))
    if r.get("update", {}).get("rows"):
        todo.append(("speed_vs_params", partial(_speed, r["update"]["rows"], "n_params", "parameters (one leaf)", out,
                                                "speed_vs_params")))
    if r.get("leaves", {}).get("rows"):
        n = r["leaves"]["rows"][0]["n_params"]
        label = f"leaves ({n:,} params in all)"
        draw = partial(_speed, r["leaves"]["rows"], "n_leaves", label, out, "speed_vs_leaves")
        todo.append(("speed_vs_leaves", draw))
    if any("vmap" in row for row in r.get("sweep", {}).get("rows", [])):
        todo.append(("sweep", partial(sweep, r["sweep"], out)))
    made, failed = [], {}
    for name, draw in todo:
        try:
            made.append(draw())
        except Exception as exc:  # noqa: BLE001 - a figure must not cost the report
            plt.close("all")
            failed[name] = f"{type(exc).__name__}: {exc}"
    return made, failed
