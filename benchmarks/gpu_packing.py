"""P3: 8 small trials packed on one GPU against one trial alone.

Target: the 8 finish in <= 2x the wall time of one. At 0.25 GPU each only 4 fit at
once, so 8 take two waves; --gpu-fraction 0.125 runs all 8 together.

    python benchmarks/gpu_packing.py --data-dir /tmp/data/fashion-mnist [--gpu-fraction 0.25]
"""

from __future__ import annotations

import argparse

from _common import SMOKE, emit, has_gpu, sweep


def spec(args, n: int) -> dict:
    gpu = {"use_gpu": True, "gpus_per_worker": args.gpu_fraction} if args.gpu else {}
    data = ({"dataset": "synthetic", "image_size": 28, "channels": 1, "num_samples": 256}
            if args.smoke else {"dataset": args.dataset, "data_dir": args.data_dir})
    return {
        "name": f"p3-{n}",
        "data": data | {"data_on_device": True},
        "train": {"model": "mnist_cnn", "epochs": args.epochs, "batch_size": 128,
                  "optimizer": "adadelta", "lr": 1.0,
                  "precision": "bf16" if args.gpu else "fp32"},
        "resources": gpu | {"cpus_per_worker": 1.0},
        "search": {"method": "grid", "grid": {"seed": list(range(n))}},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="/tmp/data/fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--gpu-fraction", type=float, default=0.125)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    args.gpu = has_gpu() or not args.smoke
    if args.smoke:
        args.trials, args.epochs = 2, 1
    _, one = sweep(spec(args, 1))
    df, many = sweep(spec(args, args.trials))
    result = {"gpu_fraction": args.gpu_fraction, "one_trial_wall_s": one,
              "packed_wall_s": many, "trials": args.trials, "ratio": many / one,
              "mean_epoch_s_packed": float(df["epoch_time_s"].mean()),
              "mean_setup_s_packed": float(df["setup_time_s"].mean())}
    emit(result, args.out)


if __name__ == "__main__":
    main()
