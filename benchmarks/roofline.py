"""The memory-bandwidth roofline, measured on this machine.

An optimizer update is elementwise: its speed limit is memory bandwidth, not
flops. We measure the bandwidth a jitted, donated STREAM-style triad
``a <- b + s * c`` attains (reads ``b`` and ``c``, writes ``a`` in ``b``'s
buffer: 12 bytes per float32 element) at each total size the speed suite uses,
since caches make small arrays faster. An update moving ``B`` bytes per
parameter has a roofline time of ``B * n / bandwidth(n)``; the speed suite
times a triad of its own size interleaved with each update it measures, so
that its fraction of roofline is a ratio taken under the same conditions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.context import Context, Task, error_record
from benchmarks.timing import Compiled, Runner, Timing, compile_timed, measure

TRIAD_BYTES_PER_ELEMENT = 12  # float32: read b, read c, write a


def _triad(b, c):
    return b + jnp.float32(1e-3) * c


def triad_runner(n: int) -> tuple[Runner, Compiled]:
    """A timed ``b <- b + s*c`` on ``n`` float32s (``b`` donated, so the kernel runs in place)."""
    b = jnp.zeros((n,), jnp.float32)
    c = jnp.ones((n,), jnp.float32)
    compiled = compile_timed(jax.jit(_triad, donate_argnums=0), b, c)
    return Runner(lambda carry: compiled.executable(carry, c), b), compiled


def triad_record(n: int, timing: Timing) -> dict:
    nbytes = TRIAD_BYTES_PER_ELEMENT * n
    return {"n": n, "bytes": nbytes, "time": timing.to_json(), "bandwidth_gb_s": nbytes / timing.median_s / 1e9}


def measure_triad(n: int, repeats: int, min_sample_s: float) -> dict:
    runner, compiled = triad_runner(n)
    timing = measure({"triad": runner}, repeats, min_sample_s=min_sample_s)["triad"]
    return {**triad_record(n, timing), "compile": compiled.to_json()}


def roofline_sizes(ctx: Context) -> list[int]:
    """The total sizes the speed suite times, so each has a bandwidth measured at its own size."""
    from benchmarks import speed

    sizes = set(speed.single_leaf_sizes(ctx)) if "update" in ctx.config.sections else set()
    if "leaves" in ctx.config.sections or not sizes:
        sizes.add(speed.leaves_total(ctx))  # a split tree moves as many bytes as one leaf of the same total
    return sorted(sizes)


def _task(n: int) -> Task:
    def run(ctx: Context) -> None:
        section = ctx.section("roofline")
        section["kernel"] = "a <- b + s*c (float32, jitted, b donated)"
        section["bytes_per_element"] = TRIAD_BYTES_PER_ELEMENT
        sizes = section.setdefault("sizes", {})
        try:
            sizes[str(n)] = measure_triad(n, ctx.config.repeats, ctx.config.pick(0.005, 0.02))
        except Exception as exc:  # noqa: BLE001
            sizes[str(n)] = error_record(exc)
        ok = [v["bandwidth_gb_s"] for v in sizes.values() if "bandwidth_gb_s" in v]
        section["peak_bandwidth_gb_s"] = max(ok) if ok else None

    return Task("roofline", f"roofline: triad n={n:,}", run)


def tasks(ctx: Context, section: str) -> list[Task]:
    return [_task(n) for n in roofline_sizes(ctx)]
