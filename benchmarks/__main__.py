"""python -m benchmarks: run the suites, print tables, write results.json, report.md and PNGs.

Three sizes: the default run takes under 10 minutes on 2 CPU cores and covers every section at
moderate sizes; --quick is a smoke test (a few minutes); --full takes the hour-long sizes (64M-parameter
updates, the 5000-leaf tree path, which XLA takes minutes to compile). Results are written after each
section, so an interrupted run (Ctrl-C, kill) keeps the sections done so far.

Sections (--only takes sections or the groups convergence, speed, sweep):
{sections}

Examples::

    python -m benchmarks                      # every section, moderate sizes
    python -m benchmarks --quick              # tiny sizes; what CI runs
    python -m benchmarks --full               # the sizes quoted in README (about an hour on 2 CPU cores)
    python -m benchmarks --only speed --max-params 16M --repeats 20
    python -m benchmarks --only leaves --full --max-leaves 1000
    python -m benchmarks --only toy,mlp --optimizers sgd,adam,lion
    python -m benchmarks --library optax      # the same suites with Optax's optimizers, for reference

More: benchmarks/README.md (what each figure means, how it is timed).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.context import GROUPS, SECTION_HELP, SECTIONS, Config, resolve_sections

_SUFFIXES = {"k": 2**10, "m": 2**20, "g": 2**30}
DEFAULT_MAX_PARAMS = {"quick": 2**20, "default": 2**24, "full": 2**26}
DEFAULT_REPEATS = {"quick": 5, "default": 10, "full": 10}
INTERRUPTED = 130  # the shell's exit status for a run stopped by SIGINT


def parse_count(text: str) -> int:
    """``4194304``, ``4M`` (4 * 2**20), ``10e6``, ``512k``."""
    t = text.strip().lower().replace("_", "")
    try:
        if t and t[-1] in _SUFFIXES:
            return int(float(t[:-1]) * _SUFFIXES[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 4194304, 4M, 512k)") from None


def _positive(text: str) -> int:
    n = parse_count(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return n


def _description() -> str:
    sections = "\n".join(f"  {name:9s} {what}" for name, what in SECTION_HELP.items())
    return __doc__.format(sections=sections)


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=_description(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: a smoke test of every section")
    size.add_argument("--full", action="store_true",
                      help="the large sizes (64M params, 10M params in up to 5000 leaves on the tree path, 40-epoch "
                           "MLP): about an hour on 2 CPU cores")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help="run only these (repeatable or comma list): groups "
                        + ", ".join(f"{g} ({'+'.join(s)})" for g, s in GROUPS.items())
                        + f"; or sections {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=Path("bench_out"),
                   help="output directory for results.json, report.md and PNGs (default: bench_out/)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto",
                   help="where JAX runs: cpu, gpu, or auto (an accelerator when JAX finds one)")
    p.add_argument("--max-params", type=_positive, default=None,
                   help="cap on parameters per speed benchmark (default 16M; 1M with --quick, 64M with --full); "
                        "e.g. 4M")
    p.add_argument("--max-leaves", type=_positive, default=None,
                   help="most leaves at which the tree path (this library's and Optax's) is compiled; larger leaf "
                        "counts run in the fused layout only (default 300; 32 with --quick, 5000 with --full)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per figure (default 10, 5 with --quick)")
    p.add_argument("--optimizers", default=None,
                   help="comma list of optimizer names for the convergence suites (default: all the library has)")
    p.add_argument("--library", default="jaxopt_lite",
                   help="the library under test (default jaxopt_lite; 'optax' gives a reference run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, initial parameters and batch orders")
    a = p.parse_args(argv)
    if a.repeats is not None and a.repeats < 1:
        p.error("--repeats must be >= 1")
    mode = "quick" if a.quick else "full" if a.full else "default"
    return Config(
        mode=mode,
        out=a.out,
        device=a.device,
        max_params=a.max_params or DEFAULT_MAX_PARAMS[mode],
        repeats=a.repeats or DEFAULT_REPEATS[mode],
        library=a.library,
        optimizers=[s.strip() for s in a.optimizers.split(",") if s.strip()] if a.optimizers else None,
        sections=resolve_sections(a.only),
        seed=a.seed,
        max_leaves=a.max_leaves,
    )


def select_platform(device: str) -> None:
    """Must run before JAX is imported."""
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif device == "gpu":
        os.environ["JAX_PLATFORMS"] = "gpu"  # JAX expands it to the GPU backend it has (cuda, rocm, ...)
    if device != "cpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for the peers


def _inside_gc_callback(frame) -> bool:
    """Whether ``frame`` runs (inside) one of the garbage collector's callbacks (JAX registers one)."""
    codes = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


class _Stop:
    """Ctrl-C or a kill, remembered. Python prints and swallows an exception raised inside a garbage-collection
    callback, traceback and all, so a signal that lands there only sets the flag; the run checks it between
    tasks."""

    requested = False

    @classmethod
    def handler(cls, signum, frame):  # the signal handler signature
        cls.requested = True
        if not _inside_gc_callback(frame):
            raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.requested:
            raise KeyboardInterrupt


