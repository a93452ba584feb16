"""Where a trial's fixed cost goes: phases, processes and CPU-seconds, sweep efficiency.

Runs K identical trials one after another (a grid over seeds, one at a time) for
each world size asked for, then optionally the quickstart study, all on a local
Ray. For each sweep it records:
  - per trial, from a Tune callback in the driver: the time from the previous
    trial's end (or Tune's start) to this trial's end, minus its training and
    evaluation passes = the trial's **fixed cost**; split into before the trial
    runs (scheduling, process start) and inside it (set-up, reports, teardown);
  - the phases inside trial and worker processes, from the `RAYTUNE_CTR_TRACE`
    stamps (`raytune_ctr/trace.py`), when the code under test has them;
  - every process started during the sweep (sampled from /proc every 0.1 s):
    its title and CPU-seconds, and the machine's whole CPU-seconds (/proc/stat);
  - the Ray actors it left behind or ended, by class, from the state API;
  - **sweep efficiency**: the trials' training + evaluation seconds, each times
    the CPUs it trained on, over wall time x the cluster's CPUs: over Tune's run
    (`tune_efficiency`) and over the whole sweep call, which adds the worker
    pools' start, the FLOP count and the tables (`efficiency`).

    python benchmarks/trial_overhead.py [--trials 4] [--epochs 2] [--workers 1 2]
        [--quickstart] [--own-code] [--script] [--out FILE] [--smoke]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


class ProcessSampler(threading.Thread):
    """Every process that appears while running: title, first/last seen, CPU-seconds."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval, self.stop, self.seen = interval, threading.Event(), {}
        self.before = {int(p) for p in os.listdir("/proc") if p.isdigit()}

    def run(self):
        while not self.stop.wait(self.interval):
            now = time.time()
            for p in os.listdir("/proc"):
                if not p.isdigit() or int(p) in self.before:
                    continue
                try:
                    fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                    title = Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ").strip()
                except OSError:
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / TICK
                rec = self.seen.setdefault(int(p), {"title": title, "first": now, "cpu_s": 0.0})
                rec.update(last=now, cpu_s=max(rec["cpu_s"], cpu))
                if title:  # a process renames itself once its actor class is known
                    rec["title"] = title

    def summary(self) -> dict:
        by = collections.defaultdict(lambda: {"count": 0, "cpu_s": 0.0})
        for rec in self.seen.values():
            name = _title(rec["title"])
            by[name]["count"] += 1
            by[name]["cpu_s"] += rec["cpu_s"]
        rows = sorted(by.items(), key=lambda kv: -kv[1]["cpu_s"])
        return {"processes": len(self.seen),
                "cpu_s_sampled": round(sum(r["cpu_s"] for r in self.seen.values()), 2),
                "by_title": {k: {"count": v["count"], "cpu_s": round(v["cpu_s"], 2)}
                             for k, v in rows}}


def _title(cmdline: str) -> str:
    if cmdline.startswith("ray::"):
        return cmdline.split()[0]
    parts = cmdline.split()
    for p in parts:
        if p.endswith(".py"):
            return Path(p).name
    return Path(parts[0]).name if parts else "?"


def _stamps_callback():
    from ray import tune

    class Stamps(tune.Callback):
        def __init__(self):
            self.start, self.end, self.t0 = {}, {}, time.time()
            self.tune_start = self.tune_end = None

        def setup(self, **info):
            self.tune_start = time.time()

        def on_experiment_end(self, trials, **info):
            self.tune_end = time.time()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start.setdefault(trial.trial_id, time.time())

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time()

        on_trial_error = on_trial_complete

    return Stamps()


def with_callback(cb):
    """Add `cb` to every Tuner this process builds (works on any raytune_ctr version)."""
    from ray import tune

    init = tune.Tuner.__init__

    def patched(self, *a, run_config=None, **kw):
        if run_config is not None:
            run_config.callbacks = [*(run_config.callbacks or []), cb]
        init(self, *a, run_config=run_config, **kw)

    tune.Tuner.__init__ = patched


