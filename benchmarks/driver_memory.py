"""Where the driver's memory goes: load.py's sweep (tiny trials, a fifth with 2 DDP
workers, ASHA) on a Ray head of its own, with Python's allocations traced
(`tracemalloc`) beside the resident memory (RSS), in three windows:

- the sweep, from the first tenth of the trials done to nine tenths: per trial;
- the end of the sweep: the last tenth, Tune's end of `fit` (its ResultGrid reads
  every trial's result file) and the tables;
- the report (`writeup.build`), in the driver as the CLI builds it.

In each, the Python heap's growth is given by owner: "imports" for what an import
allocated (modules, their tables), else the package of the innermost frame in
raytune_ctr, Ray or Optuna (the code that chose to keep it, through pandas or not),
else pandas', pyarrow's or "other". The RSS is net of tracemalloc's own bookkeeping;
what it grew beyond the heap is memory no Python frame holds: Ray's core, arrow's
pool, pages freed but kept by the allocator.

    python benchmarks/driver_memory.py [--trials 1000] [--out FILE]
    python benchmarks/driver_memory.py --smoke   # 12 trials

Tracing slows the driver; its wall times mean nothing here (load.py has them).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from _common import SMOKE, emit
from load import _rss_mb, on_head, trials_done

from raytune_ctr import sweep as sweep_lib
from raytune_ctr import writeup

DECIDERS = (("raytune_ctr", f"{os.sep}raytune_ctr{os.sep}"), ("ray", f"{os.sep}ray{os.sep}"),
            ("optuna", f"{os.sep}optuna{os.sep}"))
HELPERS = (("pandas", f"{os.sep}pandas{os.sep}"), ("pyarrow", f"{os.sep}pyarrow{os.sep}"))
DEPTH = 12  # frames kept per allocation: past pandas' own; more slows the driver


def owner(tb: tracemalloc.Traceback) -> tuple[str, str]:
    """(owner, its innermost frame as file:line) of one allocation's traceback."""
    frames = list(reversed(tb))  # tracemalloc lists the oldest call first
    if any(f.filename.startswith("<frozen importlib") for f in frames):
        f = next((f for f in frames if not f.filename.startswith("<")
                  and f"{os.sep}importlib{os.sep}" not in f.filename), frames[0])
        return "imports", f"{f.filename.rsplit('site-packages' + os.sep, 1)[-1]}:{f.lineno}"
    for group in (DECIDERS, HELPERS):
        for f in frames:
            for name, part in group:
                if part in f.filename:
                    return name, f"{f.filename.rsplit(part, 1)[1]}:{f.lineno}"
    f = frames[0]
    return "other", f"{Path(f.filename).name}:{f.lineno}"


class Point:
    """The RSS, net of tracemalloc's bookkeeping, and the heap by (owner, place); the
    snapshot itself is not kept, or it would swell the RSS of every later point."""

    def __init__(self, name: str, trials: int):
        self.name, self.trials = name, trials
        self.rss_mb = (_rss_mb(os.getpid()) or float("nan")) - tracemalloc.get_tracemalloc_memory() / 2**20
        self.heap: collections.Counter = collections.Counter()
        # Not this script's own allocations (the watcher, these counters).
        ours = [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__)]
        for stat in tracemalloc.take_snapshot().filter_traces(ours).statistics("traceback"):
            self.heap[owner(stat.traceback)] += stat.size


def window(a: Point, b: Point, top: int) -> dict:
    """The heap's and the RSS's growth from a to b, by owner and by place."""
    by_place = collections.Counter(b.heap)
    by_place.subtract(a.heap)
    by_owner: collections.Counter = collections.Counter()
    for (who, _), size in by_place.items():
        by_owner[who] += size
    heap = sum(by_owner.values())
    n = b.trials - a.trials
    mb = 1024 * 1024
    out = {"from": a.name, "to": b.name, "trials": n,
           "rss_growth_mb": round(b.rss_mb - a.rss_mb, 1),
           "heap_growth_mb": round(heap / mb, 1),
           "heap_by_owner_mb": {k: round(v / mb, 2) for k, v in by_owner.most_common()},
           "heap_top": [{"owner": k[0], "at": k[1], "mb": round(v / mb, 2)}
                        for k, v in by_place.most_common(top)]}
    if n > 0:
        out |= {"rss_kb_per_trial": round((b.rss_mb - a.rss_mb) * 1024 / n, 1),
                "heap_kb_per_trial": round(heap / 1024 / n, 1)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=1024)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--top", type=int, default=12, help="places listed per window")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.trials = 12
    marks = sorted({max(1, args.trials // 10), max(2, args.trials * 9 // 10)})
    points: dict[str, Point] = {}
    build = writeup.build

    def traced_build(run_dir):  # the report's window: the sweep calls writeup.build
        points["report_start"] = Point("report_start", args.trials)
        path = build(run_dir)
        points["report_end"] = Point("report_end", args.trials)
        return path

    writeup.build = traced_build
    with on_head(args) as (s, where, head):
        tracemalloc.start(DEPTH)
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(
            where.local / "trials.parquet", marks, points, done), daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        df = sweep_lib.run(s, where, address=head.address).trials
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
        tracemalloc.stop()
        import ray

        ray.shutdown()
    n = int(df["trial_index"].nunique())
    got = [points[k] for k in (f"trials_{m}" for m in marks) if k in points]
    windows = []
    if len(got) == 2:
        windows.append(window(got[0], got[1], args.top))
        windows.append(window(got[1], points["report_start"], args.top))
    windows.append(window(points["report_start"], points["report_end"], args.top))
    emit({"trials": n, "traced_wall_s": round(wall, 1),
          "rss_mb": {k: round(v.rss_mb, 1) for k, v in points.items()},
          "windows": windows}, args.out)
    return 0 if n == args.trials and len(got) == 2 else 1


def _watch(table: Path, marks: list[int], points: dict, done: threading.Event) -> None:
    """A snapshot the first time the trials table holds each count in `marks`."""
    left = list(marks)
    while left and not done.wait(0.5):
        n = trials_done(table)
        while left and n is not None and n >= left[0]:
            points[f"trials_{left[0]}"] = Point(f"trials_{left[0]}", n)
            left.pop(0)


if __name__ == "__main__":
    sys.exit(main())
