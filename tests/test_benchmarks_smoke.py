"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` end to end, in a subprocess.

It checks that every section runs and writes finite figures, the report and
the plots; that an interrupted run keeps the sections done so far; and the
command line's help and errors. It never asserts a time: timings depend on the
machine and its load.
The correctness checks it does make (gradient descent on the seed problems
follows the closed form; the vmapped sweep computes what the loop computes)
hold on any machine.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import budget_left_s

for _module in ("matplotlib", "tqdm", "sklearn", "optax"):  # the "bench" extras
    pytest.importorskip(_module)

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("sgd", "adam")
SPEED_OPTIMIZERS = {"sgd", "momentum", "adam", "adamw", "clip_adamw_cosine"}
TOY_PROBLEMS = {"square", "quadratic", "saddle", "cubic", "rosenbrock", "beale", "ill_conditioned"}


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_ENABLE_X64", None)  # the suite measures the default float32 mode
    return env


def _run(args: list[str], timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    args = ["--quick", "--out", str(out), "--optimizers", ",".join(OPTIMIZERS), "--repeats", "2"]
    try:
        proc = _run(args, timeout=max(900.0, budget_left_s() + 300.0))
    except subprocess.TimeoutExpired:
        if budget_left_s() > 0:
            raise
        pytest.skip("over the test-time budget: the quick benchmark run did not finish within it")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    return out, proc, results


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x) -> bool:
    return _finite(x) and x > 0


def test_meta_describes_machine_versions_and_command(run):
    _, _, res = run
    machine = res["meta"]["machine"]
    for key in ("cpu_model", "cpu_cores", "memory_bytes", "platform", "device_kind"):
        assert machine[key], key
    for key in ("python", "jax", "jaxlib", "numpy", "optax"):
        assert machine["versions"][key], key
    assert "torch" in machine["versions"]  # None when torch is not installed
    assert machine["command"].startswith("python -m benchmarks --quick")
    assert res["meta"]["config"]["quick"] is True and res["meta"]["config"]["mode"] == "quick"
    assert _positive(res["meta"]["duration_s"])
    assert res["meta"]["status"] == "complete" and not res["meta"]["sections_cut"]
    assert res["meta"]["sections_done"] == [
        "toy", "logistic", "mlp", "transformer", "roofline", "update", "leaves", "sweep"
    ]


def test_toy_problems(run):
    _, _, res = run
    toy = res["toy"]
    assert set(toy) == TOY_PROBLEMS
    for name, entry in toy.items():
        assert set(entry["results"]) == set(OPTIMIZERS), name
        for opt, r in entry["results"].items():
            assert "error" not in r, (name, opt, r.get("error"))
            assert _positive(r["compile"]["compile_s"]) and _positive(r["run"]["median_s"])
            assert r["curve"]["step"] and len(r["curve"]["step"]) == len(r["curve"]["value"])
        if entry["problem"]["f_star"] is not None:  # bounded problems: gradient descent converges
            assert _finite(entry["results"]["sgd"]["final_loss"]), name
    # The seed articles' algebra: GD on x^2 at lr 0.2 is x_{t+1} = 0.6 x_t, and likewise for the other quadratics.
    for name in ("square", "quadratic", "saddle", "ill_conditioned"):
        assert toy[name]["results"]["sgd"]["gd_closed_form_max_err"] < 1e-4, name
    assert toy["square"]["results"]["sgd"]["steps_to_target"] == 15  # 4 * 0.36**15 < 1e-6 < 4 * 0.36**14


def test_logistic_regression_modes(run):
    _, _, res = run
    modes = res["logistic"]["modes"]
    assert len(modes) == 3
    for label, r in modes.items():
        assert "error" not in r, (label, r.get("error"))
        assert _finite(r["final_suboptimality"]) and r["final_suboptimality"] > -1e-4, label
        assert 0.5 < r["test_accuracy"] <= 1.0, label
        assert _positive(r["run"]["median_s"])
        assert len(r["suboptimality_per_epoch"]) == res["logistic"]["epochs"] + 1


