"""P4: ResNet-50 training throughput in a trial (224 px, bf16, synthetic data, one GPU).

Target: >= 5,000 images/s on an H100 (plain eager PyTorch: about 4,000).

    python benchmarks/gpu_throughput.py [--batch-size 256] [--compile]
"""

from __future__ import annotations

import argparse

from _common import SMOKE, emit, has_gpu, sweep


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    gpu, size = has_gpu() or not args.smoke, 224
    if args.smoke:
        args.model, args.batch_size, args.samples, args.epochs, size = "resnet18", 16, 64, 2, 64
    df, _ = sweep({
        "name": "p4",
        "data": {"dataset": "synthetic", "image_size": size, "channels": 3, "num_classes": 1000,
                 "num_samples": args.samples, "data_on_device": True},
        "train": {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
                  "optimizer": "sgd", "lr": 0.1, "lr_schedule": "none",
                  "precision": "bf16" if gpu else "fp32",
                  "compile": args.compile, "test_batch_size": 256},
        "resources": {"use_gpu": gpu, "cpus_per_worker": 4.0 if gpu else 1.0},
        "search": {"method": "grid", "objectives": {"samples_per_s": "max"}},
    })
    t = df.sort_values("epoch")
    result = {"model": args.model, "compile": args.compile,
              "batch_size": args.batch_size,
              "images_per_s_by_epoch": t["samples_per_s"].tolist(),
              "images_per_s": float(t["samples_per_s"].iloc[1:].mean()),
              "mfu": t["mfu"].tolist() if "mfu" in t else None,
              "peak_cuda_mb": float(t["peak_cuda_mb"].max()) if gpu else None}
    emit(result, args.out)


if __name__ == "__main__":
    main()
