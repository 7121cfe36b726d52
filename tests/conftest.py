"""Test configuration.

float64 is enabled so references can be compared exactly; tests that need
JAX's default (32-bit) mode run in a subprocess.

Hypothesis never shrinks here: a failing example is reported as found, since
shrinking recompiles for every smaller example and can outlast CI's time
limit. In the default tier and under CI (``CI`` set) it runs derandomized:
the same examples every run, so a red CI is reproducible; the full tier
draws new examples each run.

Two tiers, chosen with ``JAXOPT_LITE_TESTS``:

- ``sample`` (the default, what CI runs): every test function runs, with its
  first parametrized case and a fixed quarter of the others (chosen by a hash
  of the test's id, so the same cases every run and on every xdist worker),
  at most ``PER_FILE`` tests a file beyond the first cases; tests marked
  ``slow`` are skipped. Tests named by id on the command line
  (``file.py::test`` or ``file.py::test[case]``) run whatever the tier.
- ``full``: every case of every test.

Whatever the tier, a worker that has spent ``JAXOPT_LITE_TEST_BUDGET_S``
seconds (default 900, 15 minutes) skips the tests it has not started, each with a reason
that says so, and the summary counts them: on a machine so slow that the run
would outlast CI's limit, the run stops early and says what it left out
instead of being killed.
"""

import collections
import os
import time
import zlib

import jax
import pytest
from hypothesis import Phase, settings

jax.config.update("jax_enable_x64", True)

_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
settings.register_profile("local", deadline=None, phases=_NO_SHRINK)  # no deadline: first calls compile
settings.register_profile("ci", derandomize=True, deadline=None, phases=_NO_SHRINK)

TIER = os.environ.get("JAXOPT_LITE_TESTS", "sample")
settings.load_profile("ci" if os.environ.get("CI") or TIER != "full" else "local")

SAMPLE_ONE_IN = 4
PER_FILE = 24
BUDGET_S = float(os.environ.get("JAXOPT_LITE_TEST_BUDGET_S", "900"))
_START = time.monotonic()


def pytest_configure(config):
    if TIER not in ("sample", "full"):
        raise pytest.UsageError(f"JAXOPT_LITE_TESTS must be 'sample' or 'full', got {TIER!r}")
    config.addinivalue_line("markers", "slow: runs only with JAXOPT_LITE_TESTS=full")


def _in_sample(item) -> bool:
    """A case beyond its function's first: in the default tier one in ``SAMPLE_ONE_IN``, fixed by its id."""
    return not item.get_closest_marker("slow") and zlib.crc32(item.nodeid.encode()) % SAMPLE_ONE_IN == 0


def pytest_collection_modifyitems(config, items):
    if TIER == "full":
        return
    named = tuple(arg.replace("\\", "/") for arg in config.args if "::" in arg)  # tests asked for by id run whole
    chosen, seen, extra = set(), set(), {}
    for item in items:
        function = item.nodeid.split("[")[0]
        if any(item.nodeid.endswith(arg) or function.endswith(arg) for arg in named) or (
            function not in seen and not item.get_closest_marker("slow")
        ):
            chosen.add(item.nodeid)
        elif _in_sample(item):
            extra.setdefault(item.nodeid.split("::")[0], []).append(item.nodeid)
        seen.add(function)
    # A file keeps at most PER_FILE tests (or more, if it has more functions: each keeps its first case).
    # xdist's loadfile starts the largest files first; even sizes let a time-limited run reach every file.
    firsts = collections.Counter(nodeid.split("::")[0] for nodeid in chosen)
    for module, nodeids in extra.items():
        chosen.update(nodeids[: max(0, PER_FILE - firsts[module])])
    kept = [item for item in items if item.nodeid in chosen]
    dropped = [item for item in items if item.nodeid not in chosen]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def budget_left_s() -> float:
    """Seconds this worker may still spend before it stops starting tests."""
    return BUDGET_S - (time.monotonic() - _START)


def pytest_runtest_setup(item):
    if budget_left_s() < 0:
        pytest.skip(f"over the test-time budget (JAXOPT_LITE_TEST_BUDGET_S={BUDGET_S:.0f} s spent)")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum("over the test-time budget" in str(getattr(r, "longrepr", "")) for r in skipped)
    if n:
        terminalreporter.write_line(
            f"{n} tests not run: the time budget of {BUDGET_S:.0f} s per worker was spent (a slow machine)",
            yellow=True,
        )


def eight_cpu_devices_env(x64: bool = False) -> dict[str, str]:
    """The environment of a subprocess that sees 8 CPU devices (JAX fixes the device count when its backend
    starts, so a test needing several devices runs its script in a child process)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_ENABLE_X64"] = "1" if x64 else "0"
    return env


def run_report_script(script: str, *args: str, timeout: float = 600) -> dict:
    """Runs ``script`` on 8 CPU devices and returns the JSON of its last ``REPORT {...}`` line (asserting it ran)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script, *args], check=False, env=eight_cpu_devices_env(),
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (
        f"8-device subprocess failed (rc={proc.returncode})\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return json.loads(lines[-1][len("REPORT "):])
