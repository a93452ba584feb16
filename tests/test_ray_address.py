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
from _cluster import Head, free_port, settled  # benchmarks/, on pytest's pythonpath

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
        address, key = found
        return address and address.rpartition(":")[2], key

    at = head.address.rpartition(":")[2]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # `ray start` left its address on this machine: ray.init joins it, and so do we.
    assert port(sweep_lib.ray_address(None)) == (at, "--address")
    assert port(sweep_lib.ray_address("auto")) == (at, "--address")
    assert sweep_lib.ray_address("local") == (None, "--address")
    monkeypatch.setenv("RAY_ADDRESS", head.address)
    assert port(sweep_lib.ray_address(None)) == (at, "RAY_ADDRESS")
    assert port(sweep_lib.ray_address("auto")) == (at, "RAY_ADDRESS")
    other = str(free_port())
    assert port(sweep_lib.ray_address(f"127.0.0.1:{other}")) == (other, "--address")  # the flag wins
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    with pytest.raises(SpecError, match=r"^RAY_ADDRESS: Ray client .* got 'ray://10\.0\.0\.1"):
        sweep_lib.ray_address(None)


def test_a_sweep_under_ray_address_ships_the_users_code_to_that_cluster(head, tmp_path):
    """No --address, RAY_ADDRESS set, as `ray job submit` runs a driver: the trials run
    on that cluster's workers, whose processes never saw this driver's environment,
    so the user's model module must reach them in the job's runtime_env."""
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
    env = os.environ | {"RAY_ADDRESS": head.address}
    proc = subprocess.run([sys.executable, "experiments/sweep.py", "--config", spec,
                           "--storage-path", tmp_path / "res", "--name", "own"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "res" / "own" / "trials.parquet")
    assert (df["status"] == "COMPLETED").all() and df["trial_index"].nunique() == 2
    # A joined cluster outlives the sweep: it stops what it started there, and only that.
    assert settled(head.api) == {"placement groups": [], "actors": [], "processes": []}
