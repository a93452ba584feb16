"""A training function of your own (tier 2): raytune_ctr calls `run(config)` with the
trial's configuration, on every rank when the trial has several workers (the
process group is already up). It reports once per epoch and saves a checkpoint
folder with each report, so a restarted trial goes on from its last epoch.
See experiments/configs/own_function.yaml.
"""

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import raytune_ctr


def _data():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    cut = int(len(x) * 0.8)  # a fixed split: every trial tests on the same rows
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def run(config: dict) -> None:
    torch.manual_seed(config["seed"])
    ddp = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if ddp else 1
    train_set, test_set = _data()
    sampler = DistributedSampler(train_set, seed=config["seed"]) if ddp else None
    loader = DataLoader(train_set, batch_size=max(1, config["batch_size"] // world),
                        shuffle=sampler is None, sampler=sampler)
    model = nn.Sequential(nn.Linear(64, config["hidden"][0]), nn.ReLU(),
                          nn.Linear(config["hidden"][0], 10))
    flops = raytune_ctr.count_flops(model, (64,), 10)  # optional: gives tflops, mfu
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    start = 1
    resume = raytune_ctr.checkpoint()  # None on a first run
    if resume is not None:
        state = torch.load(Path(resume, "state.pt"))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
    for epoch in range(start, config["epochs"] + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            x, y = test_set.tensors
            out = model(x)
            loss = F.cross_entropy(out, y).item()
            acc = 100.0 * (out.argmax(1) == y).float().mean().item()
        with tempfile.TemporaryDirectory() as d:  # report copies it before returning
            if not ddp or dist.get_rank() == 0:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "epoch": epoch}, Path(d, "state.pt"))
            raytune_ctr.report(epoch=epoch, test_acc=acc, test_loss=loss, checkpoint=d,
                               flops_per_sample=flops, samples=len(train_set))
