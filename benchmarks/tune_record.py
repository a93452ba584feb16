"""What Ray Tune keeps in the driver for each trial, by how many numeric metrics a
trial reports: the driver-memory side of the load benchmark.

For every numeric metric of every result, Tune's `_TrainingRunMetadata` keeps
running statistics (max, min, avg, last, last-5-avg, last-10-avg) and two deques;
once it has saved its experiment state it also keeps each trial's state as a cached
JSON string. This builds that metadata for T trials of E epochs each, reporting N
numeric metrics and a config of 4 knobs (which Tune flattens and counts too), and
measures it with tracemalloc. No Ray is started: only Tune's own class is used.

    python benchmarks/tune_record.py [--trials 500] [--epochs 2]
        [--metrics 2 5 15 29] [--out FILE] [--smoke]

Before packing.py, a load.py trial handed Tune 33 numeric values as Tune counts
them (29 metrics, Tune's own and the config's knobs); now about 13 (`epoch`,
`test_acc`, Tune's own and the config's). A plain Ray Tune script, a handful.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tracemalloc


def build(trials: int, epochs: int, metrics: int, cached_json: bool) -> list:
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils import flatten_dict

    kept = []
    for t in range(trials):
        meta = _TrainingRunMetadata()
        for epoch in range(1, epochs + 1):
            result = {f"metric_{i}": float(t + epoch + i) / 7 for i in range(metrics)}
            result |= {"config": {"lr": 1e-3 * (t + 1), "batch_size": 64, "num_workers": 1,
                                  "epochs": epochs},
                       "trial_id": f"{t:08x}", "hostname": "node", "date": "2026-12-07"}
            meta.last_result = result  # as Trial.update_last_result does
            for k, v in flatten_dict(dict(result)).items():
                if isinstance(v, (int, float)):
                    meta.update_metric(k, v, step=epoch)
        if cached_json:
            meta.get_json_state()  # what each experiment snapshot caches per trial
        kept.append(meta)
    return kept


def measure(trials: int, epochs: int, metrics: int, cached_json: bool) -> float:
    build(1, epochs, metrics, cached_json)  # Tune's imports, outside the trace
    gc.collect()
    tracemalloc.start()
    kept = build(trials, epochs, metrics, cached_json)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return round(size / trials / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--metrics", type=int, nargs="+", default=[2, 5, 15, 29])
    ap.add_argument("--out")
    ap.add_argument("--smoke", action="store_true", help="20 trials: that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.trials = 20
    import datetime

    import ray

    rows = []
    for n in args.metrics:
        row = {"numeric_metrics": n, "counted_by_tune": n + 4,
               "kb_per_trial": measure(args.trials, args.epochs, n, False),
               "kb_per_trial_with_cached_json": measure(args.trials, args.epochs, n, True)}
        rows.append(row)
        print(f"{n:3d} metrics (+4 config knobs): {row['kb_per_trial']:6.1f} KB a trial, "
              f"{row['kb_per_trial_with_cached_json']:6.1f} KB with Tune's cached JSON state")
    out = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "ray": ray.__version__, "trials": args.trials, "epochs": args.epochs, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