def test_mlp_sweep(run):
    _, _, res = run
    mlp = res["mlp"]["results"]
    assert set(mlp) == set(OPTIMIZERS)
    for opt, r in mlp.items():
        assert "error" not in r, (opt, r.get("error"))
        assert len(r["lr_grid"]) == res["mlp"]["sweep_points"]
        assert r["best_lr"] in r["lr_grid"]
        assert 0.5 < r["test_accuracy"] <= 1.0, opt  # digits: far above chance (10%) after a few epochs
        assert _finite(r["final_train_loss"])
    low = res["mlp"]["low_precision"]
    assert set(low) == {"float32", "bf16_nearest", "bf16_stochastic", "bf16_kahan", "8bit_state",
                        "bf16_state_stochastic", "float32_slow", "bf16_nearest_slow", "bf16_stochastic_slow",
                        "bf16_kahan_slow"}
    for mode, r in low.items():
        assert "error" not in r, (mode, r.get("error"))
        assert _finite(r["final_val_loss"]) and 0.5 < r["test_accuracy"] <= 1.0, mode
        assert mode.startswith("float32") or _finite(r["val_loss_vs_float32"]), mode
    assert 8.0 <= low["float32"]["state_bytes_per_param"] < 8.01  # and a count
    assert 6.0 <= low["bf16_kahan"]["state_bytes_per_param"] < 6.01  # bfloat16 moments and compensation
    assert low["8bit_state"]["state_bytes_per_param"] < 2.2
    assert low["bf16_state_stochastic"]["state_bytes_per_param"] < 4.01


def test_transformer_language_model(run):
    """AdamW (always run) and the low-precision rows train the LM: finite losses that fall; Muon's batched
    Newton-Schulz equals one call per leaf."""
    _, _, res = run
    sec = res["transformer"]
    rows = sec["results"]
    assert set(rows) >= {"adamw", "adamw_cosine", "adamw_cosine_bf16_nearest", "adamw_cosine_bf16_stochastic",
                         "adamw_cosine_bf16_kahan", "adamw_cosine_bf16_state_stochastic"}, rows.keys()
    for name, r in rows.items():
        assert "error" not in r, (name, r)
        assert _finite(r["final_val_loss"]) and _positive(r["step_s"]), name
        losses = r["train_loss"]["value"]
        assert losses[-1] < losses[0], (name, losses)
    assert 8.0 <= rows["adamw"]["state_bytes_per_param"] < 8.01  # two float32 moments and a count
    assert 4.0 <= rows["adamw_cosine_bf16_stochastic"]["state_bytes_per_param"] < 4.01  # bfloat16 moments, a key
    assert _finite(rows["adamw_cosine_bf16_kahan"]["val_loss_vs_float32"])
    mb = sec["muon_batching"]
    assert _positive(mb["speedup"]) and mb["max_abs_diff"] < 1e-4, mb
    memory = sec["state_bytes_per_param"]  # eval_shape only, for the methods not trained
    assert {"came", "adam_mini", "kron", "adamw_4bit"} <= set(memory) and all(map(_positive, memory.values()))


def test_roofline(run):
    _, _, res = run
    sizes = res["roofline"]["sizes"]
    assert sizes
    for n, r in sizes.items():
        assert _positive(r["bandwidth_gb_s"]), n
        assert {k: v["bytes"] for k, v in r["kernels"].items()} == {"scale": 8 * int(n), "add": 12 * int(n),
                                                                    "triad": 12 * int(n)}
        # The reference is the best kernel's best sample.
        assert r["bandwidth_gb_s"] == max(v["best_gb_s"] for v in r["kernels"].values())


