"""What the Optuna record of a sweep costs the driver, by storage: SQLite (Optuna's
RDBStorage, what results folders held before 2026-12-07) against Optuna's journal
file (what they hold now, `results.Results.optuna_storage`).

A grid or random sweep's record is written at its end, one `add_trial` a trial
(`results.record_optuna_study`); an Optuna sweep's searcher writes to it at every ask
and tell. Each storage runs in a fresh process, so its first use pays its imports
(SQLAlchemy and Alembic for SQLite) as a sweep's does.

    python benchmarks/optuna_record.py [--trials 200 1000] [--out FILE] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from _common import SMOKE, emit

ONE = """
import json, random, sys, time
t0 = time.perf_counter()
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
kind, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
imported = time.perf_counter()
if kind == "sqlite":
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/optuna.db")
else:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(f"{folder}/optuna.journal"))
study = optuna.create_study(storage=storage, study_name="s", directions=["maximize"])
created = time.perf_counter()
dists = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
         "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128]),
         "num_workers": optuna.distributions.CategoricalDistribution([1, 2])}
rng = random.Random(0)
for _ in range(n):
    study.add_trial(optuna.trial.create_trial(
        params={"lr": rng.uniform(1e-3, 0.3), "batch_size": rng.choice([32, 64, 128]),
                "num_workers": rng.choice([1, 2])},
        distributions=dists, values=[rng.uniform(50, 99)],
        user_attrs={"status": "COMPLETED", "error": ""}))
done = time.perf_counter()
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(json.dumps({"create_s": round(created - imported, 3),
                  "ms_per_trial": round(1000 * (done - created) / n, 2),
                  "total_s": round(done - t0, 2), "rss_mb": round(rss / 1024, 1),
                  "sqlalchemy_imported": "sqlalchemy" in sys.modules}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.smoke:
        args.trials = [20]
    rows = []
    for n in args.trials:
        for kind in ("sqlite", "journal"):
            with tempfile.TemporaryDirectory() as d:
                out = subprocess.run([sys.executable, "-c", ONE, kind, d, str(n)], check=True,
                                     capture_output=True, text=True).stdout
            rows.append({"storage": kind, "trials": n} | json.loads(out.splitlines()[-1]))
    emit({"when": time.strftime("%H:%M"), "runs": rows}, args.out)


if __name__ == "__main__":
    main()
