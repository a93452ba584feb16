"""Shared by the benchmarks: run one spec as a sweep on the local Ray, return its table."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from raytune_ctr import checks
from raytune_ctr import sweep as sweep_lib
from raytune_ctr.results import Results


def sweep(spec_map: dict) -> tuple[pd.DataFrame, float]:
    """Run a spec (a mapping) to completion the way the CLI does (`sweep.run`), on the
    local Ray (started on first use, kept for the next); return (trials table, wall
    seconds of the sweep: trials, pools, tables and report)."""
    spec = checks.from_dict(spec_map)
    with tempfile.TemporaryDirectory() as tmp:
        where = Results(tmp, spec.name)
        sweep_lib.prepare_data(spec)
        sweep_lib.connect(None, code=spec.code)
        t0 = time.perf_counter()
        df = sweep_lib.run(spec, where).trials
        wall = time.perf_counter() - t0
    failed = df[df["status"] == "FAILED"]
    if not failed.empty:
        raise RuntimeError(f"{spec.name}: trial failed: {failed['error'].iloc[0]}")
    return df, wall


SMOKE = ("a tiny run that checks the script end to end on any machine (on the CPU where "
         "there is no GPU); its figures mean nothing")


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


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
