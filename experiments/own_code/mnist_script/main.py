"""A training script in the style of pytorch/examples' mnist/main.py, written for this
project: argparse flags, a small conv net, Adadelta with StepLR, and after each
epoch the example's own line,

    Test set: Average loss: 0.0480, Accuracy: 9837/10000 (98%)

It knows nothing of raytune_ctr (tier 3 runs it unchanged; see
experiments/configs/own_script.yaml). Offline data: scikit-learn's digits, or
Fashion-MNIST's IDX files. Under torchrun it trains with DDP, the global batch split
over the ranks.
"""

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class Net(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, 1, padding=1)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(32 * (size // 2) ** 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(torch.flatten(x, 1))
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def load(name, data_dir):
    """(train, test) TensorDatasets of 1xHxW images in [0, 1], normalized."""
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = x.reshape(-1, 1, 8, 8) / 16.0
        cut = int(len(x) * 0.8)  # a fixed split: every run tests on the same images
        parts = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    else:
        def idx(stem):
            with gzip.open(Path(data_dir, f"{stem}.gz")) as f:
                raw = f.read()
            dims = raw[3]
            shape = np.frombuffer(raw, ">i4", dims, 4)
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)

        parts = tuple((idx(f"{s}-images-idx3-ubyte")[:, None] / 255.0, idx(f"{s}-labels-idx1-ubyte"))
                      for s in ("train", "t10k"))
    mean, std = parts[0][0].mean(), parts[0][0].std()
    return [TensorDataset(torch.tensor((x - mean) / std, dtype=torch.float32),
                          torch.tensor(y, dtype=torch.long)) for x, y in parts]


def train(args, model, device, loader, optimizer, epoch, rank):
    model.train()
    for batch_idx, (data, target) in enumerate(loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0 and rank == 0:
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(  # noqa: UP032 - as the example
                epoch, batch_idx * len(data), len(loader.dataset),
                100.0 * batch_idx / len(loader), loss.item()))
            if args.dry_run:
                break


def test(model, device, loader):
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            correct += output.argmax(dim=1).eq(target).sum().item()
    test_loss /= len(loader.dataset)
    print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(  # noqa: UP032
        test_loss, correct, len(loader.dataset), 100.0 * correct / len(loader.dataset)))


def main():
    parser = argparse.ArgumentParser(description="PyTorch MNIST-style example")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="input batch size for training, over all ranks (default: 64)")
    parser.add_argument("--test-batch-size", type=int, default=1000, metavar="N")
    parser.add_argument("--epochs", type=int, default=14, metavar="N")
    parser.add_argument("--lr", type=float, default=1.0, metavar="LR")
    parser.add_argument("--gamma", type=float, default=0.7, metavar="M")
    parser.add_argument("--no-accel", action="store_true", help="disables the accelerator")
    parser.add_argument("--dry-run", action="store_true", help="quickly check a single pass")
    parser.add_argument("--seed", type=int, default=1, metavar="S")
    parser.add_argument("--log-interval", type=int, default=10, metavar="N")
    parser.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--save-model", action="store_true")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_accel = not args.no_accel and torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if use_accel else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if use_accel else torch.device("cpu")
    torch.manual_seed(args.seed)

    train_set, test_set = load(args.dataset, args.data_dir)
    sampler = DistributedSampler(train_set, seed=args.seed) if world > 1 else None
    train_loader = DataLoader(train_set, batch_size=max(1, args.batch_size // world),
                              shuffle=sampler is None, sampler=sampler)
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size)

    model = Net(train_set.tensors[0].shape[-1]).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train(args, model, device, train_loader, optimizer, epoch, rank)
        if rank == 0:
            test(model, device, test_loader)
        scheduler.step()
    if args.save_model and rank == 0:
        torch.save(model.state_dict(), "mnist_cnn.pt")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
