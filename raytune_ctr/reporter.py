"""What a user's training function calls (tier 2): `raytune_ctr.report(...)` once per
epoch, `raytune_ctr.checkpoint()` to resume, `raytune_ctr.config()` for its trial's
configuration. A report is one tagged JSON line on stdout, the same channel a
tier-3 script's output is read from (output.py), so one reader serves both. Only
rank 0 prints: with DDP every rank may call report.

A leaf of the standard library only: it runs in the user's process, beside torch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

TAG = "[raytune_ctr] "
CONFIG_ENV = "RAYTUNE_CTR_CONFIG"  # a JSON file: the trial's configuration, fixed for every rank
RESUME_ENV = "RAYTUNE_CTR_CHECKPOINT"  # the folder to resume from, when there is one
OUT_ENV = "RAYTUNE_CTR_OUT"  # where reported checkpoint folders are copied
META = "raytune_ctr.json"  # our bookkeeping inside a checkpoint folder


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def config() -> dict:
    """The trial's configuration: every train and resources field, as the sweep
    resolved it before any rank started."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV} is not set: raytune_ctr runs this function")
    return json.loads(Path(path).read_text())


def checkpoint() -> str | None:
    """The folder this trial last reported with `report(checkpoint=...)`, to resume
    from after a restart; None on a first run."""
    return os.environ.get(RESUME_ENV) or None


def report(checkpoint: str | os.PathLike | None = None, **metrics: float) -> None:
    """Report one epoch: metrics by name (test_acc in %, test_loss, epoch, ...), and
    optionally a folder to resume from. The folder is copied before this returns, so
    the function may overwrite it at once."""
    if rank() != 0:
        return
    line: dict = {}
    for name, v in metrics.items():
        try:
            line[name] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"raytune_ctr.report: {name} must be a number, got {v!r}") from None
        if not math.isfinite(line[name]):
            line[name] = None  # JSON has no NaN; the reader treats it as a diverged value
    if checkpoint is not None:
        line["checkpoint"] = _keep(Path(checkpoint))
    print(TAG + json.dumps(line), flush=True)


def start() -> None:
    """Marks the end of set-up so far: the first epoch's time counts from the last
    such mark (function.py, before the call; count_flops, after counting)."""
    if rank() == 0:
        print(TAG + json.dumps({"event": "start"}), flush=True)


def _keep(folder: Path) -> str:
    if not folder.is_dir():
        raise FileNotFoundError(f"raytune_ctr.report: checkpoint {folder} is not a folder")
    out = os.environ.get(OUT_ENV)
    if not out:  # run by hand, outside a sweep: nothing to hand over
        return str(folder.resolve())
    dest = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=out))  # a fresh name, never reused
    shutil.copytree(folder, dest, dirs_exist_ok=True)
    return str(dest)


def tagged(line: str) -> dict | None:
    """The JSON of a tagged line, or None for any other line."""
    at = line.find(TAG)
    if at < 0:
        return None
    try:
        obj = json.loads(line[at + len(TAG):])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None

