"""A model factory: called with the trial's resolved config (a dict of its train and
resources fields, and num_classes) and the input shape, it returns an nn.Module."""

from torch import nn


def mlp(config: dict, input_shape: tuple[int, ...]) -> nn.Module:
    """An MLP whose widths come from the spec's `train.hidden` (a searchable knob)."""
    sizes = [input_shape[0], *config["hidden"]]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], config["num_classes"]))
