"""The memory-bandwidth roofline, measured on this machine.

An optimizer update is elementwise: its speed limit is memory bandwidth, not
flops. The reference is the best bandwidth that STREAM-style kernels attain at
the same total size (caches make small arrays faster), each jitted and run in
place (input buffer donated, so no allocation and no write-allocate traffic):

* ``scale``: ``a <- -a`` (8 bytes per float32 element);
* ``add``: ``b <- b + c`` (12 bytes);
* ``triad``: ``b <- b + s*c`` (12 bytes).

Like STREAM, each kernel's bandwidth is taken from its *fastest* sample over
the repeats, and the reference is the best kernel: an update moving ``B``
bytes per parameter then has a roofline time of ``B * n / bandwidth(n)``, and
its median time can only exceed that (fraction of roofline <= 1) unless the
update streams memory better than every reference kernel — the speed suite
then takes that implementation's own bandwidth as the reference and says so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.context import Context, Task, error_record
from benchmarks.timing import Runner, Timing, compile_timed, measure

BYTES_PER_ELEMENT = {"scale": 8, "add": 12, "triad": 12}
DESCRIPTION = {"scale": "a <- -a", "add": "b <- b + c", "triad": "b <- b + s*c"}
MIN_REPEATS = 10  # the best of at least this many samples


def _kernel(name: str):
    if name == "scale":
        return lambda a, c: -a  # the sign flips back and forth: no denormals, nothing to fold away
    if name == "add":
        return lambda b, c: b + c
    if name == "triad":
        return lambda b, c: b + jnp.float32(1e-3) * c
    raise ValueError(name)


def kernel_runner(name: str, n: int) -> Runner:
    """A timed, in-place (donated) STREAM kernel on ``n`` float32s."""
    a = jnp.zeros((n,), jnp.float32)
    c = jnp.ones((n,), jnp.float32)
    compiled = compile_timed(jax.jit(_kernel(name), donate_argnums=0), a, c)
    return Runner(lambda carry: compiled.executable(carry, c), a)


def stream_runners(n: int) -> dict[str, Runner]:
    return {f"stream_{name}": kernel_runner(name, n) for name in BYTES_PER_ELEMENT}


def stream_record(n: int, timings: dict[str, Timing]) -> dict:
    """Per kernel: bytes, time, best and median bandwidth; and the best kernel's bandwidth (the reference)."""
    kernels = {}
    for name, nbytes in BYTES_PER_ELEMENT.items():
        t = timings[f"stream_{name}"]
        kernels[name] = {
            "bytes": nbytes * n,
            "time": t.to_json(),
            "best_gb_s": nbytes * n / t.min_s / 1e9,
            "median_gb_s": nbytes * n / t.median_s / 1e9,
        }
    best = max(kernels, key=lambda k: kernels[k]["best_gb_s"])
    return {"n": n, "kernels": kernels, "bandwidth_gb_s": kernels[best]["best_gb_s"], "best_kernel": best}


def measure_stream(n: int, repeats: int, min_sample_s: float) -> dict:
    timings = measure(stream_runners(n), max(repeats, MIN_REPEATS), min_sample_s=min_sample_s)
    return stream_record(n, timings)


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
        section["kernels"] = {k: f"{DESCRIPTION[k]} ({b} B/element, float32, in place)"
                              for k, b in BYTES_PER_ELEMENT.items()}
        section["reference"] = "best sample of the best kernel (STREAM's convention)"
        sizes = section.setdefault("sizes", {})
        try:
            sizes[str(n)] = measure_stream(n, ctx.config.repeats, ctx.config.pick(0.005, 0.02))
        except Exception as exc:  # noqa: BLE001
            sizes[str(n)] = error_record(exc)
        ok = [v["bandwidth_gb_s"] for v in sizes.values() if "bandwidth_gb_s" in v]
        section["peak_bandwidth_gb_s"] = max(ok) if ok else None

    return Task("roofline", f"roofline: STREAM kernels, n={n:,}", run, cost=1.0 + n / 2**24)


def tasks(ctx: Context, section: str) -> list[Task]:
    return [_task(n) for n in roofline_sizes(ctx)]
