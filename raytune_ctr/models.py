"""Models: one registry. Each entry builds a net for an input shape and class count."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raytune_ctr import usercode
from raytune_ctr.errors import SpecError

Shape = tuple[int, int, int]  # C, H, W
@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # (shape, num_classes, hidden=...) -> the net
    min_size: int = 1  # the smallest image side it takes, in px
    text: bool = False  # a Hugging Face sequence classifier over token ids


REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, min_size: int = 1, text: bool = False):
    def wrap(fn):
        REGISTRY[name] = ModelEntry(fn, min_size, text)
        return fn

    return wrap


def hf_source(name: str) -> str | None:
    """The hub id or folder of a text model (a registered one, or hf:<hub id or
    folder> for any sequence classifier); None for the vision models."""
    if name.startswith("hf:"):
        return os.path.expanduser(name[3:])
    return name if name in REGISTRY and REGISTRY[name].text else None


# check and build take any model's input shape: a text model's is (2, max_len).
def check(name: str, shape: tuple[int, ...] | None, key: str = "train.model") -> None:
    if usercode.is_path(name):  # the user's factory: it must import and be callable
        usercode.resolve(name, key)
        return
    if (source := hf_source(name)) is not None:
        if not source:
            raise SpecError(key, "hf: needs a hub id or a folder after it", name)
        return
    if name not in REGISTRY:
        raise SpecError(key, f"unknown model; one of {sorted(REGISTRY)}, hf:<hub id or folder> "
                        "or an import path (module:factory)", name)
    least = REGISTRY[name].min_size
    if shape is not None and min(shape[1:]) < least:
        raise SpecError(key, f"{name} needs inputs of at least {least}x{least} px "
                        f"but the dataset gives {shape[1]}x{shape[2]}", name)


def build(name: str, shape: tuple[int, ...], num_classes: int, *,
          hidden: tuple[int, ...] = (100,), config: dict | None = None) -> nn.Module:
    """The net for a trial. A factory named by import path gets the trial's resolved
    `config` (its train and resources fields, and num_classes) and the input shape."""
    check(name, shape)
    if usercode.is_path(name):
        net = usercode.call(name, "train.model", dict(config or {}, num_classes=num_classes),
                            tuple(shape))
        if not isinstance(net, nn.Module):
            raise SpecError("train.model", f"{name} returned {type(net).__name__}, "
                            "not a torch.nn.Module", name)
        return net
    if name.startswith("hf:"):
        source = hf_source(name)
        assert source is not None  # an hf: name always has one
        return _hf(source, num_classes)
    return REGISTRY[name].build(shape, num_classes, hidden=hidden)


def _hf(source: str, num_classes: int) -> nn.Module:
    from raytune_ctr import text  # the nlp extra

    return text.classifier(source, num_classes)


# Text models (study S4) come from Hugging Face, built in raytune_ctr/text.py.
@register("distilbert-base-uncased", text=True)
def _distilbert(shape: Shape, num_classes: int, **_) -> nn.Module:
    return _hf("distilbert-base-uncased", num_classes)


class MnistCNN(nn.Module):
    """The pytorch/examples MNIST net (studies.md S1), sized to the input.

    For 1x28x28 inputs fc1 is 9216 -> 128, exactly the original.
    """

    def __init__(self, shape: Shape, num_classes: int = 10):
        super().__init__()
        c, h, w = shape
        self.conv1 = nn.Conv2d(c, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        # log-softmax as in the original; cross_entropy on it equals nll_loss, since
        # log_softmax is idempotent, so one loss serves every model.
        return F.log_softmax(self.fc2(x), dim=1)


@register("mnist_cnn", min_size=6)
def _mnist_cnn(shape: Shape, num_classes: int, **_) -> nn.Module:
    return MnistCNN(shape, num_classes)


@register("mlp")
def _mlp(shape: Shape, num_classes: int, hidden: tuple[int, ...] = (100,), **_) -> nn.Module:
    """784-100-10 on MNIST-sized inputs by default (studies.md S5)."""
    sizes = [shape[0] * shape[1] * shape[2], *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


def _resnet(arch: str):
    def make(shape: Shape, num_classes: int, **_) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        c, h, _w = shape
        if h < 64:
            # CIFAR-style stem: a 7x7/2 conv and a max-pool would shrink small images to nothing.
            net.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif c != 3:
            net.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
        return net

    return make


register("resnet18", min_size=8)(_resnet("resnet18"))
register("resnet50", min_size=8)(_resnet("resnet50"))


# AlexNet's stride-4 11x11 conv and three 3x3/2 max-pools need at least 63 px.
@register("alexnet", min_size=63)
def _alexnet(shape: Shape, num_classes: int, **_) -> nn.Module:
    import torchvision

    net = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    if shape[0] != 3:
        net.features[0] = nn.Conv2d(shape[0], 64, 11, 4, 2)
    return net