def trace_phases(path: Path, t0: float) -> dict:
    """Mean seconds between consecutive stamps of one trial, by phase pair."""
    if not path.is_file():
        return {}
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    events = [e for e in events if e["t"] >= t0]
    by_trial = collections.defaultdict(list)
    for e in events:
        by_trial[(e.get("trial"), e["pid"])].append(e)
    steps = collections.defaultdict(list)
    for evs in by_trial.values():
        evs.sort(key=lambda e: e["t"])
        for a, b in zip(evs, evs[1:], strict=False):
            steps[f"{a['phase']} -> {b['phase']}"].append(b["t"] - a["t"])
    return {k: {"n": len(v), "mean_s": round(statistics.mean(v), 4), "max_s": round(max(v), 4)}
            for k, v in sorted(steps.items())}


def actors_by_class() -> dict:
    """Actors this Ray has seen, by class: how many, and how many are still alive."""
    import ray
    from ray.util.state import list_actors

    out = collections.defaultdict(lambda: {"count": 0, "alive": 0})
    # This sweep's Ray, by address: another on the machine would make "auto" ambiguous.
    here = ray.get_runtime_context().gcs_address
    for a in list_actors(address=here, limit=10_000, raise_on_missing_output=False):
        out[a.class_name]["count"] += 1
        out[a.class_name]["alive"] += a.state == "ALIVE"
    return dict(out)


def measure(spec_map: dict, trace: Path) -> dict:
    from _common import cpu_seconds, sweep

    stamps = _stamps_callback()
    with_callback(stamps)
    sampler = ProcessSampler()
    cpu0, t0, me0 = cpu_seconds()[0], time.time(), sum(os.times()[:2])
    stamps.t0 = t0
    sampler.start()
    df, wall = sweep(spec_map)
    sampler.stop.set()
    sampler.join()
    cpu = cpu_seconds()[0] - cpu0
    driver_cpu = sum(os.times()[:2]) - me0

    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    last = df.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")
    # A script's epoch (line to line) holds its evaluation; our loop times it apart.
    timed = [c for c in ("epoch_time_s", "eval_time_s") if c in df]
    busy = df.groupby("trial_id")[timed].sum().sum(axis=1)
    slots = last["num_workers"] * last["cpus_per_worker"]  # the CPUs each trial trained on
    setup = df.groupby("trial_id")["setup_time_s"].max()  # a script's: on its first epoch
    trials, prev = [], stamps.tune_start or t0
    for tid in sorted(stamps.end, key=stamps.end.get):
        end, start = stamps.end[tid], stamps.start.get(tid, stamps.end[tid])
        trials.append({
            "trial_id": tid, "workers": int(last.loc[tid, "num_workers"]),
            "train_eval_s": round(float(busy[tid]), 3),
            "setup_s": round(float(setup[tid]), 3),
            "before_start_s": round(start - prev, 3),
            "inside_s": round(end - start - float(busy[tid]), 3),
            "fixed_cost_s": round(end - prev - float(busy[tid]), 3),
        })
        prev = end
    fixed = [t["fixed_cost_s"] for t in trials]
    return {
        "name": spec_map["name"], "trials": len(trials), "wall_s": round(wall, 2),
        "train_eval_s": round(float(busy.sum()), 2),
        "efficiency": round(float((busy * slots).sum()) / (wall * cpus), 3),
        "tune_wall_s": round(stamps.tune_end - stamps.tune_start, 2),
        # before and after Tune's run: coordinator, FLOP count, pools' start, tables
        "outside_tune_s": round(wall - (stamps.tune_end - stamps.tune_start), 2),
        "tune_efficiency": round(float((busy * slots).sum())
                                 / ((stamps.tune_end - stamps.tune_start) * cpus), 3),
        "fixed_cost_first_s": fixed[0] if fixed else None,
        "fixed_cost_rest_mean_s": round(statistics.mean(fixed[1:]), 3) if len(fixed) > 1 else None,
        "fixed_cost_mean_s": round(statistics.mean(fixed), 3) if fixed else None,
        "machine_cpu_s": round(cpu, 2), "driver_cpu_s": round(driver_cpu, 2),
        "per_trial": trials,
        "phases": trace_phases(trace, t0),
        "processes": sampler.summary(),
        "actors": actors_by_class(),
    }


