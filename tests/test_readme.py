"""README stays true: its examples run, its test command is CI's, and it lists the public API."""

import inspect
import re
from pathlib import Path

import numpy as np

import jaxopt_lite

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_python_examples_run_and_train():
    namespace = {}
    blocks = _code_blocks("python")
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    # The training loop drives the loss down; the sweep returns one finite loss per configuration.
    assert float(namespace["loss"]) < 0.05
    losses = np.asarray(namespace["losses"])
    assert losses.shape == (64,) and np.all(np.isfinite(losses))


def test_each_python_block_runs_on_its_own():
    """A reader copies one block: it must run in a fresh interpreter namespace, with its own imports and data."""
    for i, block in enumerate(_code_blocks("python")):
        namespace = {"__name__": f"readme_block_{i}"}
        try:
            exec(compile(block, f"README.md (python block {i + 1})", "exec"), namespace)  # noqa: S102
        except NameError as exc:
            raise AssertionError(f"README python block {i + 1} does not run on its own: {exc}\n{block}") from exc


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    quick_start = _code_blocks("bash")[0].splitlines()
    commands = [line.split("#")[0].strip() for line in quick_start if line.strip()]
    assert len(commands) == 2, "README's quick start is exactly two commands"
    bench, tests = commands
    assert "python -m benchmarks" in bench
    assert tests in ci.splitlines(), f"CI must run README's test command {tests!r}"


def test_every_public_function_is_listed():
    missing = [
        name
        for name, obj in vars(jaxopt_lite).items()
        if not name.startswith("_") and inspect.isfunction(obj)
        and f"`{name}`" not in README
    ]
    assert not missing, f"README does not list: {missing}"
