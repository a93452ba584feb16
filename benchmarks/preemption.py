"""What losing a node costs: the same sweep on the Docker cluster (`ray up
cluster/docker.yaml`, a head and two 2-CPU worker containers of the project's
image) without and with one worker container lost mid-sweep, and the ratio of their
wall times.

The sweep is tests/test_docker_cluster.py's: four trials of S1's net on digits, three
of them 2-worker DDP trials, 40 epochs each, one trial per worker node at a time.
The worker is lost once both nodes have checkpointed 3 epochs of their trials, by
`docker kill` or by `docker stop -t 30` (SIGTERM, then SIGKILL 30 s later, as GKE
gives Spot nodes notice). Between runs `ray up` starts the lost worker again.

    python benchmarks/preemption.py [--how kill|stop] [--out FILE]
    python benchmarks/preemption.py --smoke   # 6 epochs; its figures mean nothing

Needs a Docker engine and the image (bash .ci/docker.sh); nothing else running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import pandas as pd
import yaml
from _common import SMOKE, emit

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
sys.path.insert(0, str(ROOT / "tests"))
from test_docker_cluster import (  # noqa: E402 - the test's own cluster and sweep
    LOSS,
    _checkpoints,
    _cluster_yaml,
    _sweep_in_background,
)


def ray_cli(*args, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([RAY, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"ray {' '.join(map(str, args))}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def run(path: Path, name: str, data: Path, run_name: str, lose: str | None,
        epochs: int) -> dict:
    engine = docker.from_env()
    spec = LOSS | {"name": run_name, "train": LOSS["train"] | {"epochs": epochs}}
    (data / f"{run_name}.yaml").write_text(yaml.safe_dump(spec))
    t0 = time.time()
    log = data / f"{run_name}.log"
    sweep = _sweep_in_background(
        path, f"python experiments/sweep.py --config /data/{run_name}.yaml --address auto "
        f"--storage-path /data/results --name {run_name}", log)
    lost_at = None
    if lose:
        folder, deadline, ready = data / "results" / run_name, time.time() + 600, False
        while not ready and sweep.poll() is None and time.time() < deadline:
            ckpts = _checkpoints(folder)
            ready = len(ckpts) >= 2 and min(ckpts.values()) >= 3
            time.sleep(0.5)
        if not ready or sweep.poll() is not None:
            raise SystemExit(f"{run_name}: both nodes never had a trial 3 epochs in; no loss "
                             f"measured: {log.read_text()[-2000:]}")
        lost_at = time.time() - t0
        victim = engine.containers.get(f"{name}-worker-1")
        victim.kill() if lose == "kill" else victim.stop(timeout=30)
    sweep.wait(timeout=1800)
    wall = time.time() - t0
    if sweep.returncode:
        raise SystemExit(f"{run_name} exited {sweep.returncode}: {log.read_text()[-3000:]}")
    df = pd.read_parquet(data / "results" / run_name / "trials.parquet")
    last = df.sort_values("epoch").groupby("trial_index").tail(1)
    lost = last[last["retries"] >= 1]
    return {"wall_s": round(wall, 1), "lost_at_s": lost_at and round(lost_at, 1),
            "statuses": last["status"].value_counts().to_dict(),
            "restarted": len(lost), "resumed_from_epoch": lost["resumed_from_epoch"].tolist(),
            "train_s": round(float(last["train_time_s"].sum()), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--how", choices=["kill", "stop"], default="kill")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    epochs = 6 if args.smoke else LOSS["train"]["epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        name = f"rtc-bench-{os.getpid()}"
        path = _cluster_yaml(tmp_path, name, worker_cpus=2.0)
        data = tmp_path / "data"
        try:
            ray_cli("up", "-y", "--no-config-cache", path)
            data.mkdir(exist_ok=True)
            whole = run(path, name, data, "whole", None, epochs)
            lost = run(path, name, data, "lost", None if args.smoke else args.how, epochs)
            ray_cli("up", "-y", "--no-config-cache", path)  # the lost worker back
            cpu = next((line.split(":", 1)[1].strip() for line in
                        Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name")), "unknown")
            emit({"cpu": cpu, "cpus": os.cpu_count(), "how": args.how, "epochs": epochs,
                  "without_loss": whole, "with_loss": lost,
                  "wall_ratio": round(lost["wall_s"] / whole["wall_s"], 3)}, args.out)
        finally:
            subprocess.run([RAY, "down", "-y", str(path)], capture_output=True, timeout=600,
                           env=os.environ | {"PYTHONPATH": str(ROOT)})


if __name__ == "__main__":
    main()
