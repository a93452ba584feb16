"""P2: the S1 recipe (MNIST CNN, batch 128, Adadelta, 5 epochs) as a raytune_ctr
trial on one GPU against the stock pytorch/examples recipe on the same GPU.

stock: pytorch/examples/mnist/main.py as shipped: a Dataset that converts each
       image through PIL, ToTensor and Normalize, a DataLoader (1 worker, pinned
       memory), fp32.
trial: one raytune_ctr trial per fast-path setting (data held on the GPU, bf16,
       channels_last, torch.compile), run one at a time.
Target: trial >= 4x faster per epoch at equal test accuracy (+-0.3 points).

    python benchmarks/gpu_speed.py --dataset fashion-mnist --data-dir /tmp/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import emit, steady, sweep

from raytune_ctr import data, models
from raytune_ctr.spec import DataSpec


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


def stock(args) -> dict:
    folder = data._idx_source(args.dataset, DataSpec(dataset=args.dataset, data_dir=args.data_dir))
    assert folder, f"no IDX files for {args.dataset} in {args.data_dir}"
    xtr, ytr, xte, yte = (data.read_idx(data._idx_path(folder, f)) for f in data.IDX_FILES)
    mean, std = data.NORMALIZE[args.dataset]
    dev = torch.device("cuda")
    kw = {"num_workers": 1, "pin_memory": True}
    train = torch.utils.data.DataLoader(PilDataset(xtr, ytr, mean, std), batch_size=args.batch_size,
                                        shuffle=True, **kw)
    test = torch.utils.data.DataLoader(PilDataset(xte, yte, mean, std), batch_size=1000, **kw)
    torch.manual_seed(1)
    model = models.build("mnist_cnn", (1, 28, 28), 10).to(dev)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    times = []
    for _ in range(args.epochs):
        model.train()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x, y in train:
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        sched.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            correct += (model(x.to(dev)).argmax(1) == y.to(dev)).sum().item()
    return {"s_per_epoch": steady(times), "epoch_times": times,
            "test_acc": 100.0 * correct / len(yte)}


def trials(args) -> list[dict]:
    spec = {
        "name": "p2",
        "data": {"dataset": args.dataset, "data_dir": args.data_dir, "data_on_device": True},
        "train": {"model": "mnist_cnn", "epochs": args.epochs, "batch_size": args.batch_size,
                  "optimizer": "adadelta", "lr": 1.0, "lr_schedule": "step", "gamma": 0.7},
        "resources": {"use_gpu": True, "cpus_per_worker": 2.0},
        "search": {"method": "grid", "max_concurrent": 1, "points": [
            {"precision": "fp32", "compile": False},
            {"precision": "bf16", "compile": False},
            {"precision": "bf16", "compile": True}]},
    }
    df, _ = sweep(spec)
    out = []
    for _, t in df.groupby("trial_index"):
        t = t.sort_values("epoch")
        out.append({"precision": t["precision"].iloc[0], "compile": bool(t["compile"].iloc[0]),
                    "s_per_epoch": steady(t["epoch_time_s"].tolist()),
                    "epoch_times": t["epoch_time_s"].tolist(),
                    "setup_s": float(t["setup_time_s"].iloc[0]),
                    "test_acc": float(t["test_acc"].iloc[-1]),
                    "gpu_util": float(t["gpu_util"].mean()) if "gpu_util" in t else None})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="/tmp/data/fashion-mnist")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    ref = stock(args)
    ours = trials(args)
    for o in ours:
        o["speedup"] = ref["s_per_epoch"] / o["s_per_epoch"]
        o["acc_diff_points"] = o["test_acc"] - ref["test_acc"]
    result = {"stock": ref, "trials": ours}
    emit(result, args.out)


if __name__ == "__main__":
    main()
