"""The optimizer table: which optimizers the convergence suites run, and at which learning rates.

The suites run *every* optimizer the library under test provides. Known
optimizers get hand-picked default learning rates from :data:`TABLE`; an alias
found in the library but missing from the table still runs, at a generic rate
(and is flagged ``in_table: false`` in the results), so a new optimizer is
benchmarked the day it lands.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

GD = None  # as a toy learning rate: use the problem's gradient-descent rate (it depends on the curvature)

GENERIC_TOY_LR = 0.05
GENERIC_MLP_LR = 1e-3


@dataclass(frozen=True)
class OptSpec:
    """One optimizer configuration.

    Attributes:
      name: its label in tables and plots.
      factory: the library function building it (``sgd`` for momentum too).
      lr: toy-problem learning rate, multiplied by the problem's ``lr_scale``;
        :data:`GD` means the problem's own gradient-descent rate.
      mlp_lr: centre of the MLP learning-rate sweep (a log grid around it).
      kwargs: fixed keyword arguments.
      extra_args: what ``update`` must also be given, among ``value``,
        ``grad`` and ``value_fn`` (Polyak step sizes, line searches).
      lr_arg: the name of the learning-rate argument.
      in_table: ``False`` for an alias found in the library but not in the table.
    """

    name: str
    factory: str
    lr: float | None
    mlp_lr: float
    kwargs: tuple[tuple[str, Any], ...] = ()
    extra_args: tuple[str, ...] = ()
    lr_arg: str = "learning_rate"
    in_table: bool = field(default=True, compare=False)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "factory": self.factory,
            "kwargs": {k: v for k, v in self.kwargs},
            "toy_lr": "problem's GD rate" if self.lr is GD else self.lr,
            "mlp_lr_centre": self.mlp_lr,
            "extra_args": list(self.extra_args),
            "in_table": self.in_table,
        }


def _spec(name, lr, mlp_lr, factory=None, **kw) -> OptSpec:
    return OptSpec(name, factory or name, lr, mlp_lr, **kw)


TABLE: tuple[OptSpec, ...] = (
    _spec("sgd", GD, 0.3),
    _spec("momentum", GD, 0.1, "sgd", kwargs=(("momentum", 0.9),)),
    _spec("nesterov", GD, 0.1, "sgd", kwargs=(("momentum", 0.9), ("nesterov", True))),
    _spec("noisy_sgd", GD, 0.3, kwargs=(("seed", 0),)),
    _spec("optimistic_gradient_descent", GD, 0.3),
    _spec("sign_sgd", 0.03, 3e-3),
    _spec("signum", 0.03, 3e-3),
    _spec("adagrad", 0.5, 0.1),
    _spec("adadelta", 1.0, 1.0),
    _spec("rmsprop", 0.05, 3e-3),
    _spec("adam", 0.1, 1e-2),
    _spec("adamw", 0.1, 1e-2),
    _spec("amsgrad", 0.1, 1e-2),
    _spec("adamax", 0.1, 1e-2),
    _spec("adamaxw", 0.1, 1e-2),
    _spec("nadam", 0.1, 1e-2),
    _spec("nadamw", 0.1, 1e-2),
    _spec("radam", 0.1, 1e-2),
    _spec("adabelief", 0.1, 1e-2),
    _spec("adan", 0.1, 1e-2),
    _spec("yogi", 0.1, 1e-2),
    _spec("novograd", 0.1, 1e-2),
    _spec("optimistic_adam", 0.1, 1e-2),
    _spec("lion", 0.03, 1e-3),
    _spec("lamb", 0.1, 1e-2),
    _spec("lars", 0.1, 0.1),
    _spec("fromage", 0.1, 1e-2),
    _spec("sm3", 0.1, 0.1),
    _spec("rprop", 0.01, 1e-3),
    _spec("adafactor", 0.1, 1e-2),
    _spec("polyak_sgd", 1.0, 1.0, extra_args=("value",), lr_arg="max_learning_rate"),
    _spec("lbfgs", 1.0, 1.0, extra_args=("value", "grad", "value_fn")),
)

_LR_ARGS = ("learning_rate", "max_learning_rate")


def load_library(name: str):
    """The library module under test (``jaxopt_lite``, or ``optax`` for a reference run)."""
    return importlib.import_module(name)


def _alias_module(lib):
    """Where the library keeps its ready-made optimizers."""
    for modname in (f"{lib.__name__}.aliases", f"{lib.__name__}._src.alias"):
        try:
            return importlib.import_module(modname)
        except ImportError:
            continue
    return None


def _alias_functions(lib) -> dict[str, str]:
    """``{name: learning-rate argument}`` for every public alias function of ``lib``."""
    module = _alias_module(lib)
    if module is None:
        return {}
    found = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
            continue
        if not hasattr(lib, name):
            continue
        params = list(inspect.signature(obj).parameters)
        if params and params[0] in _LR_ARGS:
            found[name] = params[0]
    return found


def discover(lib, only: list[str] | None = None) -> tuple[list[OptSpec], list[str]]:
    """The optimizers of ``lib`` to benchmark, and the table entries ``lib`` lacks.

    ``only`` restricts the list to the given names (``--optimizers``).
    """
    specs = [s for s in TABLE if hasattr(lib, s.factory)]
    missing = [s.name for s in TABLE if not hasattr(lib, s.factory)]
    known = {s.factory for s in TABLE}
    for name, lr_arg in sorted(_alias_functions(lib).items()):
        if name not in known:
            specs.append(OptSpec(name, name, GENERIC_TOY_LR, GENERIC_MLP_LR, lr_arg=lr_arg, in_table=False))
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise SystemExit(f"--optimizers: {unknown} not in {lib.__name__} (have {[s.name for s in specs]})")
        specs = [s for s in specs if s.name in only]
    return specs, missing


def build(lib, spec: OptSpec, learning_rate: Any):
    """``lib.<factory>(learning_rate, **kwargs)``; ``learning_rate`` may be traced (sweeps)."""
    return getattr(lib, spec.factory)(**{spec.lr_arg: learning_rate}, **dict(spec.kwargs))
