"""raytune_ctr: which training configuration is fastest for the accuracy you need.

Pipeline, one module each: data -> models -> train (the loop) -> spec -> tuner
(the sweep) -> report.
"""

from raytune_ctr.data import DataError
from raytune_ctr.spec import Spec, SpecError, load

__all__ = ["DataError", "Spec", "SpecError", "load"]
__version__ = "0.1.0"
