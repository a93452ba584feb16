"""Tier-1 twins of a built-in model and dataset: the same net and the same data,
reached by import path (`code: benchmarks/own_code`). trial_overhead.py --own-code
runs a series with them beside the built-in one, so any difference is the cost of
the import path, not of the work."""

from raytune_ctr import data, models
from raytune_ctr.spec import DataSpec


def mnist_cnn(config: dict, input_shape: tuple[int, ...]):
    return models.MnistCNN(input_shape, config["num_classes"])


def digits(config: dict):
    ds = data.REGISTRY["digits"].load(DataSpec(**config), None)
    return ds.train, ds.test, ds.num_classes