@pytest.mark.parametrize("section", ["update", "leaves"])
def test_speed_rows(run, section):
    _, _, res = run
    rows = res[section]["rows"]
    assert {r["optimizer"] for r in rows} == SPEED_OPTIMIZERS
    if section == "leaves":
        assert len({r["n_leaves"] for r in rows}) >= 3
        assert len({r["n_params"] for r in rows}) == 1
        limit = res["leaves"]["tree_path_max_leaves"]
        # Above --max-leaves only the fused layout runs (no tree-path compile), and it is the subject.
        beyond = [r for r in rows if r["n_leaves"] > limit]
        assert beyond and all(not r["tree_path"] and r["subject"] == "jaxopt_lite_fused" for r in beyond)
        assert all("jaxopt_lite" not in r["impls"] and "optax" not in r["impls"] for r in beyond)
    for r in rows:
        assert "error" not in r, r
        subject = r["impls"][r["subject"]]
        assert "error" not in subject, (r["optimizer"], subject.get("error"))
        assert _positive(subject["time"]["median_s"]) and _finite(subject["time"]["iqr_s"])
        assert _positive(subject["compile"]["lower_s"]) and _positive(subject["compile"]["compile_s"])
        assert _positive(r["bandwidth_gb_s"]) and _positive(r["stream"]["bandwidth_gb_s"])
        assert r["bandwidth_gb_s"] >= r["stream"]["bandwidth_gb_s"]
        assert r["nominal_bytes_per_param"] in (12, 20, 28, 32)
        # The roofline is measured so that no implementation exceeds it: its median is never below the best sample.
        for impl, rec in r["impls"].items():
            if "time" in rec:
                assert 0 < rec["fraction_of_roofline"] <= 1 + 1e-9, (r["optimizer"], impl, rec["fraction_of_roofline"])
        if r["tree_path"] and r["subject"] != "optax":
            assert "error" not in r["impls"]["optax"], r["impls"]["optax"]
            assert _positive(r["speedup_vs"]["optax"])
        for impl, ratio in r["speedup_vs"].items():
            assert _positive(ratio), (r["optimizer"], impl)
        if "torch" not in res["meta"]["machine"]["versions"] or not res["meta"]["machine"]["versions"]["torch"]:
            assert "torch.optim" in res[section]["peers_absent"]  # absent columns are said to be absent
    if section == "update":  # the low-memory modes, timed against float32 Adam in one run
        modes = res["update"]["state_modes"]["modes"]
        assert {"adam_float32", "adam_bf16_moments", "low_precision_state_sr", "quantize_state_8bit",
                "quantize_state_4bit", "bf16_params_sr", "bf16_params_kahan", "optax_adam_bf16_mu"} <= set(modes)
        for mode, rec in modes.items():
            assert "error" not in rec, (mode, rec.get("error"))
            assert _positive(rec["time"]["median_s"]) and _positive(rec["vs_float32_adam"]), mode
        assert modes["adam_float32"]["vs_float32_adam"] == 1.0
        bytes_ = {m: rec["state_bytes_per_param"] for m, rec in modes.items()}
        assert bytes_["adam_float32"] > bytes_["adam_bf16_moments"] > bytes_["quantize_state_8bit"] > bytes_[
            "quantize_state_4bit"]


def test_leaves_times_flatten_where_grouping_is_the_question(run):
    """``flatten(optimizer)`` (grouped leaves on the tree path) is timed on accelerators and in --full runs, not in
    a --quick or default CPU run, and its columns render."""
    from benchmarks import report, speed
    from benchmarks.context import Config, Context

    import jaxopt_lite

    _, _, res = run
    assert all("jaxopt_lite_flatten" not in r["impls"] for r in res["leaves"]["rows"])  # --quick, on CPU
    ctx = Context(Config(mode="full", repeats=2), jaxopt_lite)
    row = speed.measure_step(ctx, "adam", [64, 32])
    flat = row["impls"]["jaxopt_lite_flatten"]
    assert _positive(flat["time"]["median_s"]) and _positive(flat["compile"]["compile_s"])
    assert _positive(row["speedup_vs"]["jaxopt_lite_flatten"])
    table = report._speed_table("leaves", {"rows": [row]})  # noqa: SLF001
    cells = dict(zip(table.headers, table.rows[0]))
    assert cells["flatten step"] and cells["flatten compile"].endswith(" s") and cells["flatten vs tree path"]
    assert "vs jaxopt_lite_flatten" not in table.headers


