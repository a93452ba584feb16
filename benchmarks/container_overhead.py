"""Container overhead (study S3's question): the same spec natively and on the
`cluster/docker.yaml` cluster on this host; epoch-time ratio and accuracy of each.

Runs native, container, native (each through experiments/sweep.py, each its own Ray)
and compares the container's steady epoch time with the mean of the two native runs,
so drift on a noisy machine shows up as the spread between them.

    python benchmarks/container_overhead.py [--image raytune-ctr:latest] [--out result.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from _common import SMOKE, emit, steady

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


def spec(args, data_dir: str) -> dict:
    return {
        "name": "overhead",
        "data": {"dataset": "fashion-mnist", "data_dir": data_dir, "subset": args.subset},
        "train": {"model": "mnist_cnn", "epochs": args.epochs, "batch_size": 64,
                  "optimizer": "adadelta", "lr": 1.0, "lr_schedule": "step", "gamma": 0.7},
        "resources": {"num_workers": 1, "cpus_per_worker": 1.0, "threads_per_worker": 1},
        "search": {"method": "grid"},
    }


def figures(run_dir: Path) -> dict:
    df = pd.read_parquet(run_dir / "trials.parquet").sort_values("epoch")
    assert (df["status"] == "COMPLETED").all(), df["error"].dropna().tolist()
    return {"s_per_epoch": steady(df["epoch_time_s"].tolist()),
            "epoch_times": df["epoch_time_s"].tolist(), "test_acc": float(df["test_acc"].iloc[-1]),
            "host": df["env_host"].iloc[0], "image": df["env_image"].iloc[0]}


def run(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:3])}… failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def native(args, work: Path, n: int) -> dict:
    path = work / f"native{n}.yaml"
    path.write_text(yaml.safe_dump(spec(args, str(work / "data" / "fashion-mnist"))))
    run([sys.executable, "experiments/sweep.py", "--config", str(path), "--storage-path",
         str(work / "native"), "--name", f"n{n}"], cwd=ROOT)
    return figures(work / "native" / f"n{n}")


def container(args, work: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "cluster" / "docker.yaml").read_text())
    cfg["cluster_name"] = "rtc-overhead"
    cfg["provider"] |= {"image": args.image, "network": "rtc-overhead-net",
                        "data_dir": str(work / "data")}
    worker = cfg["available_node_types"]["worker"]
    worker |= {"min_workers": 1, "max_workers": 1}
    worker["node_config"] |= {"cpus": args.container_cpus}
    cfg["max_workers"] = 1
    path = work / "docker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (work / "data" / "spec.yaml").write_text(yaml.safe_dump(spec(args, "/data/fashion-mnist")))
    ray = [str(Path(sys.executable).with_name("ray"))]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    try:
        run(ray + ["up", "-y", "--no-config-cache", str(path)], env=env)
        run(ray + ["exec", str(path), "python experiments/sweep.py --config /data/spec.yaml "
                   "--address auto --storage-path /data/results --name c"], env=env)
    finally:
        subprocess.run(ray + ["down", "-y", str(path)], capture_output=True, env=env)
    return figures(work / "data" / "results" / "c")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default="raytune-ctr:latest")
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--container-cpus", type=float, default=1.0,
                   help="the worker container's CPU limit; Ray's own processes share it")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.subset, args.epochs = 500, 2  # two: steady() skips the first
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(FASHION, work / "data" / "fashion-mnist")
        a = native(args, work, 1)
        if os.geteuid() == 0:  # the image's user (uid 1000) writes locks and results there,
            for d in [work / "data", *(work / "data").rglob("*")]:  # the native run's too
                os.chown(d, 1000, 1000)
        c = container(args, work)
        b = native(args, work, 2)
    base = (a["s_per_epoch"] + b["s_per_epoch"]) / 2
    emit({"container_cpus": args.container_cpus, "native_runs": [a, b], "container": c,
          "container_over_native": c["s_per_epoch"] / base,
          "native_spread": abs(a["s_per_epoch"] - b["s_per_epoch"]) / base,
          "acc_native": [a["test_acc"], b["test_acc"]], "acc_container": c["test_acc"]},
         args.out)


if __name__ == "__main__":
    main()
