"""Convergence suite: every optimizer of the library, jit-compiled, ``lax.scan`` over steps.

* ``toy``: the seed problems, Rosenbrock, Beale, an ill-conditioned quadratic —
  final loss, steps to the target, trajectory, compile and run time;
* ``logistic``: full-batch GD vs stochastic (B=1) vs mini-batch SGD on synthetic
  logistic regression — suboptimality per epoch, test accuracy, wall time;
* ``mlp``: a small MLP on the digits, every optimizer at its best learning rate
  from a vmapped sweep (all rates in one jitted program).

Keys of the results that start with ``_`` hold full arrays for the plots and
are left out of ``results.json``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import low_memory, optimizers, problems
from benchmarks.context import Context, Task, downsample, error_record, finite_or_none
from benchmarks.loops import epoch_orders, make_step, run_epochs, run_steps, vmap_sweep
from benchmarks.timing import Runner, compile_timed, measure


def _first_reached(values: np.ndarray, target: float) -> int | None:
    """The first index with ``values <= target`` (a step or epoch count), or ``None``."""
    hits = np.flatnonzero(np.asarray(values, np.float64) <= target)
    return int(hits[0]) if hits.size else None


def _time_executable(ctx: Context, fn, *args, repeats: int | None = None) -> dict:
    runner = Runner(lambda _: fn(*args), None)
    timing = measure({"run": runner}, repeats or ctx.config.repeats, warmup_calls=1)["run"]
    return timing.to_json()


def _specs(ctx: Context) -> list[optimizers.OptSpec]:
    specs, missing = optimizers.discover(ctx.lib, ctx.config.optimizers)
    info = ctx.section("optimizers")
    info["library"] = ctx.lib.__name__
    info["specs"] = [s.to_json() for s in specs]
    info["table_entries_missing_from_library"] = missing
    return specs


# --- toy problems -----------------------------------------------------------------------------------

def toy_lr(spec: optimizers.OptSpec, problem: problems.ToyProblem) -> float:
    return problem.gd_lr if spec.lr is optimizers.GD else spec.lr * problem.lr_scale


def run_toy(ctx: Context, spec: optimizers.OptSpec, problem: problems.ToyProblem) -> dict:
    lr = toy_lr(spec, problem)
    tx = optimizers.build(ctx.lib, spec, lr)
    step = make_step(ctx.lib, tx, lambda x, _: problem.fn(x), spec.extra_args)

    def run(x0):
        x, _, losses, path = run_steps(step, x0, tx.init(x0), length=problem.steps, record_params=True)
        return jnp.concatenate([losses, problem.fn(x)[None]]), jnp.concatenate([path, x[None]])

    x0 = jnp.asarray(problem.x0, jnp.float32)
    compiled = compile_timed(jax.jit(run), x0)
    losses, path = (np.asarray(a) for a in compiled.executable(x0))
    out = {
        "lr": lr,
        "final_loss": finite_or_none(losses[-1]),
        "final_x": [finite_or_none(v) for v in path[-1]],
        "finite": bool(np.all(np.isfinite(losses))),
        "steps_to_target": _first_reached(losses, problem.target),
        "compile": compiled.to_json(),
        "run": _time_executable(ctx, compiled.executable, x0),
        "curve": downsample(losses),
        "_losses": losses,
        "_path": path,
    }
    if problem.gd_closed_form is not None and spec.name == "sgd":
        exact = problem.gd_closed_form(np.arange(problem.steps + 1))
        out["gd_closed_form_max_err"] = float(np.max(np.abs(path - exact)) / np.max(np.abs(problem.x0)))
    return out


def _toy_task(spec: optimizers.OptSpec) -> Task:
    def run(ctx: Context) -> None:
        section = ctx.section("toy")
        for problem in problems.toy_problems():
            entry = section.setdefault(problem.name, {"problem": problem.to_json(), "results": {}})
            try:
                entry["results"][spec.name] = run_toy(ctx, spec, problem)
            except Exception as exc:  # noqa: BLE001 - one broken optimizer must not stop the suite
                entry["results"][spec.name] = error_record(exc)

    return Task("toy", f"toy problems: {spec.name}", run, cost=1.0)


# --- logistic regression: full-batch vs stochastic vs mini-batch ----------------------------------

LOGISTIC_TOL = 1e-2  # suboptimality f - f* counted as converged


def _logistic_setup(ctx: Context) -> dict:
    cfg = ctx.config
    section = ctx.section("logistic")
    if "_data" not in section:
        data = problems.logistic_data(cfg.pick(1000, 4000), cfg.pick(500, 2000), dim=20, seed=cfg.seed)
        _, f_star, smoothness = problems.logistic_optimum(data["x_train"], data["y_train"])
        section.update({
            "_data": data,
            "f_star": f_star,
            "smoothness_L": smoothness,
            "n_train": len(data["y_train"]),
            "n_test": len(data["y_test"]),
            "dim": data["x_train"].shape[1],
            "l2": problems.LOGISTIC_L2,
            "epochs": cfg.pick(5, 20),
            "tolerance": LOGISTIC_TOL,
            "modes": {},
        })
    return section


def logistic_modes(n_train: int, smoothness: float) -> list[tuple[str, int, float]]:
    """``(label, batch size, learning rate)``: the classic three, same optimizer (sgd)."""
    return [
        ("full-batch GD", n_train, 1.0 / smoothness),
        ("mini-batch SGD (B=32)", 32, 0.5 / smoothness),
        ("stochastic GD (B=1)", 1, 0.05 / smoothness),
    ]


def run_logistic(ctx: Context, label: str, batch_size: int, lr: float) -> dict:
    section = _logistic_setup(ctx)
    data, f_star = section["_data"], section["f_star"]
    tx = ctx.lib.sgd(lr)
    step = make_step(ctx.lib, tx, problems.logistic_loss)

    def run(orders, d):  # data as arguments: closed-over arrays would be baked into the program as constants
        def evaluate(w):
            return {
                "loss": problems.logistic_loss(w, (d["x_train"], d["y_train"])),
                "test_acc": problems.logistic_accuracy(w, d["x_test"], d["y_test"]),
            }

        w0 = jnp.zeros(d["x_train"].shape[1])
        return run_epochs(step, w0, tx.init(w0), (d["x_train"], d["y_train"]), orders, evaluate)[1]

    orders = epoch_orders(len(data["y_train"]), batch_size, section["epochs"], ctx.config.seed)
    args = (jnp.asarray(orders), jax.tree.map(jnp.asarray, data))
    compiled = compile_timed(jax.jit(run), *args)
    evals = jax.tree.map(np.asarray, compiled.executable(*args))
    subopt = evals["loss"].astype(np.float64) - f_star
    steps_per_epoch = len(data["y_train"]) // batch_size
    epochs_to_tol = _first_reached(subopt, LOGISTIC_TOL)
    timing = _time_executable(ctx, compiled.executable, *args, repeats=min(ctx.config.repeats, 5))
    return {
        "batch_size": batch_size,
        "lr": lr,
        "steps_per_epoch": steps_per_epoch,
        "final_suboptimality": finite_or_none(subopt[-1]),
        "epochs_to_tolerance": epochs_to_tol,
        "steps_to_tolerance": None if epochs_to_tol is None else epochs_to_tol * steps_per_epoch,
        "test_accuracy": finite_or_none(evals["test_acc"][-1]),
        "compile": compiled.to_json(),
        "run": timing,
        "seconds_per_epoch": timing["median_s"] / section["epochs"],
        "suboptimality_per_epoch": [finite_or_none(v) for v in subopt],
        "_subopt": subopt,
    }


def _logistic_task(index: int) -> Task:
    def run(ctx: Context) -> None:
        section = _logistic_setup(ctx)
        label, batch_size, lr = logistic_modes(section["n_train"], section["smoothness_L"])[index]
        try:
            section["modes"][label] = run_logistic(ctx, label, batch_size, lr)
        except Exception as exc:  # noqa: BLE001
            section["modes"][label] = error_record(exc)

    return Task("logistic", f"logistic regression: mode {index + 1}/3", run, cost=1.0)


# --- MLP on digits with a vmapped learning-rate sweep ----------------------------------------------

MLP_LOSS_TOL = 0.1  # train loss counted as fitted


def mlp_settings(ctx: Context) -> dict:
    cfg = ctx.config
    return {
        "sizes": [64, 64, 10],
        "batch_size": 64,
        "epochs": cfg.pick(6, 20, 40),
        "sweep_points": cfg.pick(4, 6, 8),
        "sweep_decades": cfg.pick(1.0, 1.5),
        "train_loss_tolerance": MLP_LOSS_TOL,
        "selection": "lowest final validation loss",
    }


def _mlp_section(ctx: Context) -> dict:
    section = ctx.section("mlp")
    if "results" not in section:
        section.update(mlp_settings(ctx), results={})
    return section


def lr_grid(centre: float, points: int, decades: float) -> np.ndarray:
    return (centre * np.logspace(-decades, decades, points)).astype(np.float32)


def mlp_trainer(ctx: Context, spec: optimizers.OptSpec):
    """``(lr, data) -> metrics per epoch`` for the digits MLP, traceable in ``lr`` (for vmap).

    ``data`` is :func:`mlp_data`; it is an argument, not a closure, so that the
    arrays are not baked into the compiled program as constants.
    """
    settings = mlp_settings(ctx)
    params0 = problems.mlp_init(jax.random.key(ctx.config.seed), tuple(settings["sizes"]))

    def train(lr, d):
        def evaluate(p):
            return {
                "train_loss": problems.mlp_loss(p, (d["x_train"], d["y_train"])),
                "val_loss": problems.mlp_loss(p, (d["x_val"], d["y_val"])),
                "val_acc": problems.mlp_accuracy(p, d["x_val"], d["y_val"]),
                "test_acc": problems.mlp_accuracy(p, d["x_test"], d["y_test"]),
            }

        tx = optimizers.build(ctx.lib, spec, lr)
        step = make_step(ctx.lib, tx, problems.mlp_loss, spec.extra_args)
        return run_epochs(step, params0, tx.init(params0), (d["x_train"], d["y_train"]), d["orders"], evaluate)[1]

    return train


def mlp_data(ctx: Context) -> dict[str, jax.Array]:
    """The digits splits and the mini-batch order of every epoch."""
    data = problems.digits_data(ctx.config.seed)
    settings = mlp_settings(ctx)
    orders = epoch_orders(len(data["y_train"]), settings["batch_size"], settings["epochs"], ctx.config.seed + 1)
    return {"orders": jnp.asarray(orders), **{k: jnp.asarray(v) for k, v in data.items()}}


def run_mlp(ctx: Context, spec: optimizers.OptSpec) -> dict:
    section = _mlp_section(ctx)
    grid = jnp.asarray(lr_grid(spec.mlp_lr, section["sweep_points"], section["sweep_decades"]))
    data = mlp_data(ctx)
    compiled = compile_timed(jax.jit(vmap_sweep(ctx.lib, mlp_trainer(ctx, spec))), grid, data)
    evals = jax.tree.map(np.asarray, compiled.executable(grid, data))
    final_val = np.where(np.isfinite(evals["val_loss"][:, -1]), evals["val_loss"][:, -1], np.inf)
    best = int(np.argmin(final_val))
    train_loss = evals["train_loss"][best]
    return {
        "lr_grid": grid.tolist(),
        "best_lr": float(grid[best]),
        "best_at_grid_edge": best in (0, len(grid) - 1),
        "final_train_loss": finite_or_none(train_loss[-1]),
        "final_val_loss": finite_or_none(evals["val_loss"][best, -1]),
        "val_accuracy": finite_or_none(evals["val_acc"][best, -1]),
        "test_accuracy": finite_or_none(evals["test_acc"][best, -1]),
        "epochs_to_tolerance": _first_reached(train_loss, MLP_LOSS_TOL),
        "final_val_loss_per_lr": [finite_or_none(v) for v in evals["val_loss"][:, -1]],
        "train_loss_per_epoch": [finite_or_none(v) for v in train_loss],
        "compile": compiled.to_json(),
        "sweep_run": _time_executable(ctx, compiled.executable, grid, data, repeats=min(ctx.config.repeats, 3)),
        "_train_loss": train_loss,
    }


def _mlp_task(spec: optimizers.OptSpec, cost: float) -> Task:
    def run(ctx: Context) -> None:
        section = _mlp_section(ctx)
        try:
            section["results"][spec.name] = run_mlp(ctx, spec)
        except Exception as exc:  # noqa: BLE001
            section["results"][spec.name] = error_record(exc)

    return Task("mlp", f"digits MLP sweep: {spec.name}", run, cost=cost)


# ``--quick`` compiles one MLP sweep per optimizer for a few of them only (compiling is the slow part).
QUICK_MLP_OPTIMIZERS = ("sgd", "momentum", "adam")


def tasks(ctx: Context, section: str) -> list[Task]:
    if section == "toy":
        return [_toy_task(s) for s in _specs(ctx)]
    if section == "logistic":
        return [_logistic_task(i) for i in range(3)]
    if section == "mlp":
        specs = _specs(ctx)
        if ctx.config.quick and not ctx.config.optimizers:
            specs = [s for s in specs if s.name in QUICK_MLP_OPTIMIZERS] or specs[:3]
            _mlp_section(ctx)["note"] = f"--quick: only {[s.name for s in specs]} (pass --optimizers to choose)"
        return [_mlp_task(s, ctx.config.pick(1.5, 3.0, 5.0)) for s in specs] + low_memory.mlp_task(ctx)
    raise ValueError(section)