def test_sweep_vmap_matches_loop(run):
    _, _, res = run
    rows = res["sweep"]["rows"]
    assert [r["k"] for r in rows] == [1, 8, 32, 128]
    for r in rows:
        assert "error" not in r, r
        assert _positive(r["speedup_vmap_vs_loop"])
        assert _positive(r["vmap"]["compile"]["compile_s"])
        assert r["max_rel_diff_first_10_steps"] < 1e-3, r["k"]  # vmap computes what the loop computes


def test_report_and_plots(run):
    out, proc, res = run
    report = (out / "report.md").read_text()
    for heading in ("# jaxopt_lite benchmarks", "## toy", "## logistic", "## mlp", "## transformer", "## roofline",
                    "## update", "## leaves", "## sweep", "## Plots"):
        assert heading in report, heading
    expected = [f"trajectories__{p}.png" for p in TOY_PROBLEMS]
    expected += ["toy_losses.png", "logistic.png", "mlp.png", "speed_vs_params.png", "speed_vs_leaves.png", "sweep.png",
                 "transformer.png", "transformer_low_precision.png", "mlp_low_precision.png"]
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
        assert f"]({name})" in report, name
    assert "plots" not in res, res.get("plots")  # no figure failed
    assert "Update step, one leaf" in proc.stdout  # the terminal tables
    assert "**Status: complete.**" in report
    assert not list(out.glob("*.tmp"))


def test_a_stop_signal_inside_a_gc_callback_sets_the_flag_without_a_traceback():
    """Python prints an exception raised in a garbage-collection callback (JAX's runs on every collection) as a
    traceback and swallows it; a Ctrl-C landing there must only set the flag that the run checks between tasks."""
    import gc

    from benchmarks.__main__ import _Stop

    raised = []

    def callback(phase, info):
        try:
            _Stop.handler(signal.SIGINT, sys._getframe())  # noqa: SLF001
        except KeyboardInterrupt:
            raised.append(phase)

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    try:
        assert _Stop.requested and not raised
        with pytest.raises(KeyboardInterrupt):
            _Stop.handler(signal.SIGINT, sys._getframe())  # elsewhere it interrupts at once
    finally:
        _Stop.requested = False


def test_interrupted_run_keeps_the_finished_sections(tmp_path):
    """SIGINT after the first section: a valid partial results.json and report.md, a one-line message."""
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--only", "toy,mlp,sweep", "--optimizers", "sgd",
           "--repeats", "1", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "results.json"
    deadline = time.monotonic() + 600
    try:
        while not results.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert results.exists(), "no results.json after the first section"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    message = [line for line in stderr.splitlines() if line.startswith("Interrupted:")]
    assert len(message) == 1 and "toy" in message[0], stderr[-2000:]
    res = json.loads(results.read_text())
    meta = res["meta"]
    assert meta["status"] == "interrupted"
    assert meta["sections_done"][0] == "toy" and "toy" in res
    assert meta["sections_cut"] or meta["sections_not_run"]
    assert set(meta["sections_done"] + meta["sections_cut"] + meta["sections_not_run"]) == {"toy", "mlp", "sweep"}
    assert all("error" not in r and r["curve"]["step"] for e in res["toy"].values() for r in e["results"].values())
    report = (tmp_path / "report.md").read_text()
    assert "**Status: interrupted.**" in report and "## toy" in report
    assert "![trajectories__square](trajectories__square.png)" in report
    assert (tmp_path / "trajectories__square.png").read_bytes()[:4] == b"\x89PNG"


def test_help_describes_sections_and_flags():
    proc = _run(["--help"], timeout=120)
    assert proc.returncode == 0
    for word in ("toy", "logistic", "mlp", "roofline", "update", "leaves", "sweep", "benchmarks/README.md",
                 "--full", "--quick", "--max-leaves"):
        assert word in proc.stdout, word


def test_cli_rejects_unknown_section():
    proc = _run(["--only", "bogus", "--out", os.devnull], timeout=120)
    assert proc.returncode != 0
    assert "unknown section" in proc.stderr


def test_device_gpu_without_a_gpu_is_one_line():
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    env = _env()
    env.pop("JAX_PLATFORMS")
    proc = _run(["--device", "gpu", "--only", "toy", "--out", os.devnull], timeout=300, env=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("--device gpu: JAX finds no such device")
