"""The run's configuration, the results being collected, and the unit of work (a task)."""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Sections and the groups that name several of them (``--only convergence``).
GROUPS: dict[str, tuple[str, ...]] = {
    "convergence": ("toy", "logistic", "mlp"),
    "speed": ("roofline", "update", "leaves"),
    "sweep": ("sweep",),
}
SECTIONS: tuple[str, ...] = tuple(s for group in GROUPS.values() for s in group)


def resolve_sections(only: list[str] | None) -> list[str]:
    """Expands ``--only`` (groups, sections, comma lists) into sections, in run order."""
    if not only:
        return list(SECTIONS)
    wanted: set[str] = set()
    for item in only:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name in GROUPS:
                wanted.update(GROUPS[name])
            elif name in SECTIONS:
                wanted.add(name)
            else:
                raise SystemExit(f"--only: unknown section {name!r}; choose from {sorted({*GROUPS, *SECTIONS})}")
    return [s for s in SECTIONS if s in wanted]


@dataclass
class Config:
    quick: bool = False
    out: Path = Path("bench_out")
    device: str = "auto"
    max_params: int = 64 * 2**20
    repeats: int = 10
    library: str = "jaxopt_lite"
    optimizers: list[str] | None = None
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    seed: int = 0

    def pick(self, quick: Any, full: Any) -> Any:
        """The quick-mode or the full-mode value of a size."""
        return quick if self.quick else full

    def to_json(self) -> dict:
        return {
            "quick": self.quick,
            "out": str(self.out),
            "device": self.device,
            "max_params": self.max_params,
            "repeats": self.repeats,
            "library": self.library,
            "optimizers": self.optimizers,
            "sections": self.sections,
            "seed": self.seed,
        }


@dataclass
class Context:
    """What tasks read (the config, the library under test) and write (``results[section]``)."""

    config: Config
    lib: Any
    results: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return self.results.setdefault(name, {})


@dataclass
class Task:
    """One unit of work, one tick of the progress bar."""

    section: str
    label: str
    run: Callable[[Context], None]


def error_record(exc: BaseException) -> dict[str, str]:
    """What a failed measurement leaves in the results (the run goes on)."""
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(last.filename).name}:{last.lineno}" if last else ""
    return {"error": f"{type(exc).__name__}: {exc}"[:500] + where}


def finite_or_none(x: Any) -> float | None:
    """A JSON-safe float: ``None`` for NaN/inf (diverged runs)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def downsample(y: np.ndarray, points: int = 100) -> dict[str, list]:
    """``{step, value}`` at about ``points`` log-spaced steps (for results.json; plots use everything)."""
    y = np.asarray(y)
    n = len(y)
    idx = np.unique(np.concatenate([[0], np.geomspace(1, max(n - 1, 1), points).astype(int), [n - 1]]))
    idx = idx[idx < n]
    return {"step": idx.tolist(), "value": [finite_or_none(v) if np.ndim(v) == 0 else [finite_or_none(u) for u in v]
                                            for v in y[idx]]}
