"""Target mode against grid, random, ASHA and NSGA-II, by replay of a real study.

The table (benchmarks/target/table.csv) is S1's net on digits, the whole grid (5 batch
sizes x 4 learning rates x 1 or 2 workers) x 3 seeds, every epoch's test accuracy and
train seconds, measured once by a sweep (benchmarks/target/table.yaml). Each replay
runs a method on it as a sweep would, with the same concurrency for all: a trial of a
configuration is one of its seeds' curves, each of a configuration's runs a different
seed while there are any. The truth is the configuration with the lowest median time
to target over its 3 seeds (a miss is infinite).

Target mode here is the sweep's own code: searchers.GoalOptunaSearch (constrained
TPE, the fast corners first, the finalist race) and searchers.CappingStopper. ASHA
is Ray's AsyncHyperBandScheduler, by train seconds; NSGA-II is the sweep's sampler on
(accuracy, train seconds). A method's answer at any moment is the configuration with
the lowest median time to target over its runs so far: a run stopped by capping is a
miss (as target mode counts it), one stopped by ASHA tells nothing.

For each method: the trial-seconds until its final answer appeared, how often that
answer is within 5% of the truth's time, how often a cap stopped a trial that would
have won, and the trial-seconds each needs to be within 5% in 90% of replays.

    python benchmarks/target.py [--reps 50] [--out FILE]
    python benchmarks/target.py --build RESULTS_FOLDER   # the table from a sweep
    python benchmarks/target.py --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import types
from pathlib import Path

import pandas as pd
from _common import SMOKE, emit

from raytune_ctr import target
from raytune_ctr.spec import FinalistSpec

HERE = Path(__file__).resolve().parent / "target"
TABLE = HERE / "table.csv"
KNOBS = ["batch_size", "lr", "num_workers"]
RULE = target.Rule("test_acc", 95.0)  # the quickstart's target; margin and confirm: the spec's
CONCURRENCY = 2
WITHIN = 0.05  # an answer within 5% of the truth's time is a success
RATES = (0.5, 0.8, 0.85, 0.9)  # shares of replays within 5%, for the trial-seconds each needs


def build(results: Path) -> None:
    df = pd.read_parquet(results / "trials.parquet")
    cols = [*KNOBS, "seed", "epoch", "test_acc", "train_time_s"]
    df[cols].sort_values(cols[:5]).to_csv(TABLE, index=False, float_format="%.6g")
    print(f"{TABLE}: {df['trial_index'].nunique()} trials, {len(df)} epochs")


def load() -> dict[tuple, list[list[tuple[float, float]]]]:
    """configuration -> its seeds' curves [(train seconds, test accuracy) per epoch]."""
    df = pd.read_csv(TABLE)
    out: dict[tuple, list] = {}
    for k, g in df.groupby(KNOBS, sort=True):
        out[tuple(zip(KNOBS, (getattr(x, "item", lambda x=x: x)() for x in k), strict=True))] = [
            list(zip(s["train_time_s"], s["test_acc"], strict=True))
            for _, s in g.sort_values("epoch").groupby("seed")]
    return out


def times_of(curve) -> float:
    t = target.crossing(curve, RULE)
    return math.inf if t is None else t


class Replay:
    """One method over the table: trials at `CONCURRENCY` at once, each advancing on
    its own clock; decisions at epoch ends, as Tune makes them."""

    def __init__(self, curves: dict, rng: random.Random) -> None:
        self.curves, self.rng = curves, rng
        self.order = {k: rng.sample(range(len(v)), len(v)) for k, v in curves.items()}
        self.runs: dict[tuple, int] = {}
        self.seen: dict[tuple, list[float]] = {}  # config -> time per told run (inf: miss)
        self.spent = 0.0
        self.timeline: list[tuple[float, tuple | None]] = []
        self.caps: list[tuple[tuple, float, float]] = []  # (config, its own time, cap)

    def curve(self, key: tuple) -> list:
        n = self.runs.get(key, 0)
        self.runs[key] = n + 1
        seeds = self.order[key]
        return self.curves[key][seeds[n] if n < len(seeds) else self.rng.choice(seeds)]

    def tell(self, key: tuple, time: float | None) -> None:
        """A run ended: its time to target, inf for a miss, None when it tells nothing."""
        if time is not None:
            self.seen.setdefault(key, []).append(time)
        order = target.ranking(self.seen)
        best = order[0] if order and math.isfinite(target.median(self.seen[order[0]])) else None
        if not self.timeline or self.timeline[-1][1] != best:
            self.timeline.append((self.spent, best))

    def run(self, method) -> None:
        live: dict[str, list] = {}  # trial -> [config, curve, epochs done, clock left]
        n = 0
        while True:
            while len(live) < CONCURRENCY:
                got = method.ask(f"t{n}")
                if got is None:
                    break
                key = got
                c = self.curve(key)
                live[f"t{n}"] = [key, c, 0, c[0][0]]
                n += 1
            if not live:
                return
            tid = min(live, key=lambda t: live[t][3])
            step = live[tid][3]
            for x in live.values():
                x[3] -= step
            key, c, done, _ = live[tid]
            self.spent += c[done][0] - (c[done - 1][0] if done else 0.0)
            done += 1
            live[tid][2] = done
            stop = method.epoch(tid, key, c, done)
            if stop or done == len(c):
                del live[tid]
                self.tell(key, method.end(tid, key, c, done, stop))
            else:
                live[tid][3] = c[done][0] - c[done - 1][0]


