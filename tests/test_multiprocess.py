"""Training across processes, and resuming on another mesh (README, "Past one device").

Two ``jax.distributed`` processes on localhost, 4 simulated CPU devices each,
train a small MLP with AdamW and ZeRO-1 state on one 8-device mesh and save
params and optimizer state with Orbax; a third, single process with 8 devices
restores them on a data x model mesh (params split over "model"), trains on, and
must equal a run of the same steps uninterrupted on one device.
``tests/distributed_worker.py`` is the script each process runs.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    return env


def _run_all(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process (killing all of them past the time limit); returns their outputs."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, f"worker failed (rc={p.returncode}):\n{out[-4000:]}"
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    ckpt = tmp / "checkpoint"
    port = _free_port()
    trains = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "train", str(tmp / f"train{i}.json"), str(ckpt), str(i), "2", str(port)],
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    _run_all(trains)
    resume = subprocess.Popen(
        [sys.executable, str(WORKER), "resume", str(tmp / "resume.json"), str(ckpt)],
        env=_env(8),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _run_all([resume])
    train = [json.loads((tmp / f"train{i}.json").read_text()) for i in range(2)]
    return train, json.loads((tmp / "resume.json").read_text())


def test_two_processes_train_one_mesh_with_zero1_state(runs):
    train, _ = runs
    assert sorted(r["process_id"] for r in train) == [0, 1]
    for r in train:
        assert (r["process_count"], r["global_devices"], r["local_devices"]) == (2, 8, 4)
        # AdamW's first moment of w1 (8 x 16, params replicated) is split 8 ways: 2 columns a device.
        assert r["mu_w1_shape"] == [8, 16]
        assert r["mu_w1_local_shard_shapes"] == [[8, 2]] and r["mu_w1_local_shards"] == 4
    assert train[0]["losses"] == train[1]["losses"]


def test_resumed_on_another_mesh_equals_an_uninterrupted_run(runs):
    train, resumed = runs
    assert resumed["devices"] == 8 and resumed["restored_with_target_shardings"]
    assert resumed["count_after"] == 6
    reference = resumed["reference_losses"]
    np.testing.assert_allclose(train[0]["losses"], reference[:3], rtol=1e-6)
    np.testing.assert_allclose(resumed["losses_after"], reference[3:], rtol=1e-6)
    for key in ("params", "state"):
        got, want = resumed[key], resumed[f"reference_{key}"]
        assert len(_flat(got)) == len(_flat(want)) > 200
        np.testing.assert_allclose(np.asarray(_flat(got)), np.asarray(_flat(want)), rtol=1e-5, atol=1e-7, err_msg=key)


def _flat(tree) -> list:
    """The numbers of a JSON tree (dicts by sorted key, lists in order) in one list."""
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _flat(tree[k])]
    if isinstance(tree, list):
        return [x for t in tree for x in _flat(t)]
    return [tree]
