"""Where the report's time and memory go: `writeup.build` on a results folder, in a
fresh process (so its imports count, as after a sweep), with the seconds and the
process's RSS around each step it takes.

    python benchmarks/report_steps.py FOLDER [--out FILE]
    python benchmarks/report_steps.py --trials 1000 [--out FILE]  # load.py's sweep first
    python benchmarks/report_steps.py --smoke

With --trials it first runs load.py's sweep of that many trials (about 100 s at 1,000
here) into a temporary folder, then measures the report of it.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The steps of writeup.build that cost time or memory, by module.
STEPS = {"results": ["load"],
         "writeup": ["label_trials", "time_table", "pareto_front", "by_epoch", "plot"],
         "effects": ["time_to_target", "importances", "effects", "optuna_study"],
         "page": ["timeline", "write"]}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(folder: str) -> dict:
    """In this (fresh) process: build the report of `folder`, each step timed."""
    start = _rss_mb()
    t0 = time.perf_counter()
    import pandas  # noqa: F401 - the driver has these before its report
    import ray  # noqa: F401

    base = _rss_mb()
    import importlib

    from raytune_ctr import writeup

    steps: dict[str, dict] = {}
    for mod_name, names in STEPS.items():
        mod = importlib.import_module(f"raytune_ctr.{mod_name}")
        for name in names:
            fn = getattr(mod, name)

            def timed(*a, _fn=fn, _key=f"{mod_name}.{name}", **k):
                before, t = _rss_mb(), time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    s = steps.setdefault(_key, {"calls": 0, "s": 0.0, "rss_growth_mb": 0.0})
                    s["calls"] += 1
                    s["s"] += time.perf_counter() - t
                    s["rss_growth_mb"] += _rss_mb() - before

            setattr(mod, name, functools.wraps(fn)(timed))
    imported = _rss_mb()
    t1 = time.perf_counter()
    writeup.build(Path(folder))
    done = time.perf_counter()
    return {"rss_mb": {"python": round(start, 1), "with_pandas_ray": round(base, 1),
                       "with_writeup": round(imported, 1), "after_report": round(_rss_mb(), 1)},
            "import_writeup_s": round(t1 - t0, 2), "build_s": round(done - t1, 2),
            # Nested steps (importances inside effects) count in both.
            "steps": {k: {"calls": v["calls"], "s": round(v["s"], 3),
                          "rss_growth_mb": round(v["rss_growth_mb"], 1)}
                      for k, v in sorted(steps.items(), key=lambda kv: -kv[1]["s"])}}


def make_folder(tmp: str, trials: int, epochs: int) -> str:
    """load.py's sweep of `trials` trials into `tmp`; the results folder's path."""
    import argparse as ap

    import load

    from raytune_ctr import checks
    from raytune_ctr import sweep as sweep_lib
    from raytune_ctr.results import Results

    s = checks.from_dict(load.spec(ap.Namespace(trials=trials, epochs=epochs, subset=1024)))
    where = Results(tmp, s.name)
    sweep_lib.prepare_data(s)
    sweep_lib.run(s, where)
    return str(where.local)


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:  # the fresh process: nothing imported before
        print(json.dumps(measure(sys.argv[2])))
        return
    from _common import SMOKE, emit

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", help="a sweep's results folder")
    p.add_argument("--trials", type=int, default=None, help="run load.py's sweep first")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.trials = 4
    if (args.folder is None) == (args.trials is None):
        p.error("give a results FOLDER or --trials N")
    with tempfile.TemporaryDirectory() as tmp:
        if args.trials:
            folder = make_folder(tmp, args.trials, 1 if args.smoke else 2)
        else:  # the folder's own files (tables, spec, commands) in a copy: its report stays
            folder = str(Path(tmp, Path(args.folder).name))
            Path(folder).mkdir()
            for f in Path(args.folder).iterdir():
                if f.is_file():
                    shutil.copy2(f, folder)
        out = subprocess.run([sys.executable, __file__, "--measure", folder], check=True,
                             capture_output=True, text=True).stdout
    emit({"folder": args.folder or f"load.py's sweep of {args.trials} trials"}
         | json.loads(out.strip().splitlines()[-1]), args.out)


if __name__ == "__main__":
    main()