class Fixed:
    """Grid (every configuration once, in a random order) or random (with replacement):
    full runs."""

    def __init__(self, keys: list, n: int | None, rng: random.Random) -> None:
        self.queue = rng.sample(keys, len(keys)) if n is None else \
            [rng.choice(keys) for _ in range(n)]

    def ask(self, tid):
        return self.queue.pop(0) if self.queue else None

    def epoch(self, tid, key, c, done) -> bool:
        return False

    def end(self, tid, key, c, done, stop):
        return times_of(c)


class Asha(Fixed):
    """Random configurations under Ray's ASHA on test accuracy by train seconds."""

    def __init__(self, keys, n, rng, max_t: float) -> None:
        super().__init__(keys, n, rng)
        from ray.tune.schedulers import ASHAScheduler

        self.asha = ASHAScheduler(time_attr="train_time_s", metric="test_acc", mode="max",
                                  max_t=max_t, grace_period=max_t / 16, reduction_factor=2)
        self.trials: dict[str, types.SimpleNamespace] = {}

    def ask(self, tid):
        key = super().ask(tid)
        if key is not None:
            self.trials[tid] = types.SimpleNamespace(trial_id=tid)
            self.asha.on_trial_add(None, self.trials[tid])
        return key

    def epoch(self, tid, key, c, done) -> bool:
        clock, acc = c[done - 1]
        return self.asha.on_trial_result(None, self.trials[tid],
                                         {"train_time_s": clock, "test_acc": acc}) == "STOP"

    def end(self, tid, key, c, done, stop):
        t = target.crossing(c[:done], RULE)
        return t if t is not None else (None if stop else math.inf)


class Nsga(Fixed):
    """NSGA-II on (test accuracy, train seconds), as the sweep asks it: full runs."""

    def __init__(self, keys, n, rng) -> None:
        import optuna

        from raytune_ctr import samplers

        self.left = n
        self.values = {k: sorted({dict(key)[k] for key in keys}) for k in KNOBS}
        self.study = optuna.create_study(directions=["maximize", "minimize"],
                                         sampler=samplers.for_objectives(2, rng.randrange(1 << 30)))
        self.asked: dict[str, optuna.trial.Trial] = {}

    def ask(self, tid):
        if self.left == 0:
            return None
        self.left -= 1
        t = self.study.ask()
        self.asked[tid] = t
        return tuple((k, t.suggest_categorical(k, self.values[k])) for k in KNOBS)

    def end(self, tid, key, c, done, stop):
        self.study.tell(self.asked.pop(tid), [c[-1][1], c[-1][0]])
        return times_of(c)


