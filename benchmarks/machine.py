"""What produced the figures: the machine, the device, the versions, the command."""

from __future__ import annotations

import importlib
import os
import platform
import shlex
import sys


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # noqa: BLE001 - a missing or broken optional peer
        return None


def command() -> str:
    """The command line as it was typed (``python -m benchmarks ...``)."""
    return shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])


def describe() -> dict:
    import jax

    devices = jax.devices()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "jaxopt_lite": _version("jaxopt_lite"),
            "optax": _version("optax"),
            "numpy": _version("numpy"),
            "torch": _version("torch"),
            "matplotlib": _version("matplotlib"),
            "scikit-learn": _version("sklearn"),
        },
        "command": command(),
        "load_average": load_average(),
        "torch_threads": _torch_threads(),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: timings taken on a busy machine are noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _torch_threads() -> int | None:
    try:
        import torch
    except Exception:  # noqa: BLE001 - not installed, or a broken install: no torch peers
        return None
    return torch.get_num_threads()