class Run:
    """The sections, run one after the other; after each, results.json, report.md and its PNGs are rewritten."""

    def __init__(self, config: Config, ctx, meta: dict, suites: dict):
        from benchmarks import report

        self.config, self.ctx, self.meta, self.suites = config, ctx, meta, suites
        self.report = report
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.done: list[str] = []
        self.cut: list[str] = []
        self.plots: dict[str, list[Path]] = {}
        self.plot_errors: dict[str, str] = {}
        self.current: str | None = None  # the section running now

    def write(self, status: str) -> None:
        from benchmarks import machine

        m = self.meta
        m["status"] = status
        m["sections_done"] = list(self.done)
        m["sections_cut"] = list(self.cut)
        m["sections_not_run"] = [s for s in self.config.sections if s not in self.done and s not in self.cut]
        m["seconds_per_section"] = dict(self.seconds)
        m["duration_s"] = time.perf_counter() - self.t0
        m["load_average_at_end"] = machine.load_average()
        if self.plot_errors:
            self.ctx.results["plots"] = {name: {"error": msg} for name, msg in self.plot_errors.items()}
        made = [p for s in self.config.sections for p in self.plots.get(s, [])]
        out = self.config.out
        self.report.write_json(self.ctx, m, out / "results.json")
        self.report.write_markdown(self.ctx, m, self.report.tables(self.ctx.results), made, out / "report.md")

    def finish_section(self, section: str) -> None:
        from benchmarks import plots

        t = time.perf_counter()
        made, failed = plots.make_all(self.ctx, self.config.out, sections=[section])
        self.seconds["plots"] = self.seconds.get("plots", 0.0) + time.perf_counter() - t
        self.plots[section] = made
        self.plot_errors.update(failed)
        self.done.append(section)
        for table in self.report.tables({section: self.ctx.results.get(section, {})}):
            print("\n" + self.report.render_text(table), file=sys.stdout, flush=True)
        self.write("running" if len(self.done) < len(self.config.sections) else "complete")

    def go(self) -> None:
        from tqdm import tqdm

        plan = [(s, self.suites[s].tasks(self.ctx, s)) for s in self.config.sections]
        total = sum(t.cost for _, tasks in plan for t in tasks)
        fmt = "{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left {postfix}"
        # The bar counts expected seconds, not tasks: a 5000-leaf compile weighs what it costs.
        with tqdm(total=total, bar_format=fmt, dynamic_ncols=True, file=sys.stderr, mininterval=1.0) as bar:
            for i, (section, tasks) in enumerate(plan):
                self.seconds[section] = 0.0
                self.current = section
                for j, task in enumerate(tasks):
                    bar.set_description_str(f"[{i + 1}/{len(plan)} {section} {j + 1}/{len(tasks)}]")
                    bar.set_postfix_str(task.label[:70])
                    t = time.perf_counter()
                    task.run(self.ctx)
                    self.seconds[section] += time.perf_counter() - t
                    bar.update(task.cost)
                    _Stop.check()
                self.finish_section(section)
                _Stop.check()
                self.current = None


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    select_platform(config.device)
    # A kill leaves what a Ctrl-C leaves.
    previous = {sig: signal.signal(sig, _Stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(config)
    except KeyboardInterrupt:  # before the first section started: nothing to keep
        print(f"\nInterrupted before any section ran; nothing written to {config.out}/.", file=sys.stderr)
        return INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(config: Config) -> int:
    from benchmarks import convergence, machine, optimizers, report, roofline, speed, sweep, transformer
    from benchmarks.context import Context

    suites = {"toy": convergence, "logistic": convergence, "mlp": convergence,
              "roofline": roofline, "update": speed, "leaves": speed, "sweep": sweep,
              "transformer": transformer}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        meta = {"machine": machine.describe(), "config": config.to_json(), "started": started}
    except RuntimeError:  # e.g. --device gpu on a machine without one
        raise SystemExit(f"--device {config.device}: JAX finds no such device on this machine "
                         "(for NVIDIA GPUs: pip install 'jax[cuda12]'); use --device cpu") from None
    ctx = Context(config, optimizers.load_library(config.library))
    config.out.mkdir(parents=True, exist_ok=True)
    print(f"{meta['machine']['command']}\n{meta['machine']['cpu_model']}, {meta['machine']['cpu_cores']} cores; "
          f"JAX on {meta['machine']['platform']} ({meta['machine']['device_kind']}); {config.mode} sizes; sections: "
          f"{', '.join(config.sections)}; writing {config.out}/ after each section", flush=True)
    note = speed.slow_compile_note(ctx)
    if note:
        print(note, flush=True)

    run = Run(config, ctx, meta, suites)
    try:
        run.go()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the partial results be written whole
        section = run.current if run.current not in run.done else None
        if section:
            run.cut.append(section)
        run.write("interrupted")
        kept = ", ".join(run.done) or "no complete section"
        cut = f"; {section} cut short" if section else ""
        print(f"\nInterrupted: {config.out / 'results.json'} and report.md hold {kept}{cut}.", file=sys.stderr,
              flush=True)
        return INTERRUPTED

    warning = report.busy_machine_warning(meta)
    if warning:
        print(f"\nWarning: {warning}")
    errors = report.find_errors(ctx.results)
    n_plots = sum(len(v) for v in run.plots.values())
    print(f"\nWrote {config.out / 'results.json'}, {config.out / 'report.md'} and {n_plots} PNGs "
          f"in {meta['duration_s']:.0f} s" + (f"; {len(errors)} measurements failed (see report.md)" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