class Goal:
    """Target mode: the sweep's searcher and stopper, fed as Tune feeds them."""

    rule = RULE

    def __init__(self, keys, n, rng, replay: Replay) -> None:
        import optuna
        from ray import tune

        from raytune_ctr import searchers

        values = {k: sorted({dict(key)[k] for key in keys}) for k in KNOBS}
        fast = [{"batch_size": max(values["batch_size"]), "lr": values["lr"][len(values["lr"]) // 2],
                 "num_workers": w} for w in (min(values["num_workers"]),
                                              max(values["num_workers"]))]
        self.search = searchers.GoalOptunaSearch(
            self.rule, n, FinalistSpec(), seed=1, folder=None, points_to_evaluate=fast,
            sampler=optuna.samplers.TPESampler(seed=rng.randrange(1 << 30)))
        self.search.set_search_properties(None, None, {k: tune.choice(v) for k, v in values.items()})
        self.stopper = searchers.CappingStopper(self.rule, None, 12, None)
        self.replay = replay

    def ask(self, tid):
        config = self.search.suggest(tid)
        if not isinstance(config, dict):
            return None  # waiting for the race's round, or finished
        return tuple((k, config[k]) for k in KNOBS)

    def epoch(self, tid, key, c, done) -> bool:
        clock, acc = c[done - 1]
        result = {"test_acc": acc, "train_time_s": clock, "epoch": done,
                  "training_iteration": done, "config": dict(key)}
        stop = self.stopper(tid, result)
        if stop and target.crossing(c[:done], RULE) is None:  # capped
            self.replay.caps.append((key, times_of(c), self.stopper.capping.cap() or math.inf))
        if not stop:  # Tune tells the searcher the results its stopper let through
            self.search.on_trial_result(tid, result)
        self._last = result
        return stop

    def end(self, tid, key, c, done, stop):
        self.search.on_trial_complete(tid, self._last)
        t = target.crossing(c[:done], RULE)
        return t if t is not None else math.inf  # a capped run is a miss, as the report says


def replay(method: str, curves: dict, seed: int, n: int, max_t: float) -> Replay:
    rng = random.Random(seed)
    r = Replay(curves, rng)
    keys = sorted(curves)
    if method == "grid":
        m = Fixed(keys, None, rng)
    elif method == "random":
        m = Fixed(keys, n, rng)
    elif method == "asha":
        m = Asha(keys, n, rng, max_t)
    elif method == "nsga2":
        m = Nsga(keys, n, rng)
    else:
        m = Goal(keys, n, rng, r)
    r.run(m)
    return r


def answer_at(r: Replay, budget: float) -> tuple | None:
    best = None
    for spent, key in r.timeline:
        if spent > budget:
            break
        best = key
    return best


def summary(runs: list[Replay], true: dict, truth: float, budgets: list[float]) -> dict:
    def ok(key) -> bool:
        return key is not None and true[key] <= truth * (1 + WITHIN)

    final = [r.timeline[-1] if r.timeline else (0.0, None) for r in runs]
    rate = {b: sum(ok(answer_at(r, b)) for r in runs) / len(runs) for b in budgets}

    def need(share: float) -> float:
        return next((round(b, 2) for b in budgets if rate[b] >= share), math.inf)

    wrong_caps = sum(own < cap for r in runs for _, own, cap in r.caps)
    best_capped = sum(ok(key) for r in runs for key, _, _ in r.caps)
    return {"replays": len(runs),
            "final_answer_within_5pct": round(sum(ok(k) for _, k in final) / len(runs), 3),
            "final_answer_is_truth": round(sum(k is not None and true[k] == truth
                                               for _, k in final) / len(runs), 3),
            "trial_s_until_final_answer_median": round(statistics.median(s for s, _ in final), 2),
            "trial_s_total_median": round(statistics.median(r.spent for r in runs), 2),
            "trials_median": statistics.median(sum(r.runs.values()) for r in runs),
            # the least trial-seconds after which this share of replays is within 5%
            "trial_s_for_share_within_5pct": {str(x): need(x) for x in RATES},
            "caps": sum(len(r.caps) for r in runs),
            "caps_of_a_run_that_would_have_beaten_the_cap": wrong_caps,
            "caps_of_a_run_of_a_right_answer": best_capped}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--trials", type=int, default=120,
                   help="random, ASHA and NSGA-II: trials per replay (grid: its 40)")
    p.add_argument("--explore", type=int, default=40,
                   help="target mode: Optuna's trials before the finalist race")
    p.add_argument("--margin", type=float, default=RULE.margin,
                   help=f"target mode: capping's margin m (default: the spec's, {RULE.margin})")
    p.add_argument("--build", type=Path, help="write the table from a sweep's results folder")
    p.add_argument("--methods", default="grid,random,asha,nsga2,target")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    if args.build:
        build(args.build)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.smoke:
        args.reps, args.trials, args.explore = 2, 12, 6
    Goal.rule = dataclasses.replace(RULE, margin=args.margin)
    curves = load()
    true = {k: target.median([times_of(c) for c in v]) for k, v in curves.items()}
    best = min(true, key=lambda k: true[k])
    max_t = max(c[-1][0] for v in curves.values() for c in v)
    out: dict = {"truth": dict(best), "truth_median_s": round(true[best], 4),
                 "configurations": len(curves),
                 "within_5pct": [dict(k) for k in true if true[k] <= true[best] * (1 + WITHIN)],
                 "concurrency": CONCURRENCY, "reps": args.reps, "margin": args.margin,
                 "explore": args.explore, "trials": args.trials, "methods": {}}
    runs = {m: [replay(m, curves, rep, args.explore if m == "target" else args.trials, max_t)
                for rep in range(args.reps)]
            for m in args.methods.split(",")}
    top = max(r.spent for rs in runs.values() for r in rs)
    budgets = [top * i / 400 for i in range(1, 401)]
    for m, rs in runs.items():
        out["methods"][m] = summary(rs, true, true[best], budgets)
    if {"asha", "target"} <= set(runs):
        # at each share of replays within 5%: target mode's trial-seconds over ASHA's
        out["target_over_asha"] = {
            x: round(g / a, 3) if math.isfinite(a) and math.isfinite(g) else
            ("ASHA never gets there" if math.isfinite(g) else "target mode never gets there")
            for x, g, a in ((str(x), *(out["methods"][m]["trial_s_for_share_within_5pct"][str(x)]
                                      for m in ("target", "asha"))) for x in RATES)}
    emit(out, args.out)


if __name__ == "__main__":
    main()
