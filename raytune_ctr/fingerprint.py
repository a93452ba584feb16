"""Where a number was measured: versions, CPU, GPU, host and container image."""

from __future__ import annotations

import functools
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _image() -> str:
    """The container image, when running in one: set by our Dockerfiles at build time."""
    if os.environ.get("RAYTUNE_CTR_IMAGE"):
        return os.environ["RAYTUNE_CTR_IMAGE"]
    in_container = Path("/.dockerenv").exists() or "KUBERNETES_SERVICE_HOST" in os.environ
    return "unknown-container" if in_container else "native"


def process(image: str | None, gpu: bool) -> dict[str, str]:
    """Where a user's process ran (tiers 2 and 3), seen from the trial that started
    it, without importing torch: natively on this host, or in `image`."""
    return {"python": platform.python_version() if image is None else "not measured",
            "torch": _version("torch") if image is None else "not measured",
            "ray": _version("ray"), "optuna": _version("optuna"), "cpu_model": _cpu_model(),
            "cpu_count": str(os.cpu_count()), "gpu_name": "not measured" if gpu else "none",
            "host": socket.gethostname(), "image": image or _image()}


def fingerprint(device: torch.device | None = None) -> dict[str, str]:
    return dict(_fingerprint(str(device) if device is not None else None))


@functools.cache  # once per process and device: a reused trial process asks every trial
def _fingerprint(device: str | None) -> dict[str, str]:
    import torch

    dev = torch.device(device) if device is not None else None
    gpu = ""
    if dev is not None and dev.type == "cuda":
        gpu = torch.cuda.get_device_name(dev)
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion unpickles only with torch
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "cpu_model": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "gpu_name": gpu or "none",
        "host": socket.gethostname(),
        "image": _image(),
    }
