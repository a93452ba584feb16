"""Per-trial hardware figures: FLOPs per sample, achieved TFLOP/s, MFU, GPU utilization.

FLOPs are counted once per trial with `torch.utils.flop_counter` on one
forward+backward pass, outside the timed epochs. GPU utilization is sampled
through NVML (`nvidia-ml-py`) while an epoch runs; on a CPU it is absent, not 0.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Dense (not sparse) peak TFLOP/s from NVIDIA's data sheets. fp32 is the CUDA-core
# rate; tf32 and bf16 the tensor-core rates (T4 has no TF32; its bf16 column is fp16).
# A name matches the longest key found in it as a whole word: "L40S" is not an "L4".
PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.5},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.5},  # SXM
    "H100 PCIE": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0},
    "L40": {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0},
    "T4": {"fp32": 8.1, "tf32": 8.1, "bf16": 65.0},
}


def peak_tflops(gpu_name: str, precision: str = "fp32", override: float | None = None) -> float | None:
    """The device's peak for this precision (fp32, tf32 or bf16): the override, else
    the table, else None."""
    if override:
        return override
    name = gpu_name.upper()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if re.search(rf"(?<![A-Z0-9]){re.escape(key)}(?![A-Z0-9])", name):
            return PEAK_TFLOPS[key].get(precision)
    return None


def math_precision(precision: str, conv: bool) -> str:
    """The peak an fp32 run is held to: TF32 where PyTorch lets the tensor cores take
    the model's main op (cuDNN convolutions by default, matmuls when enabled)."""
    if precision != "fp32":
        return precision
    tf32 = torch.backends.cudnn.allow_tf32 if conv else torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "fp32"


# Our models' FLOPs per sample by `train.flops_key`, for this torch and this code of
# our models and of the count: counting imports dynamo, seconds before a first trial.
# expanduser, not Path.home(): no home is no cache (OSError when written), not an import error.
FLOPS_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                   "raytune_ctr", "flops.json")


def _flops_version() -> str:
    import hashlib

    code = hashlib.sha1()
    for name in ("models.py", "hardware.py"):
        code.update(Path(__file__).with_name(name).read_bytes())
    return f"torch {torch.__version__}, code {code.hexdigest()[:16]}"


def read_flops_cache() -> dict[str, float]:
    try:
        saved = json.loads(FLOPS_CACHE.read_text())
    except (OSError, ValueError):  # none yet, or damaged: counted again
        return {}
    return saved.get("counts", {}) if saved.get("version") == _flops_version() else {}


def write_flops_cache(counts: dict[str, float]) -> None:
    try:
        FLOPS_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = FLOPS_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _flops_version(), "counts": counts}))
        tmp.replace(FLOPS_CACHE)  # whole or not at all, with sweeps side by side
    except OSError as err:  # a read-only home: counted again next time
        log.info("FLOP counts not cached: %s", err)


def flops_per_sample(model: nn.Module, shape: tuple[int, ...], num_classes: int,
                     device: torch.device, batch: int = 2, dtype=torch.float32) -> float:
    """Training FLOPs (forward + backward) per sample, counted on one small batch
    (of ones: for text that is token 1 everywhere, attended)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = getattr(model, "module", model)  # count the bare net, not DDP's hooks
    x = torch.ones(batch, *shape, device=device, dtype=dtype)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    was_training = net.training
    net.eval()  # so BatchNorm's running stats don't learn from the dummy batch
    with counter:
        F.cross_entropy(net(x), y).backward()
    net.train(was_training)
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def count_flops(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> float:
    """For a training function of your own (`raytune_ctr.count_flops`): the training
    FLOPs per sample of `model`, counted as our loop counts its own, on the device it
    is on. Report it with each epoch's sample count,
    `raytune_ctr.report(flops_per_sample=f, samples=n, ...)`, and the sweep measures
    samples_per_s, tflops and (with a known peak) mfu."""
    from raytune_ctr import reporter

    device = next(iter(model.parameters())).device
    flops = flops_per_sample(model, tuple(input_shape), num_classes, device)
    reporter.start()  # counting is set-up, not the first epoch's training
    return flops


class GpuUtilization:
    """Mean NVML GPU utilization (%) over a `with` block, sampled every `period` s.

    `.mean` is None on a CPU, without nvidia-ml-py, or when NVML cannot start.
    """

    def __init__(self, device: torch.device, period: float = 0.1):
        self.device, self.period, self.mean = device, period, None
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            # By UUID: under CUDA_VISIBLE_DEVICES (Ray sets it per worker) torch's
            # index 0 is not NVML's index 0.
            props = torch.cuda.get_device_properties(device)
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{props.uuid}")
            self._nvml = pynvml
        except Exception as err:  # no driver library, no package: the figure is just absent
            log.info("GPU utilization not sampled: %s", err)

    def _run(self):
        while not self._stop.wait(self.period):
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __enter__(self):
        if self._handle is not None:
            self._samples, self._stop = [], threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._stop.set()
            self._thread.join()
            self.mean = sum(self._samples) / len(self._samples) if self._samples else None
        return False
