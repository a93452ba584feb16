"""Shared by the benchmarks: run one spec as a sweep on the local Ray, return its table."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from raytune_ctr import plan, tuner
from raytune_ctr import spec as spec_lib

_ray_started = False


def sweep(spec_map: dict) -> tuple[pd.DataFrame, float]:
    """Run a spec (a mapping) to completion; return (trials table, wall seconds)."""
    global _ray_started
    spec = spec_lib.from_dict(spec_map)
    if not _ray_started:
        tuner.init_ray(None)
        _ray_started = True
    concurrency = plan.plan(spec)
    tuner.prepare_data(spec)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / spec.name
        run_dir.mkdir()
        spec_lib.dump(spec, run_dir / "spec.yaml")
        t0 = time.perf_counter()
        df = tuner.run_sweep(spec, run_dir, concurrency=concurrency)
        wall = time.perf_counter() - t0
    failed = df[df["status"] == "FAILED"]
    if not failed.empty:
        raise RuntimeError(f"{spec.name}: trial failed: {failed['error'].iloc[0]}")
    return df, wall


def steady(times: list[float]) -> float:
    """Mean epoch time after the first (warm-up) epoch."""
    return statistics.mean(times[1:] if len(times) > 1 else times)


def emit(result: dict, out: str | None) -> None:
    """Print the figures with where and when they were measured; save them if asked."""
    import torch

    where = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    text = json.dumps(where | result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text)
