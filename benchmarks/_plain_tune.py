"""load.py's peer: the same sweep written by hand with plain Ray Tune, as a user
without raytune_ctr would. A function trainable, random search, ASHA by epoch,
`reuse_actors`; the same MLP, optimizer, data subset, space and seed; a trial asks
for as many CPUs as its `num_workers` (the shapes raytune_ctr's trials ask for)
and trains with that many threads. With --checkpoint every epoch saves the model
and optimizer (`num_to_keep=1`, the usual way to keep only the newest, which issue
22 names as the peer; raytune_ctr keeps every checkpoint in Tune's record and empties
old ones itself, see checkpoints.py).

    python benchmarks/_plain_tune.py --address HOST:PORT --trials 200 [--checkpoint]

Prints one JSON line: wall seconds of `Tuner.fit`, trials by status, the seconds at
which each trial ended, and the driver's resident memory before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_fn(config: dict, data: dict, epochs: int, checkpoint: bool) -> None:
    import torch
    import torch.nn.functional as F
    from ray import tune

    torch.set_num_threads(config["num_workers"])
    torch.manual_seed(0)
    x, y, tx, ty = data["x"], data["y"], data["tx"], data["ty"]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adadelta(net.parameters(), lr=config["lr"])
    start = 0
    if (ckpt := tune.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d, "state.pt"))
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"]
    bs = config["batch_size"]
    for epoch in range(start + 1, epochs + 1):
        net.train()
        for i in range(0, len(x), bs):
            opt.zero_grad()
            F.cross_entropy(net(x[i:i + bs]), y[i:i + bs]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = 100.0 * (net(tx).argmax(1) == ty).float().mean().item()
        metrics = {"epoch": epoch, "test_acc": acc}
        if not checkpoint:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch}, Path(d, "state.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=1024)
    p.add_argument("--checkpoint", action="store_true")
    args = p.parse_args()

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raytune_ctr import data
    from raytune_ctr.spec import DataSpec

    ds = data.load(DataSpec(dataset="digits", subset=args.subset))  # the same cached tensors
    tensors = {"x": ds.train.x, "y": ds.train.y, "tx": ds.test.x, "ty": ds.test.y}
    ray.init(address=args.address, log_to_driver=False)
    rss0 = _rss_mb()
    ended: list[float] = []
    t0 = time.monotonic()

    class Ends(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            ended.append(round(time.monotonic() - t0, 2))

        def on_trial_error(self, iteration, trials, trial, **info):
            ended.append(round(time.monotonic() - t0, 2))

    with tempfile.TemporaryDirectory() as tmp:
        trainable = tune.with_resources(
            tune.with_parameters(train_fn, data=tensors, epochs=args.epochs,
                                 checkpoint=args.checkpoint),
            lambda config: {"cpu": config["num_workers"]})
        tuner = tune.Tuner(
            trainable,
            param_space={"lr": tune.loguniform(0.001, 0.3),
                         "batch_size": tune.choice([32, 64, 128]),
                         "num_workers": tune.choice([1, 1, 1, 1, 2])},
            tune_config=tune.TuneConfig(
                num_samples=args.trials, reuse_actors=True,
                search_alg=BasicVariantGenerator(random_state=0),
                scheduler=ASHAScheduler(time_attr="training_iteration", metric="test_acc",
                                        mode="max", max_t=args.epochs, grace_period=1,
                                        reduction_factor=2)),
            run_config=tune.RunConfig(
                storage_path=tmp, name="plain", verbose=0, callbacks=[Ends()],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)
                if args.checkpoint else None))
        t0 = time.monotonic()
        grid = tuner.fit()
        wall = time.monotonic() - t0
    statuses: dict[str, int] = {}
    for r in grid:
        s = "ERROR" if r.error else "TERMINATED"
        statuses[s] = statuses.get(s, 0) + 1
    print(json.dumps({"wall_s": round(wall, 2), "trials": len(grid), "statuses": statuses,
                      "ended_s": sorted(ended), "driver_rss_mb": [round(rss0, 1),
                                                                  round(_rss_mb(), 1)],
                      "pid": os.getpid()}))


if __name__ == "__main__":
    main()
