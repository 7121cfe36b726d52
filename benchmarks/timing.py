"""Timing helpers shared by every suite.

Rules: warm up before timing, block on the results (``jax.block_until_ready``),
time with ``time.perf_counter``, repeat, and report the median and the
inter-quartile range. When several implementations are compared, their samples
are taken round-robin so that a noisy neighbour slows all of them alike and
their *ratio* stays meaningful.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles over ``repeats`` samples."""

    median_s: float
    q1_s: float
    q3_s: float
    repeats: int
    calls_per_sample: int
    min_s: float | None = None

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    def to_json(self) -> dict[str, float | int]:
        return {
            "median_s": self.median_s,
            "iqr_s": self.iqr_s,
            "q1_s": self.q1_s,
            "q3_s": self.q3_s,
            "repeats": self.repeats,
            "calls_per_sample": self.calls_per_sample,
            "min_s": self.min_s,
        }


def summarize(samples: list[float], calls_per_sample: int = 1) -> Timing:
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return Timing(float(med), float(q1), float(q3), len(samples), calls_per_sample, float(np.min(samples)))


def block(tree: Any) -> Any:
    import jax

    return jax.block_until_ready(tree)


class Runner:
    """Repeatedly applies ``carry = step(carry)`` and times it.

    ``step`` may donate its input (the carry is always replaced by the output),
    so this times a donated, in-place optimizer update as it runs in training.
    ``sync`` waits for the carry to be computed (``jax.block_until_ready`` by
    default; the identity for eager, synchronous peers such as torch on CPU).
    """

    def __init__(self, step: Callable[[Any], Any], carry: Any, sync: Callable[[Any], Any] = block):
        self.step = step
        self.carry = carry
        self.sync = sync
        self.calls_per_sample = 1

    def _run(self, n: int) -> float:
        carry = self.carry
        t0 = time.perf_counter()
        for _ in range(n):
            carry = self.step(carry)
        self.sync(carry)
        elapsed = time.perf_counter() - t0
        self.carry = carry
        return elapsed

    def warm_up(self, calls: int = 2, min_sample_s: float = 0.0, max_calls_per_sample: int = 1000) -> None:
        """Runs a few calls, then picks how many calls one sample makes (>= ``min_sample_s``)."""
        self._run(calls)
        one = self._run(1)
        n = math.ceil(min_sample_s / max(one, 1e-9)) if min_sample_s > 0 else 1
        self.calls_per_sample = int(min(max(n, 1), max_calls_per_sample))

    def sample(self) -> float:
        """Seconds per call, averaged over one sample of ``calls_per_sample`` calls."""
        return self._run(self.calls_per_sample) / self.calls_per_sample


def measure(
    runners: dict[str, Runner], repeats: int, *, warmup_calls: int = 2, min_sample_s: float = 0.0
) -> dict[str, Timing]:
    """Times each runner ``repeats`` times, interleaving them sample by sample."""
    for r in runners.values():
        r.warm_up(warmup_calls, min_sample_s)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            samples[name].append(r.sample())
    return {name: summarize(s, runners[name].calls_per_sample) for name, s in samples.items()}


def time_once(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the result blocked on."""
    t0 = time.perf_counter()
    out = block(fn())
    return out, time.perf_counter() - t0


@dataclass(frozen=True)
class Compiled:
    """An ahead-of-time compiled function with how long lowering and compiling took."""

    executable: Any
    lower_s: float
    compile_s: float

    @property
    def total_s(self) -> float:
        return self.lower_s + self.compile_s

    def to_json(self) -> dict[str, float | None]:
        return {"lower_s": self.lower_s, "compile_s": self.compile_s, **cost_analysis(self.executable)}


def compile_timed(jitted: Any, *args: Any, **kwargs: Any) -> Compiled:
    """``jitted.lower(*args).compile()``, timing each stage with Python's garbage collector paused (as ``timeit``
    does): a full collection of what earlier measurements left behind otherwise lands in one library's trace at
    random rows (0.2 s of a 0.37 s trace, seen with cProfile)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        lowered = jitted.lower(*args, **kwargs)
        t1 = time.perf_counter()
        executable = lowered.compile()
        t2 = time.perf_counter()
    finally:
        if was_enabled:
            gc.enable()
    return Compiled(executable, t1 - t0, t2 - t1)


def cost_analysis(executable: Any) -> dict[str, float | None]:
    """Bytes accessed and flops from XLA's cost model, or ``None`` where unavailable."""
    try:
        ca = executable.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        ca = None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not isinstance(ca, dict):
        return {"xla_bytes_accessed": None, "xla_flops": None}

    def get(key: str) -> float | None:
        value = ca.get(key)
        return float(value) if value is not None else None

    return {"xla_bytes_accessed": get("bytes accessed"), "xla_flops": get("flops")}
