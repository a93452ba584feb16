"""P6: S5-style worker scaling on one host: Train workers x torch threads per worker
that use every core (1xN, 2xN/2, 4xN/4, ...), the MLP of s5_workers.yaml.
Reports throughput and final accuracy per layout, and both against 1xN: the time
gained next to the accuracy lost, as S5's table does.

    python benchmarks/worker_scaling.py [--cpus 16] [--epochs 3] [--out p6.json]
"""

from __future__ import annotations

import argparse
import os

from _common import SMOKE, emit, steady, sweep

from raytune_ctr import spec as spec_lib


def layouts(cpus: int) -> list[tuple[int, int]]:
    out, w = [], 1
    while w <= cpus:
        out.append((w, cpus // w))
        w *= 2
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/configs/s5_workers.yaml")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--layouts", default=None,
                   help="only these, e.g. 1x16,8x2 (the first is the baseline)")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.epochs, args.subset, args.layouts = 1, 256, "1x1,2x1"
    chosen = ([tuple(map(int, x.split("x"))) for x in args.layouts.split(",")]
              if args.layouts else layouts(args.cpus))
    m = spec_lib.load(args.config).to_dict()
    m["train"]["epochs"] = args.epochs
    if args.smoke:
        m["data"] = {"dataset": "digits", "subset": args.subset}
    if args.subset:
        m["data"]["subset"] = args.subset
    m["search"] |= {"method": "grid", "grid": {}, "max_concurrent": 1, "points": [
        {"num_workers": w, "cpus_per_worker": float(t), "threads_per_worker": t}
        for w, t in chosen]}
    df, _ = sweep(m)
    rows = []
    for _, t in df.groupby("trial_index"):
        t = t.sort_values("epoch")
        rows.append({"workers": int(t["num_workers"].iloc[0]),
                     "threads": int(t["threads_per_worker"].iloc[0]),
                     "samples_per_s": steady(t["samples_per_s"].tolist()),
                     "s_per_epoch": steady(t["epoch_time_s"].tolist()),
                     "test_acc": float(t["test_acc"].iloc[-1])})
    base = rows[0]
    for r in rows:
        r["speedup_vs_1xN"] = base["s_per_epoch"] / r["s_per_epoch"]
        r["acc_change_points"] = r["test_acc"] - base["test_acc"]
    emit({"cpus": args.cpus, "layouts": rows}, args.out)


if __name__ == "__main__":
    main()
