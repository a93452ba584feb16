"""P2: the S1 recipe (MNIST CNN, batch 128, Adadelta, 5 epochs) as a raytune_ctr
trial on one GPU against the stock pytorch/examples recipe on the same GPU.

stock: pytorch/examples/mnist/main.py as shipped: a Dataset that converts each
       image through PIL, ToTensor and Normalize, a DataLoader (1 worker, pinned
       memory), fp32.
trial: one raytune_ctr trial per fast-path setting (data held on the GPU, bf16,
       channels_last, torch.compile), run one at a time.
Target: trial >= 4x faster per epoch at equal test accuracy (+-0.3 points).

One run per side cannot settle +-0.3: the recipe's seed-to-seed spread is about as
large. --seeds runs both sides once per seed and compares the means. --device cpu
checks the accuracy half (the fp32 variant) on a machine without a GPU.

    python benchmarks/gpu_speed.py --data-dir /tmp/data/fashion-mnist [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import SMOKE, emit, has_gpu, steady, sweep

from raytune_ctr import data, models
from raytune_ctr.spec import DataSpec
from raytune_ctr.train import _sync


class PilDataset(torch.utils.data.Dataset):
    """torchvision's MNIST dataset's per-sample path: uint8 -> PIL -> ToTensor -> Normalize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def stock(args, seed: int) -> dict:
    folder = data._idx_source(args.dataset, DataSpec(dataset=args.dataset, data_dir=args.data_dir))
    assert folder, f"no IDX files for {args.dataset} in {args.data_dir}"
    xtr, ytr, xte, yte = (data.read_idx(data._idx_path(folder, f)) for f in data.IDX_FILES)
    if args.subset:
        xtr, ytr = xtr[:args.subset], ytr[:args.subset]
    mean, std = data.NORMALIZE[args.dataset]
    dev = torch.device(args.device)
    kw = {"num_workers": 1, "pin_memory": dev.type == "cuda"}
    train = torch.utils.data.DataLoader(PilDataset(xtr, ytr, mean, std), batch_size=args.batch_size,
                                        shuffle=True, **kw)
    test = torch.utils.data.DataLoader(PilDataset(xte, yte, mean, std), batch_size=1000, **kw)
    torch.manual_seed(seed)
    model = models.build("mnist_cnn", (1, 28, 28), 10).to(dev)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    times = []
    for _ in range(args.epochs):
        model.train()
        _sync(dev)
        t0 = time.perf_counter()
        for x, y in train:
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
        sched.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            correct += (model(x.to(dev)).argmax(1) == y.to(dev)).sum().item()
    return {"seed": seed, "s_per_epoch": steady(times), "epoch_times": times,
            "test_acc": 100.0 * correct / len(yte)}


VARIANTS = {"fp32": {"precision": "fp32", "compile": False},
            "bf16": {"precision": "bf16", "compile": False},
            "bf16+compile": {"precision": "bf16", "compile": True}}


def trials(args) -> list[dict]:
    gpu = args.device == "cuda"
    spec = {
        "name": "p2",
        "data": {"dataset": args.dataset, "data_dir": args.data_dir, "data_on_device": True,
                 "subset": args.subset},
        "train": {"model": "mnist_cnn", "epochs": args.epochs, "batch_size": args.batch_size,
                  "optimizer": "adadelta", "lr": 1.0, "lr_schedule": "step", "gamma": 0.7},
        "resources": {"use_gpu": gpu, "cpus_per_worker": 2.0,
                      "threads_per_worker": 2 if gpu else args.threads},
        "search": {"method": "grid", "max_concurrent": 1, "points": [
            VARIANTS[v] | {"seed": s} for s in args.seeds for v in args.variants]},
    }
    df, _ = sweep(spec)
    out = []
    for _, t in df.groupby("trial_index"):
        t = t.sort_values("epoch")
        out.append({"seed": int(t["seed"].iloc[0]), "precision": t["precision"].iloc[0],
                    "compile": bool(t["compile"].iloc[0]),
                    "s_per_epoch": steady(t["epoch_time_s"].tolist()),
                    "epoch_times": t["epoch_time_s"].tolist(),
                    "setup_s": float(t["setup_time_s"].iloc[0]),
                    "test_acc": float(t["test_acc"].iloc[-1]),
                    "gpu_util": float(t["gpu_util"].mean()) if t.get("gpu_util") is not None
                    and t["gpu_util"].notna().any() else None})
    return out


def summary(runs: list[dict]) -> dict:
    acc = [r["test_acc"] for r in runs]
    return {"runs": len(runs), "test_acc_mean": statistics.mean(acc),
            "test_acc_sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "s_per_epoch_mean": statistics.mean(r["s_per_epoch"] for r in runs)}


def compare(ref: list[dict], ours: list[dict], variants: list[str]) -> dict:
    """Per variant: speedup of the mean epoch time and difference of the mean accuracy
    over the same seeds, with the stock runs' own spread for scale."""
    base = summary(ref)
    out = {"stock": base}
    for name in variants:
        v = VARIANTS[name]
        mine = summary([o for o in ours if o["precision"] == v["precision"]
                        and o["compile"] == v["compile"]])
        out[name] = mine | {
            "speedup": base["s_per_epoch_mean"] / mine["s_per_epoch_mean"],
            "acc_diff_points": mine["test_acc_mean"] - base["test_acc_mean"]}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="/tmp/data/fashion-mnist")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", default="1", help="comma-separated; both sides run each")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, of {','.join(VARIANTS)} (default: all on cuda, fp32 on cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per trial on cpu")
    p.add_argument("--subset", type=int, default=None, help="training images (both sides)")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true",
                   help=SMOKE + "; needs Fashion-MNIST's IDX files in --data-dir")
    args = p.parse_args()
    if args.smoke:
        args.epochs, args.subset = 2, 500
        args.device = "cuda" if has_gpu() else "cpu"
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = (args.variants.split(",") if args.variants
                     else list(VARIANTS) if args.device == "cuda" else ["fp32"])
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"--variants: unknown {sorted(unknown)}")
    torch.set_num_threads(args.threads if args.device == "cpu" else torch.get_num_threads())
    ref = [stock(args, s) for s in args.seeds]
    ours = trials(args)
    emit({"device": args.device, "seeds": args.seeds, "summary": compare(ref, ours, args.variants),
          "stock": ref, "trials": ours}, args.out)


if __name__ == "__main__":
    main()
