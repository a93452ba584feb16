"""Shared by the benchmarks: run one spec as a sweep on the local Ray, return its table."""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from raytune_ctr import checks
from raytune_ctr import sweep as sweep_lib
from raytune_ctr.results import Results


def sweep(spec_map: dict) -> tuple[pd.DataFrame, float]:
    """Run a spec (a mapping) to completion the way the CLI does (`sweep.run`), on the
    Ray the CLI would use with no --address (one started here on first use, and kept for
    the next, unless RAY_ADDRESS or `ray start` names one); return (trials table, wall
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


def cpu_seconds() -> tuple[float, float]:
    """This machine's (busy, all) CPU-seconds since boot, every core, from /proc/stat;
    guest time is inside user's. Busy leaves out idle and iowait."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, (busy + idle + iowait) / tick


def sweep_command(tmp: str, *args: str) -> tuple[list[str], dict, Path]:
    """`python experiments/sweep.py ARGS` as a user types it, run from the repository,
    its results (`tmp`/results/run) and trace stamps in `tmp`: (the command, its
    environment, the trace file)."""
    trace = Path(tmp, "trace.jsonl")
    env = os.environ | {"RAYTUNE_CTR_TRACE": str(trace),
                        "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", f"{tmp}/ray")}
    cmd = [sys.executable, "experiments/sweep.py", "--storage-path", f"{tmp}/results",
           "--name", "run", *args]
    return cmd, env, trace


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

    from raytune_ctr.fingerprint import _cpu_model

    where = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
             "cpu": _cpu_model(), "torch": torch.__version__,
             "date": time.strftime("%Y-%m-%d")}
    text = json.dumps(where | result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text)


def phases(trace: Path) -> dict:
    """Mean seconds from each stamp to the next in the same process (trace.py), and
    how many trial processes (Tune's trial actors) marked a trial start."""
    steps: dict[str, list[float]] = collections.defaultdict(list)
    last: dict[int, tuple[str, float]] = {}
    starters = set()
    for line in trace.read_text().splitlines():
        s = json.loads(line)
        if s["phase"] == "trial_start":
            starters.add(s["pid"])
        if s["pid"] in last and s["phase"] != "trial_start":
            phase, t = last[s["pid"]]
            steps[f"{phase} -> {s['phase']}"].append(s["t"] - t)
        last[s["pid"]] = (s["phase"], s["t"])
    return {"trial_processes": len(starters),
            "steps": {k: {"n": len(v), "mean_s": round(sum(v) / len(v), 4),
                          "total_s": round(sum(v), 2)}
                      for k, v in sorted(steps.items(), key=lambda kv: -sum(kv[1]))[:15]}}