def script_series(name: str, workers: int, trials: int, epochs: int) -> dict:
    """The same K trials as a tier-3 script: the example main.py (its own small conv
    net on digits), run as a process per trial, torchrun for 2 workers."""
    return {
        "name": name, "code": str(ROOT / "experiments" / "own_code" / "mnist_script"),
        "script": {"command": "python main.py --batch-size {batch_size} --lr {lr} --epochs "
                              "{epochs} --seed {seed} --log-interval 1000",
                   "metrics": {"test_acc": r"Accuracy: (?P<correct>\d+)/(?P<total>\d+)"}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 1.0},
        "resources": {"num_workers": workers, "cpus_per_worker": 1.0},
        "search": {"method": "grid", "grid": {"seed": list(range(trials))},
                   "max_concurrent": 1},
    }


def series(name: str, workers: int, trials: int, epochs: int, data_dir: str,
           own_code: bool = False) -> dict:
    """K identical trials (seeds differ), one at a time: only fixed costs differ.
    `own_code`: the same net and data through their tier-1 twins (import paths)."""
    own = {"code": str(ROOT / "benchmarks" / "own_code")} if own_code else {}
    return {
        "name": name, **own,
        "data": {"dataset": "twins:digits" if own_code else "digits", "data_dir": data_dir},
        "train": {"model": "twins:mnist_cnn" if own_code else "mnist_cnn", "epochs": epochs,
                  "batch_size": 64, "optimizer": "adadelta", "lr": 1.0},
        "resources": {"num_workers": workers, "cpus_per_worker": 1.0},
        "search": {"method": "grid", "grid": {"seed": list(range(trials))},
                   "max_concurrent": 1},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--quickstart", action="store_true",
                   help="also measure experiments/configs/quickstart.yaml")
    p.add_argument("--config", action="append", default=[],
                   help="also measure this study file (repeatable)")
    p.add_argument("--own-code", action="store_true",
                   help="after each built-in series, the same through import paths (tier 1)")
    p.add_argument("--script", action="store_true",
                   help="also each series as a tier-3 script (experiments/own_code/mnist_script)")
    p.add_argument("--smoke", action="store_true", help="2 trials of 1 epoch, 1 worker")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if args.smoke:  # the own-code series too, so the smoke covers its path
        args.trials, args.epochs, args.workers, args.own_code, args.script = 2, 1, [1], True, True
    if args.own_code:  # one local Ray serves every series: its workers need the folder
        from raytune_ctr import usercode

        usercode.local_env(str(ROOT / "benchmarks" / "own_code"))

    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    trace = tmp / "trace.jsonl"
    os.environ["RAYTUNE_CTR_TRACE"] = str(trace)  # before Ray starts: its workers inherit it
    results = []
    for n in args.workers:
        results.append(measure(series(f"overhead-{n}w", n, args.trials, args.epochs,
                                      str(tmp / "data")), trace))
        if args.own_code:
            results.append(measure(series(f"overhead-own-{n}w", n, args.trials, args.epochs,
                                          str(tmp / "data"), own_code=True), trace))
        if args.script:
            results.append(measure(script_series(f"overhead-script-{n}w", n, args.trials,
                                                 args.epochs), trace))
    configs = [*(["experiments/configs/quickstart.yaml"] if args.quickstart else []), *args.config]
    for path in configs:
        import yaml

        spec_map = yaml.safe_load((ROOT / path).read_text())
        spec_map["data"] = {**spec_map.get("data", {}), "data_dir": str(tmp / "data")}
        results.append(measure(spec_map, trace))

    from _common import emit

    emit({"machine_cpus": os.cpu_count(), "sweeps": results}, args.out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
