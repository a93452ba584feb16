"""raytune_ctr: which training configuration is fastest for the accuracy you need.

Pipeline, one module each: data -> models -> train (the loop) -> spec -> tuner
(the sweep) -> report.
"""

from raytune_ctr.errors import DataError, SpecError
from raytune_ctr.spec import Spec, load

__all__ = ["DataError", "RAY_VERSION", "Spec", "SpecError", "load"]
__version__ = "0.1.0"
# Declared once; tests check pyproject's pin, the images and the KubeRay manifests against it.
RAY_VERSION = "2.60.0"
