"""P5: does Optuna+ASHA find the wide S1 grid's best accuracy for a fraction of its epochs?

Runs experiments/configs/s1_wide_grid.yaml (20 configs x 5 epochs) and
s1_wide_optuna.yaml (TPE + ASHA over the same ranges), then follows each as
"best test accuracy found so far" against "epochs spent so far", trials taken in
the order they were suggested.
Target: the search gets within 0.3 points of the grid's best using <= 25% of its epochs.

    python benchmarks/search_efficiency.py --gpu-fraction 0.25 --out-dir $OUT
    python benchmarks/search_efficiency.py --smoke   # digits, 2 trials each of 1 epoch
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from _common import SMOKE, emit, sweep

from raytune_ctr import checks
from raytune_ctr import spec as spec_lib


def curve(df: pd.DataFrame) -> pd.DataFrame:
    """Per trial, in suggestion order: cumulative epochs spent and best accuracy so far."""
    per = df[df["epoch"].notna()].groupby("trial_index").agg(
        epochs=("epoch", "max"), acc=("test_acc", "max")).sort_index()
    return pd.DataFrame({"epochs_spent": per["epochs"].cumsum(), "best_acc": per["acc"].cummax()})


def load(path: str, args) -> dict:
    spec = checks.load(path)
    m = (spec_lib.smoke(spec) if args.smoke else spec).to_dict()
    if args.dataset:
        m["data"]["dataset"] = args.dataset
    if args.subset:
        m["data"]["subset"] = args.subset
    if args.gpu_fraction:
        m["resources"] = m.get("resources", {}) | {
            "use_gpu": True, "gpus_per_worker": args.gpu_fraction, "cpus_per_worker": 2.0}
        m["data"]["data_on_device"] = True
    return m


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default="experiments/configs/s1_wide_grid.yaml")
    p.add_argument("--search", default="experiments/configs/s1_wide_optuna.yaml")
    p.add_argument("--dataset", default=None, help="override both specs' dataset")
    p.add_argument("--subset", type=int, default=None, help="training samples, for a quick run")
    p.add_argument("--gpu-fraction", type=float, default=None,
                   help="run every trial on the GPU with this share of it (packs trials)")
    p.add_argument("--out-dir", default=None, help="write p5.json and p5.png here")
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.dataset = "digits"
    grid, _ = sweep(load(args.grid, args))
    search, _ = sweep(load(args.search, args))
    g, s = curve(grid), curve(search)
    best = g["best_acc"].iloc[-1]
    close = s[s["best_acc"] >= best - 0.3]
    result = {
        "grid_best_acc": best, "grid_epochs": int(g["epochs_spent"].iloc[-1]),
        "search_best_acc": s["best_acc"].iloc[-1], "search_epochs": int(s["epochs_spent"].iloc[-1]),
        "search_epochs_to_within_0.3": int(close["epochs_spent"].iloc[0]) if len(close) else None,
        "grid_curve": g.to_dict("list"), "search_curve": s.to_dict("list"),
    }
    spent = result["search_epochs_to_within_0.3"]
    result["fraction_of_grid_epochs"] = spent / result["grid_epochs"] if spent else None
    out = Path(args.out_dir) if args.out_dir else None
    emit(result, str(out / "p5.json") if out else None)
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.step(g["epochs_spent"], g["best_acc"], where="post", label="grid")
        ax.step(s["epochs_spent"], s["best_acc"], where="post", label="Optuna TPE + ASHA")
        ax.axhline(best - 0.3, ls=":", c="gray", label="grid best - 0.3")
        ax.set(xlabel="epochs spent", ylabel="best test accuracy so far (%)")
        ax.legend()
        fig.savefig(out / "p5.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
