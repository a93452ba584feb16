"""raytune_ctr: which training configuration is fastest for the accuracy you need.

Pipeline, one module each: data -> models -> train (the loop) -> spec -> tuner
(the sweep) -> report. A training function of your own calls `report` once per
epoch, and `checkpoint` to resume (docs/own-code.md).
"""

from raytune_ctr.errors import DataError, SpecError
from raytune_ctr.reporter import checkpoint, config, report
from raytune_ctr.spec import Spec

__all__ = ["DataError", "RAY_VERSION", "Spec", "SpecError", "checkpoint", "config",
           "count_flops", "load", "report"]
__version__ = "0.1.0"
# Declared once; tests check pyproject's pin, the images and the KubeRay manifests against it.
RAY_VERSION = "2.60.0"


def load(path, overrides=None) -> Spec:
    """A spec file, checked whole: its names resolved too (checks.py; imports torch)."""
    from raytune_ctr import checks

    return checks.load(path, overrides)


def count_flops(model, input_shape, num_classes) -> float:
    """A training function's model's FLOPs per sample (hardware.count_flops)."""
    from raytune_ctr import hardware

    return hardware.count_flops(model, input_shape, num_classes)
