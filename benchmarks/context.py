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
    "convergence": ("toy", "logistic", "mlp", "transformer"),
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


MODES = ("quick", "default", "full")

# What each section measures, for ``--help`` and the report.
SECTION_HELP: dict[str, str] = {
    "toy": "every optimizer on the seed problems (x^2, x1^2+2x2^2, saddle, x^3), Rosenbrock, Beale and an "
           "ill-conditioned quadratic: steps to target, final loss, trajectories over contour plots",
    "logistic": "full-batch GD vs mini-batch vs stochastic SGD on synthetic logistic regression",
    "mlp": "a digits MLP trained by every optimizer at its best rate from a jit(vmap) learning-rate sweep",
    "transformer": "a small character-level transformer LM: AdamW, Muon, SOAP, Shampoo, Schedule-Free, Prodigy, "
                   "C-AdamW at swept rates; bfloat16 params (nearest, stochastic, Kahan) and 8-bit moments",
    "roofline": "the memory bandwidth reference: best of in-place STREAM kernels (scale, add, triad) at each size",
    "update": "one update step (sgd, momentum, adam, adamw, clip+adamw+cosine) on one leaf, vs Optax, torch.optim "
              "and the bandwidth roofline",
    "leaves": "the same step with the parameters split into many leaves: the tree path, and the fused layout",
    "sweep": "a jit(vmap) sweep over K learning rates vs a Python loop of K jitted runs",
}


@dataclass
class Config:
    mode: str = "default"
    out: Path = Path("bench_out")
    device: str = "auto"
    max_params: int = 64 * 2**20
    repeats: int = 10
    library: str = "jaxopt_lite"
    optimizers: list[str] | None = None
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    seed: int = 0
    max_leaves: int | None = None  # leaf counts above it run in the fused layout only

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    def pick(self, quick: Any, default: Any, full: Any = None) -> Any:
        """The value of a size in this mode (``full`` defaults to ``default``)."""
        return {"quick": quick, "default": default, "full": default if full is None else full}[self.mode]

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "quick": self.quick,
            "out": str(self.out),
            "device": self.device,
            "max_params": self.max_params,
            "repeats": self.repeats,
            "library": self.library,
            "optimizers": self.optimizers,
            "sections": self.sections,
            "seed": self.seed,
            "max_leaves": self.max_leaves,
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
    """One unit of work; ``cost`` is its expected seconds on 2 CPU cores (it weighs the progress bar)."""

    section: str
    label: str
    run: Callable[[Context], None]
    cost: float = 1.0


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
