"""P1: what does running a config as a raytune_ctr trial cost over plain PyTorch?

Runs one configuration in one process, interleaved:
    examples, (plain, trial) x repeats, plain, examples
  plain     raytune_ctr's own loop (`train.fit`) with no Ray at all
  trial     a one-trial raytune_ctr sweep: a Tune trial that trains in its own process
  examples  the pytorch/examples MNIST loop: DataLoader over the same tensors, fp32
Each trial's steady-state epoch time (mean of epochs 2..N) is divided by the mean
of the plain runs just before and after it, so drift on a noisy machine cancels;
the ratios' mean and spread (min, max) are reported, with the fixed cost a trial
adds (the sweep's wall time minus its training and evaluation passes).

    python benchmarks/overhead.py [--dataset fashion-mnist] [--subset 10000] [--epochs 3]
        [--threads 1] [--repeats 3] [--smoke]
Goal: trial / plain <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import emit, steady, sweep

from raytune_ctr import checks, data, models
from raytune_ctr.train import fit


def examples_loop(ds, args) -> list[float]:
    """pytorch/examples/mnist/main.py's train(): DataLoader, shuffle, one step per batch."""
    torch.manual_seed(1)
    model = models.build("mnist_cnn", ds.input_shape, ds.num_classes)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.train.x, ds.train.y),
                                         batch_size=args.batch_size, shuffle=True)
    times = []
    for _ in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            opt.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        sched.step()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    # One thread on a 2-core machine leaves a core to Ray's own processes.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--subset", type=int, default=10000, help="training samples (0 = all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="digits, 2 epochs, 1 repeat")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if args.smoke:
        args.dataset, args.epochs, args.repeats, args.subset = "digits", 2, 1, 0
    torch.set_num_threads(args.threads)

    spec_map = {
        "name": "overhead",
        "data": {"dataset": args.dataset, "subset": args.subset or None},
        "train": {"model": "mnist_cnn", "epochs": args.epochs, "batch_size": args.batch_size,
                  "optimizer": "adadelta", "lr": 1.0, "lr_schedule": "step", "gamma": 0.7},
        "resources": {"num_workers": 1, "cpus_per_worker": float(args.threads),
                      "threads_per_worker": args.threads},
        "search": {"method": "grid"},
    }
    spec = checks.from_dict(spec_map)
    ds = data.load(spec.data)

    def plain() -> list[float]:
        return [m["epoch_time_s"] for m in fit(spec.data, spec.train)]

    ex = examples_loop(ds, args)
    plains, trials, fixed, setup = [plain()], [], [], []
    for _ in range(args.repeats):
        df, wall = sweep(spec_map)
        trials.append(df["epoch_time_s"].tolist())
        fixed.append(wall - df["epoch_time_s"].sum() - df["eval_time_s"].sum())
        setup.append(float(df["setup_time_s"].iloc[0]))
        plains.append(plain())
    ex_after = examples_loop(ds, args)
    ratios = [steady(t) / ((steady(a) + steady(b)) / 2)
              for t, a, b in zip(trials, plains, plains[1:], strict=False)]
    plain_s = statistics.mean(steady(t) for t in plains)
    ex_s = (steady(ex) + steady(ex_after)) / 2
    out = {
        "dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
        "threads": args.threads, "train_samples": len(ds.train), "repeats": args.repeats,
        "examples_s_per_epoch": ex_s, "plain_s_per_epoch": plain_s,
        "trial_s_per_epoch": statistics.mean(steady(t) for t in trials),
        "ratio_trial_vs_plain": ratios,
        "ratio_mean": statistics.mean(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "ratio_plain_vs_examples": plain_s / ex_s,
        "trial_fixed_cost_s": fixed, "trial_setup_s": setup,
        "epoch_times": {"examples": ex, "plain": plains, "trial": trials,
                        "examples_after": ex_after},
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
