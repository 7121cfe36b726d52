"""``python -m benchmarks``: run the suites, print tables, write results.json, report.md and PNGs.

Examples::

    python -m benchmarks                      # everything, full sizes (about an hour on 2 CPU cores, mostly
                                              # compiling 1000- and 5000-leaf updates)
    python -m benchmarks --quick              # tiny sizes, a few minutes; what CI runs
    python -m benchmarks --only speed --max-params 16M --repeats 20
    python -m benchmarks --only toy,mlp --optimizers sgd,adam,lion
    python -m benchmarks --library optax      # the convergence suites with Optax's optimizers, for reference
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.context import GROUPS, SECTIONS, Config, resolve_sections

_SUFFIXES = {"k": 2**10, "m": 2**20, "g": 2**30}


def parse_count(text: str) -> int:
    """``4194304``, ``4M`` (4 * 2**20), ``10e6``, ``512k``."""
    t = text.strip().lower().replace("_", "")
    try:
        if t and t[-1] in _SUFFIXES:
            return int(float(t[:-1]) * _SUFFIXES[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 4194304, 4M, 512k)") from None


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: the whole run in a few minutes")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help="run only these (repeatable or comma list): groups "
                        + ", ".join(f"{g} ({'+'.join(s)})" for g, s in GROUPS.items())
                        + f"; or sections {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory (default: bench_out/)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto",
                   help="where JAX runs: cpu, gpu, or auto (an accelerator when JAX finds one)")
    p.add_argument("--max-params", type=parse_count, default=None,
                   help="cap on parameters per speed benchmark (default 64M, 1M with --quick); e.g. 16M")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per figure (default 10, 5 with --quick)")
    p.add_argument("--optimizers", default=None,
                   help="comma list of optimizer names for the convergence suites (default: all the library has)")
    p.add_argument("--library", default="jaxopt_lite",
                   help="the library under test (default jaxopt_lite; 'optax' gives a reference run)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.repeats is not None and a.repeats < 1:
        p.error("--repeats must be >= 1")
    return Config(
        quick=a.quick,
        out=a.out,
        device=a.device,
        max_params=a.max_params or (2**20 if a.quick else 64 * 2**20),
        repeats=a.repeats or (5 if a.quick else 10),
        library=a.library,
        optimizers=[s.strip() for s in a.optimizers.split(",") if s.strip()] if a.optimizers else None,
        sections=resolve_sections(a.only),
        seed=a.seed,
    )


def select_platform(device: str) -> None:
    """Must run before JAX is imported."""
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif device == "gpu":
        os.environ["JAX_PLATFORMS"] = "gpu"  # JAX expands it to the GPU backend it has (cuda, rocm, ...)
    if device != "cpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for the peers


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    select_platform(config.device)

    from tqdm import tqdm

    from benchmarks import convergence, machine, optimizers, plots, report, roofline, speed, sweep
    from benchmarks.context import Context

    suites = {"toy": convergence, "logistic": convergence, "mlp": convergence,
              "roofline": roofline, "update": speed, "leaves": speed, "sweep": sweep}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        meta = {"machine": machine.describe(), "config": config.to_json(), "started": started}
    except RuntimeError as exc:  # e.g. --device gpu on a machine without one
        raise SystemExit(f"--device {config.device}: JAX could not start: {exc}") from None
    ctx = Context(config, optimizers.load_library(config.library))
    config.out.mkdir(parents=True, exist_ok=True)
    print(f"{meta['machine']['command']}\n{meta['machine']['cpu_model']}, {meta['machine']['cpu_cores']} cores; "
          f"JAX on {meta['machine']['platform']} ({meta['machine']['device_kind']}); sections: "
          f"{', '.join(config.sections)}", flush=True)

    tasks = [t for section in config.sections for t in suites[section].tasks(ctx, section)]
    seconds = dict.fromkeys(config.sections, 0.0)
    with tqdm(tasks, desc="benchmarks", unit="task", dynamic_ncols=True, file=sys.stderr) as bar:
        for task in bar:
            bar.set_postfix_str(task.label[:60])
            t = time.perf_counter()
            task.run(ctx)
            seconds[task.section] += time.perf_counter() - t
    meta["seconds_per_section"] = seconds

    all_tables = report.tables(ctx.results)
    for t in all_tables:
        print("\n" + report.render_text(t), flush=True)
    t = time.perf_counter()
    made, plot_errors = plots.make_all(ctx, config.out)
    seconds["plots"] = time.perf_counter() - t
    if plot_errors:
        ctx.results["plots"] = {name: {"error": msg} for name, msg in plot_errors.items()}
    meta["duration_s"] = time.perf_counter() - t0
    meta["load_average_at_end"] = machine.load_average()
    report.write_json(ctx, meta, config.out / "results.json")
    report.write_markdown(ctx, meta, all_tables, made, config.out / "report.md")
    warning = report.busy_machine_warning(meta)
    if warning:
        print(f"\nWarning: {warning}")
    errors = report.find_errors(ctx.results)
    print(f"\nWrote {config.out / 'results.json'}, {config.out / 'report.md'} and {len(made)} PNGs "
          f"in {meta['duration_s']:.0f} s" + (f"; {len(errors)} measurements failed (see report.md)" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
