"""Nothing left behind, on a Ray cluster that outlives the sweep (as a shared one
does): no placement group, actor or worker process of any trial, whether ASHA
stopped it, it finished, or it was given up while its worker pool still started.
The Ray state API is asked, as `ray list` would."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from _cluster import Head, settled  # benchmarks/, on pytest's pythonpath

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster(request):
    """A real head node (2 CPUs, or as the test's `cpus` marker says), started apart
    from any sweep; yields (address, state API)."""
    marker = request.node.get_closest_marker("cpus")
    head = Head(marker.args[0] if marker else 2)
    try:
        yield head.address, head.api
    finally:
        head.stop()


def test_a_sweep_with_stopped_trials_leaves_nothing(cluster, write_spec, tmp_path):
    address, api = cluster
    spec = write_spec({
        "name": "leaks",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [32], "epochs": 6, "optimizer": "adam",
                  "lr_schedule": "none"},
        # Four learning rates that learn and four that barely move: ASHA stops some.
        "search": {"method": "grid", "objectives": {"test_acc": "max"}, "scheduler": "asha",
                   "asha": {"time_attr": "epoch", "grace_period": 1, "reduction_factor": 2},
                   "grid": {"lr": [1.0e-2, 3.0e-3, 1.0e-5, 3.0e-6],
                            "num_workers": [1, 2]}},
    })
    proc = subprocess.run([sys.executable, "experiments/sweep.py", "--config", spec,
                           "--address", address, "--storage-path", tmp_path / "res",
                           "--name", "leaks"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "res" / "leaks" / "trials.parquet")
    status = df.groupby("trial_index")["status"].first()
    workers = df.groupby("trial_index")["num_workers"].first()
    assert len(status) == 8 and set(status) <= {"COMPLETED", "STOPPED"}  # none lost
    assert (status == "STOPPED").sum() >= 2 and set(workers) == {1, 2}
    assert settled(api) == {"placement groups": [], "actors": [], "processes": []}


@pytest.mark.cpus(4)
def test_ddp_trials_side_by_side_get_a_pool_each_and_leave_nothing(cluster, write_spec, tmp_path):
    """4 CPUs as Ray sees them: two 2-worker trials fit at once, and each gets its own
    pool (one pool would serve them one after the other)."""
    address, api = cluster
    spec = write_spec({
        "name": "pools",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [32], "epochs": 8, "optimizer": "adam",
                  "lr_schedule": "none"},
        "resources": {"num_workers": 2},
        "search": {"method": "grid", "grid": {"seed": [0, 1, 2]}},
    })
    proc = subprocess.run([sys.executable, "experiments/sweep.py", "--config", spec,
                           "--address", address, "--storage-path", tmp_path / "res",
                           "--name", "pools"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "res" / "pools" / "trials.parquet")
    assert set(df["status"]) == {"COMPLETED"} and df["trial_index"].nunique() == 3
    # Every pool is a Train run of its own, kept under the results folder.
    assert len(list((tmp_path / "res" / "pools" / "pools").glob("pool-2w-*"))) >= 2
    assert settled(api) == {"placement groups": [], "actors": [], "processes": []}


def test_a_job_given_up_while_its_pool_starts_leaves_nothing(cluster, tmp_path):
    """A multi-worker trial stopped before its workers are up: its job is cancelled,
    the pool still comes up, and the sweep's end tears it down."""
    address, api = cluster
    script = tmp_path / "give_up.py"
    script.write_text(textwrap.dedent(f"""
        import ray
        from raytune_ctr import pool
        ray.init(address="{address}")
        c = pool.Coordinator.remote("{tmp_path / 'storage'}")
        key = pool.PoolKey(2, 0.0, ray.util.get_node_ip_address())
        ray.get(c.submit.remote(key, {{"id": "j1", "trial_id": "t1"}}))
        ray.get(c.cancel.remote("j1"))
        assert ray.get(c.pools.remote()) == [str(key)]  # still starting
        ray.get(c.shutdown.remote(wait_starting=True))
        ray.kill(c)
        print("given up")
    """))
    proc = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())
    assert proc.returncode == 0 and "given up" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert settled(api) == {"placement groups": [], "actors": [], "processes": []}


def test_a_pool_started_ahead_is_up_only_once_every_rank_is_warm(tmp_path, monkeypatch):
    """One-worker trials wait for the pools started ahead (trial.py): the warm-up's
    imports are a burst of CPU that would skew the epochs of a trial training beside
    it, so a pool says it is up only after every rank's warm-up."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RAYTUNE_CTR_TRACE", str(trace))  # the head's processes inherit it
    head = Head(2)
    try:
        script = tmp_path / "ahead.py"
        script.write_text(textwrap.dedent(f"""
            import time
            import ray
            from raytune_ctr import pool
            ray.init(address="{head.address}")
            c = pool.Coordinator.remote("{tmp_path / 'storage'}")
            ray.get(c.start.remote(pool.PoolKey(2, 0.0, ray.util.get_node_ip_address())))
            assert ray.get(c.wait_up.remote(300.0))
            print("up at", time.time())
            ray.get(c.shutdown.remote())
            ray.kill(c)
        """))
        proc = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env=os.environ.copy())
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert settled(head.api) == {"placement groups": [], "actors": [], "processes": []}
    finally:
        head.stop()
    up = float(proc.stdout.split("up at")[1].split()[0])
    marks = [json.loads(line) for line in trace.read_text().splitlines()]
    warm = [m["t"] for m in marks if m["phase"] == "pool_worker_warm"]
    assert len(warm) == 2 and max(warm) <= up
