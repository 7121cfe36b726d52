"""Optax's public surface: every public name of Optax 0.2.8, at the same place, with its signature.

The names are frozen in ``tests/data/optax_0_2_8_public_names.json`` so that a
newer Optax in the test environment does not move the goal posts; when the
installed Optax is 0.2.8 a test checks the frozen list against it.
"""

import importlib
import inspect
import json
import pathlib
import types

import pytest

import jaxopt_lite

FROZEN = json.loads((pathlib.Path(__file__).parent / "data" / "optax_0_2_8_public_names.json").read_text())
NAMESPACES = FROZEN["namespaces"]

# Left out on purpose (README, "Compatibility with Optax").
EXCLUDED = {
    ("<top>", "second_order"): "deprecated upstream",
    ("<top>", "experimental"): "Optax's experimental namespace, no stable API",
    ("tree_utils", "functools"): "a module Optax imports, not API",
    ("tree_utils", "typing"): "a module Optax imports, not API",
}

# Names not implemented yet (README lists them as remaining work). A test fails once one of
# them exists, so the list only shrinks.
NOT_YET: set[tuple[str, str]] = set()


def _module(namespace):
    """``jaxopt_lite`` or its submodule ``namespace``; ``None`` if that does not exist."""
    try:
        return jaxopt_lite if namespace == "<top>" else importlib.import_module(f"jaxopt_lite.{namespace}")
    except ImportError:
        return None


def _expected():
    return [
        (ns, name)
        for ns, names in NAMESPACES.items()
        for name in names
        if (ns, name) not in EXCLUDED and (ns, name) not in NOT_YET
    ]


def test_frozen_names_are_optax_0_2_8s():
    optax = pytest.importorskip("optax")
    if optax.__version__ != FROZEN["optax_version"]:
        pytest.skip(f"installed optax is {optax.__version__}, the frozen list is {FROZEN['optax_version']}'s")
    for ns, names in NAMESPACES.items():
        live = importlib.import_module("optax" + ("" if ns == "<top>" else f".{ns}"))
        assert sorted(n for n in dir(live) if not n.startswith("_")) == names, ns


def test_every_public_optax_name_exists_at_the_same_place():
    missing = []
    for ns, name in _expected():
        module = _module(ns)
        if module is None or not hasattr(module, name):
            missing.append(name if ns == "<top>" else f"{ns}.{name}")
    assert not missing, f"{len(missing)} public Optax names are missing: {', '.join(sorted(set(missing)))}"


def test_not_yet_list_is_current():
    done = [f"{ns}.{name}" for ns, name in NOT_YET if hasattr(_module(ns), name)]  # hasattr(None, ...) is False
    assert not done, f"implemented now, remove from NOT_YET (and README): {done}"


def coverage():
    """(names present, names in Optax 0.2.8 minus the exclusions)."""
    expected = [(ns, n) for ns, names in NAMESPACES.items() for n in names if (ns, n) not in EXCLUDED]
    present = [1 for ns, n in expected if (ns, n) not in NOT_YET and hasattr(_module(ns), n)]
    return len(present), len(expected)


# --------------------------------------------------------------------------- #
# Signatures: the parameters Optax's callables take, by name, kind and default
# --------------------------------------------------------------------------- #

# (namespace, name) -> why our signature differs on purpose.
# Deliberate differences, each with its reason (README, "Compatibility with Optax").
SIGNATURE_DIFFERENCES: dict[tuple[str, str], str] = {
    ("<top>", "scale_by_learning_rate"): "learning_rate is required (Optax's default None is no learning rate)",
    ("<top>", "nadam"): "no nesterov flag: nadam is Nesterov's; adam is the other choice",
    ("<top>", "nadamw"): "no nesterov flag: nadamw is Nesterov's; adamw is the other choice",
}


def _simple(value):
    return value is None or isinstance(value, (bool, int, float, str))


def _parameters(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return {
        p.name: (p.kind, p.default if _simple(p.default) else "<object>")
        for p in sig.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _signature_mismatches():
    optax = pytest.importorskip("optax")
    out = []
    for ns, name in _expected():
        if (ns, name) in SIGNATURE_DIFFERENCES:
            continue
        theirs = getattr(importlib.import_module("optax" + ("" if ns == "<top>" else f".{ns}")), name, None)
        ours = getattr(_module(ns), name, None)
        if ours is None or not callable(theirs) or isinstance(theirs, (type, types.ModuleType)):
            continue
        p_theirs, p_ours = _parameters(theirs), _parameters(ours)
        if p_theirs is None or p_ours is None:
            continue
        problems = []
        for pname, (kind, default) in p_theirs.items():
            if pname not in p_ours:
                problems.append(f"lacks {pname!r}")
                continue
            our_kind, our_default = p_ours[pname]
            positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            if kind in positional and our_kind not in positional:
                problems.append(f"{pname!r} is keyword-only")
            if default != our_default and not (isinstance(default, float) and default == our_default):
                problems.append(f"{pname!r} defaults to {our_default!r}, Optax {default!r}")
        order_theirs = [n for n, (k, _) in p_theirs.items() if k == inspect.Parameter.POSITIONAL_OR_KEYWORD]
        order_ours = [n for n, (k, _) in p_ours.items() if k == inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if order_ours[: len(order_theirs)] != order_theirs and not problems:
            problems.append(f"positional order {order_ours} vs Optax {order_theirs}")
        if problems:
            out.append(f"{ns}.{name}: " + "; ".join(problems))
    return out


def test_signatures_take_optaxs_arguments_with_optaxs_defaults():
    mismatches = _signature_mismatches()
    assert not mismatches, "signatures differ from Optax 0.2.8:\n  " + "\n  ".join(mismatches)
