"""Which Ray a sweep runs on, by Ray's own rule (ray.init): `--address`, else
RAY_ADDRESS (every `ray job submit` driver has it), else the cluster `ray start`
left on this machine, else a Ray of its own. A cluster it joins gets the user's code
and the trials' environment through the job's runtime_env, as with `--address`."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _cluster import RAY, Head, free_port, settled  # benchmarks/, on pytest's pythonpath

from raytune_ctr import sweep as sweep_lib
from raytune_ctr.errors import SpecError

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent

NETS = """
from torch import nn

def build(config, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2],
                                                 config["num_classes"]))
"""


@pytest.fixture(scope="module")
def head():
    h = Head(2)
    try:
        yield h
    finally:
        h.stop()


def test_the_cluster_is_the_one_ray_init_would_join(head, monkeypatch):
    def port(found):  # Ray names a local cluster by this node's IP, not 127.0.0.1
        address, key, _ = found
        return address and address.rpartition(":")[2], key

    at, other = head.address.rpartition(":")[2], str(free_port())
    left = "ray_current_cluster (left by `ray start`)"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # `ray start` left its address on this machine: ray.init joins it, and so do we.
    found = sweep_lib.ray_address(None)
    assert port(found)[0] == at and found[1].endswith(left)
    assert sweep_lib.ray_address("auto")[1].endswith(left)
    assert sweep_lib.ray_address("local")[0] is None
    for unset in ("", "auto"):  # Ray reads these as no address
        monkeypatch.setenv("RAY_ADDRESS", unset)
        assert port(sweep_lib.ray_address(None))[0] == at
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert sweep_lib.ray_address(None)[0] is None
    # RAY_ADDRESS names a cluster: that one, not the one `ray start` left.
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{other}")
    assert sweep_lib.ray_address(None)[2] == f"127.0.0.1:{other}"  # as the user wrote it
    assert port(sweep_lib.ray_address(None)) == (other, "RAY_ADDRESS")
    assert port(sweep_lib.ray_address("auto")) == (other, "RAY_ADDRESS")
    assert port(sweep_lib.ray_address(f"127.0.0.1:{at}")) == (at, "--address")  # the flag wins
    assert sweep_lib.ray_address("local")[0] is None
    for client in ("ray://10.0.0.1:10001", "http://10.0.0.1:8265"):
        monkeypatch.setenv("RAY_ADDRESS", client)
        with pytest.raises(SpecError, match=rf"^RAY_ADDRESS: a Ray client .* got '{client}'"):
            sweep_lib.ray_address(None)


def _own_code(tmp_path: Path) -> Path:
    (tmp_path / "own" / "mine").mkdir(parents=True)
    (tmp_path / "own" / "mine" / "__init__.py").write_text("")
    (tmp_path / "own" / "mine" / "nets.py").write_text(NETS)
    spec = tmp_path / "own.yaml"
    spec.write_text(
        f"name: own\ncode: {tmp_path / 'own'}\n"
        f"data: {{dataset: digits, data_dir: {tmp_path / 'data'}}}\n"
        "train: {model: 'mine.nets:build', epochs: 2, optimizer: adam, lr: 0.01, "
        "lr_schedule: none}\n"
        "search: {method: grid, grid: {seed: [0, 1]}}\n")
    return spec


def _submit(head: Head, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([RAY, "job", "submit", "--address", head.api, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)


def test_a_sweep_under_ray_job_submit_ships_the_users_code_to_that_cluster(head, tmp_path):
    """`ray job submit -- python experiments/sweep.py` with no --address: Ray gives the
    driver RAY_ADDRESS, and the trials run on that cluster's workers, which never saw
    the driver's environment, so the user's module must reach them in the runtime_env."""
    spec = _own_code(tmp_path)
    proc = _submit(head, "--", sys.executable, ROOT / "experiments" / "sweep.py",
                   "--config", spec, "--storage-path", tmp_path / "res", "--name", "own")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "res" / "own" / "trials.parquet")
    assert (df["status"] == "COMPLETED").all() and df["trial_index"].nunique() == 2
    # A joined cluster outlives the sweep: it stops what it started there, and only that.
    assert settled(head.api) == {"placement groups": [], "actors": [], "processes": []}


def test_a_jobs_env_vars_are_merged_and_its_working_dir_beside_code_is_one_line(head, tmp_path):
    """`ray job submit --working-dir` and the spec's `code:` both want the job's
    working_dir: Ray refuses to merge them, and the sweep says so naming `code`. The
    job's env_vars may set what the sweep sets for its trials: no clash there."""
    spec = _own_code(tmp_path)
    env = '{"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}'
    proc = _submit(head, "--runtime-env-json", env, "--", sys.executable,
                   ROOT / "experiments" / "sweep.py", "--config", spec,
                   "--storage-path", tmp_path / "res", "--name", "env")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = _submit(head, "--working-dir", tmp_path / "own", "--", sys.executable,
                   ROOT / "experiments" / "sweep.py", "--config", spec,
                   "--storage-path", tmp_path / "res", "--name", "clash")
    assert proc.returncode != 0
    # Ray's CLI prints the job's log as it comes, then its tail again on failure.
    lines = {line for line in proc.stdout.splitlines() if line.startswith("error: ")}
    assert len(lines) == 1 and min(lines).startswith("error: code: this Ray job has a working_dir "
                                                   "of its own"), proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "res" / "clash").exists()
