"""Load: a random search of hundreds of tiny trials (some with 2 DDP workers, about
half stopped early by ASHA) on a Ray head that outlives the sweep, as a shared
cluster does. Afterwards it checks and records:

- every trial is COMPLETED or STOPPED, and none is lost;
- Ray's state API shows no placement group or actor, and /proc no process, of any
  trial (the sweep's own coordinator, pools and trial processes included);
- the driver's, raylet's and GCS's resident memory over the sweep (the curve);
- the sweep's wall time and efficiency: the trials' training + evaluation seconds,
  each times the CPUs it trained on, over wall seconds times the cluster's CPUs;
- its peer: the same sweep written with plain Ray Tune (`_plain_tune.py`), run just
  before on a fresh head of the same size, with and without a checkpoint every epoch; and the
  ratio of seconds per trial, raytune_ctr over plain Tune with checkpoints;
- seconds per trial by hundreds of trials (flat or growing), the driver's resident
  memory per trial (report included), the trial processes started, and where a
  trial's bookkeeping goes (the mean time between the trace stamps, trace.py).

    python benchmarks/load.py [--trials 200] [--out docs/results/.../load.json]
    python benchmarks/load.py --smoke   # 12 trials

Exits 1 when a trial is lost or failed or anything is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _cluster import Head, settled
from _common import SMOKE, emit, phases

from raytune_ctr import checks
from raytune_ctr import sweep as sweep_lib
from raytune_ctr.results import Results


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _pid_of(fragment: str) -> int | None:
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if fragment in cmd.read_text():
                return int(cmd.parent.name)
        except OSError:
            continue
    return None


def trials_done(table: Path) -> int | None:
    """Trials in the results table so far (written as each trial ends); None before
    it is written, or while it is replaced."""
    import pandas as pd

    try:
        return int(pd.read_parquet(table, columns=["trial_index"])["trial_index"].nunique())
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return None


@contextlib.contextmanager
def on_head(args):
    """The sweep's spec and a new results folder, its data ready, this driver joined
    to a Ray head of its own that outlives the sweep (stopped after): (spec, folder,
    head)."""
    head = Head(args.cpus)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s = checks.from_dict(spec(args))
            where = Results(tmp, s.name)
            sweep_lib.prepare_data(s)
            sweep_lib.connect(head.address)
            yield s, where, head
    finally:
        head.stop()


class Memory(threading.Thread):
    """Resident memory of the driver, raylet and GCS every `every` seconds, with the
    number of trials in the results table so far (written as each trial ends)."""

    def __init__(self, table: Path, every: float):
        super().__init__(daemon=True)
        self.table, self.every, self.stop = table, every, threading.Event()
        self.pids = {"driver": os.getpid(), "raylet": _pid_of("/raylet"),
                     "gcs": _pid_of("gcs_server")}
        self.curve: list[dict] = []
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        done = trials_done(self.table)
        if done is None:
            done = self.curve[-1]["trials_done"] if self.curve else 0
        row = {"t_s": round(time.monotonic() - self.t0, 1), "trials_done": done}
        for name, pid in self.pids.items():
            rss = _rss_mb(pid) if pid else None
            row[f"{name}_rss_mb"] = round(rss, 1) if rss is not None else None
        self.curve.append(row)


def spec(args) -> dict:
    return {
        "name": "load",
        "data": {"dataset": "digits", "subset": args.subset},
        "train": {"model": "mlp", "hidden": [64], "epochs": args.epochs, "batch_size": 64},
        "resources": {"cpus_per_worker": 1.0, "threads_per_worker": 1},
        "search": {
            "method": "random", "num_samples": args.trials, "seed": 0,
            "objectives": {"test_acc": "max"},
            "scheduler": "asha",
            "asha": {"time_attr": "epoch", "grace_period": 1, "reduction_factor": 2},
            "space": {"lr": {"loguniform": [0.001, 0.3]},
                      "batch_size": {"choice": [32, 64, 128]},
                      # one trial in five trains with 2 DDP workers
                      "num_workers": {"choice": [1, 1, 1, 1, 2]}},
        },
    }


def plain(args, checkpoint: bool) -> dict:
    """The peer, in a process of its own (its driver's memory is its own), on a fresh
    head of the same size, as each sweep gets."""
    head = Head(args.cpus)
    try:
        cmd = [sys.executable, str(Path(__file__).with_name("_plain_tune.py")),
               "--address", head.address, "--trials", str(args.trials),
               "--epochs", str(args.epochs), "--subset", str(args.subset),
               *(["--checkpoint"] if checkpoint else [])]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    finally:
        head.stop()
    return json.loads(out.strip().splitlines()[-1])


def by_hundred(ends: list[float], start: float = 0.0) -> list[float]:
    """Seconds per trial for each hundred trials in the order they ended."""
    ends, out, prev = sorted(ends), [], start
    for i in range(99, len(ends), 100):
        out.append(round((ends[i] - prev) / 100, 3))
        prev = ends[i]
    return out


def per_trial_kb(curve: list[dict]) -> float | None:
    """The driver's growth per trial from the first sample with a trial done to the
    last one (after the report), in KB."""
    rows = [r for r in curve if r["trials_done"] and r.get("driver_rss_mb") is not None]
    if len(rows) < 2 or rows[-1]["trials_done"] == rows[0]["trials_done"]:
        return None
    return round(1024 * (rows[-1]["driver_rss_mb"] - rows[0]["driver_rss_mb"])
                 / (rows[-1]["trials_done"] - rows[0]["trials_done"]), 1)


def growth(curve: list[dict], key: str) -> float | None:
    """The last sample minus the first, in MB."""
    vals = [row[key] for row in curve if row.get(key) is not None]
    return round(vals[-1] - vals[0], 1) if len(vals) > 1 else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=1024, help="training images per trial (of 1437)")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.trials, args.every = 12, 1.0

    trace = Path(tempfile.mkdtemp()) / "trace.jsonl"
    os.environ["RAYTUNE_CTR_TRACE"] = str(trace)  # the head's processes inherit it
    peers = {"plain_tune": plain(args, False), "plain_tune_checkpoints": plain(args, True)}
    with on_head(args) as (s, where, head):
        memory = Memory(where.local / "trials.parquet", args.every)
        memory.start()
        t0, start = time.perf_counter(), time.time()
        df = sweep_lib.run(s, where, address=head.address).trials
        wall = time.perf_counter() - t0
        memory.stop.set()
        memory.join()
        memory.sample()

        import ray

        cpus = ray.cluster_resources().get("CPU", 1.0)
        ray.shutdown()  # the driver's own connection: not a leak of the sweep's
        left = settled(head.api)

    status = df.groupby("trial_index")["status"].first()
    last = df.sort_values("epoch").groupby("trial_index").tail(1).set_index("trial_index")
    busy = df.groupby("trial_index")[["epoch_time_s", "eval_time_s"]].sum().sum(axis=1)
    slots = last["num_workers"] * last["cpus_per_worker"]
    steps = phases(trace) if trace.is_file() else None
    fit = (steps or {}).get("steps", {}).get("tuner_fit -> tuner_done")
    fit_s = fit["total_s"] if fit else None
    result = {
        "trials_asked": args.trials, "trials_in_table": int(status.size),
        "lost": int(args.trials - status.size),
        "statuses": {k: int(v) for k, v in status.value_counts().items()},
        "two_worker_trials": int((last["num_workers"] == 2).sum()),
        "stopped_share": round(float((status == "STOPPED").mean()), 3),
        "leftovers": left,
        "wall_s": round(wall, 1), "cpus": cpus,
        "train_eval_s": round(float(busy.sum()), 1),
        "efficiency": round(float((busy * slots).sum()) / (wall * cpus), 3),
        "s_per_trial": round(wall / max(1, status.size), 3),
        "plain_tune": {k: {"wall_s": v["wall_s"], "trials": v["trials"],
                           "statuses": v["statuses"],
                           "s_per_trial": round(v["wall_s"] / max(1, v["trials"]), 3),
                           "s_per_trial_by_hundred": by_hundred(v["ended_s"]),
                           "driver_rss_mb": v["driver_rss_mb"]} for k, v in peers.items()},
        # the figure: raytune_ctr's seconds per trial over plain Tune's with
        # a checkpoint every epoch, on the same head
        "ratio_to_plain_tune_checkpoints": round(
            (wall / max(1, status.size)) / (peers["plain_tune_checkpoints"]["wall_s"]
                                            / max(1, peers["plain_tune_checkpoints"]["trials"])),
            2),
        # the same over Tune's run alone (tuner.fit), as the peer's wall is: without
        # raytune_ctr's start, tables and report
        "ratio_fit_only": round((fit_s / max(1, status.size)) / (
            peers["plain_tune_checkpoints"]["wall_s"]
            / max(1, peers["plain_tune_checkpoints"]["trials"])), 2) if fit_s else None,
        "s_per_trial_by_hundred": by_hundred(
            df.groupby("trial_index")["ended_at"].max().dropna().tolist(), start),
        # from the first trial's end, so that start-up's imports are not counted per
        # trial; to the end (the report included), and to the last sample before the
        # last trial ended (the sweep alone)
        "driver_rss_kb_per_trial": per_trial_kb(memory.curve),
        "driver_rss_kb_per_trial_sweep_only": per_trial_kb(
            [r for r in memory.curve if r["trials_done"] < status.size]),
        "trace": steps,
        "driver_rss_growth_mb": growth(memory.curve, "driver_rss_mb"),
        "raylet_rss_growth_mb": growth(memory.curve, "raylet_rss_mb"),
        "gcs_rss_growth_mb": growth(memory.curve, "gcs_rss_mb"),
        "memory_curve": memory.curve,
    }
    emit(result, args.out)
    ok = (result["lost"] == 0 and set(result["statuses"]) <= {"COMPLETED", "STOPPED"}
          and not any(left.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
