"""The first minute: `python experiments/sweep.py` as a newcomer types it, end to end,
timed from outside, with the driver's phases from its trace stamps.

Efficiency is over the whole command: each trial's training + evaluation seconds
times the CPUs it held, over the command's wall seconds times the machine's CPUs.

    python benchmarks/first_minute.py [--runs 2] [--config ...] [--out FILE]
    python benchmarks/first_minute.py --smoke   # one run of the sweep's own --smoke

Run it with nothing else on the machine. Data and FLOP caches are warm after the
first run of any sweep; `--cold` clears the FLOP cache first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from _common import SMOKE, cpu_seconds, emit, phases, sweep_command

ROOT = Path(__file__).resolve().parent.parent
# Driver phases in the order a sweep passes them; each row is the time to reach it.
PHASES = ["command_start", "data_ready", "ray_up", "sweep_start", "coordinator_started",
          "flops_counted", "tuner_fit", "first_trial_start", "pool_worker_ready",
          "pool_worker_warm", "pools_up", "tuner_done",
          "tables_written", "report_written", "coordinator_stopped", "command_exit"]


class Busy(threading.Thread):
    """The machine's busy share (all CPUs, /proc/stat) every `every` s: where the
    command leaves CPUs idle (a share near 1/CPUs is one process working alone)."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.stop, self.samples = every, threading.Event(), []

    def run(self) -> None:
        prev = cpu_seconds()
        while not self.stop.wait(self.every):
            cur = cpu_seconds()
            busy = (cur[0] - prev[0]) / max(1e-9, cur[1] - prev[1])
            self.samples.append((time.time(), round(busy, 2)))
            prev = cur


def once(config: str | None, cold: bool, smoke: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd, env, trace = sweep_command(tmp, *(["--config", config] if config else []),
                                        *(["--smoke"] if smoke else []))
        if cold:
            from raytune_ctr import hardware

            hardware.FLOPS_CACHE.unlink(missing_ok=True)
        sampler = Busy()
        sampler.start()
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        sampler.stop.set()
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        stamps = [json.loads(line) for line in trace.read_text().splitlines()]
        steps = phases(trace)
        df = pd.read_parquet(Path(tmp, "results", "run") / "trials.parquet")
    at: dict[str, float] = {}
    for s in stamps:
        phase = "first_trial_start" if s["phase"] == "trial_start" else s["phase"]
        at.setdefault(phase, s["t"])
    start = at.get("command_start", t0)
    busy = df.groupby("trial_index")[["epoch_time_s", "eval_time_s"]].sum().sum(axis=1)
    last = df.sort_values("epoch").groupby("trial_index").tail(1).set_index("trial_index")
    held = last["num_workers"] * last["cpus_per_worker"]
    # Its epochs against each other: a burst of CPU beside them (a pool's start) shows.
    first = df[df["trial_index"] == df["trial_index"].min()].sort_values("epoch")
    cpus = os.cpu_count() or 1
    return {"wall_s": round(wall, 1), "trials": len(busy),
            "train_eval_s": round(float(busy.sum()), 1),
            "efficiency": round(float((busy * held).sum()) / (wall * cpus), 3),
            "phases_s": {p: round(at[p] - start, 1) for p in PHASES if p in at},
            "first_trial_epoch_s": [round(float(x), 3) for x in first["epoch_time_s"]],
            # [seconds after the command's start, share of all CPUs busy]
            "cpu_busy": [[round(t - start, 1), b] for t, b in sampler.samples],
            "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--config", default=None, help="default: the quickstart")
    p.add_argument("--cold", action="store_true", help="clear the FLOP cache before each run")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.runs = 1
    runs = [once(args.config, args.cold, args.smoke) for _ in range(args.runs)]
    emit({"cpus": os.cpu_count(), "config": args.config or "quickstart",
          "runs": runs}, args.out)


if __name__ == "__main__":
    main()
