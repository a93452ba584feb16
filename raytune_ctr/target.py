"""Target mode (`search.goal`): the configuration that reaches a target in the least
time or money, found by racing trials to it instead of running each to the end.

A trial's *time to target* is its clock (train_time_s, wall_time_s or cost_usd) at
its first confirmed crossing of the target: an evaluation at or beyond the target,
confirmed by the next one also at or beyond it, or by itself when it is beyond the
target by `confirm` (a single lucky evaluation does not count). The time is the
first evaluation's: the second only shows that it was no fluke.

Adaptive capping (ParamILS, Hutter et al. 2009; irace's capping): once some trial
has reached the target in T, a trial below the target whose clock plus its fastest
epoch exceeds T x (1 + margin) cannot win by more than the margin, so it stops.
It is censored (slower than T, its own time unknown), not bad. A trial stops as
soon as its time is known. The rules live here, free of Ray, so that the replay
benchmark (benchmarks/target.py) runs exactly what a sweep runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raytune_ctr.metrics import LOWER

log = logging.getLogger(__name__)

LOG = "target.jsonl"  # the caps and crossings, one JSON line each, in the results folder


@dataclasses.dataclass(frozen=True)
class Rule:
    metric: str  # e.g. test_acc
    target: float  # reached at or beyond this
    clock: str = "train_time_s"
    margin: float = 0.3  # capping's m (spec.GoalSpec says why)
    confirm: float = 1.0  # one evaluation this far beyond the target confirms itself
    full_runs: bool = False  # a trial that reached the target trains on

    @property
    def higher(self) -> bool:
        return self.metric not in LOWER

    def beyond(self, value: float, by: float = 0.0) -> bool:
        """Whether `value` is at or beyond the target, by at least `by`."""
        if not math.isfinite(value):
            return False
        return value >= self.target + by if self.higher else value <= self.target - by

    def shortfall(self, value: float) -> float:
        """How far `value` stays from the target (0 at or beyond it)."""
        if not math.isfinite(value):
            return math.inf
        return max(0.0, self.target - value if self.higher else value - self.target)


def rule(spec) -> Rule:
    """The rule of a spec in target mode (`search.goal`)."""
    g = spec.search.goal
    (metric, value), = g.target.items()
    return Rule(metric, value, clock=g.minimize, margin=g.margin, confirm=g.confirm,
                full_runs=g.full_runs)


def crossing(curve: Sequence[tuple[float, float]], rule: Rule) -> float | None:
    """The clock at the first confirmed crossing of `curve`, a trial's evaluations in
    order as (clock, value); None if it has none (yet)."""
    for i, (clock, value) in enumerate(curve):
        if not rule.beyond(value):
            continue
        if rule.beyond(value, rule.confirm) or (i + 1 < len(curve) and rule.beyond(curve[i + 1][1])):
            return clock
    return None


def pending(curve: Sequence[tuple[float, float]], rule: Rule) -> float | None:
    """The clock of a last evaluation that crossed but waits for the next to confirm it."""
    if curve and crossing(curve, rule) is None and rule.beyond(curve[-1][1]):
        return curve[-1][0]
    return None


@dataclasses.dataclass
class _Trial:
    curve: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    fastest: float = math.inf  # its fastest epoch, on the clock
    time: float | None = None  # its time to target, once known
    done: bool = False


class Capping:
    """The stopping rules of target mode, fed one evaluation at a time by whoever runs
    the trials (Tune's driver through `CappingStopper`, or the replay benchmark).

    The incumbent is the configuration (`key`; default: the trial itself) with the
    lowest median time to target over its ended runs, a miss counting as infinite:
    once the finalist race reruns a configuration with more seeds, a lucky first run
    no longer sets the cap for everyone.

    `observe` says why a trial must stop now ("reached", "capped") or None;
    `exhausted` says when the budget is spent. `events` keeps every cap and crossing,
    with what each cap saved (the epochs the trial would still have run, at its mean
    epoch: an estimate).
    """

    def __init__(self, rule: Rule, budget: float | None = None) -> None:
        self.rule = rule
        self.budget = budget  # on the clock, summed over trials; None: no limit
        self.trials: dict[str, _Trial] = {}
        self.times: dict[Any, dict[str, float]] = {}  # key -> ended trial -> time (inf: miss)
        self.spent = 0.0
        self.incumbent: tuple[float, Any] | None = None  # (median time to target, key)
        self.events: list[dict] = []

    def cap(self) -> float | None:
        """The clock beyond which a trial below the target stops (None: none yet)."""
        if self.incumbent is None:
            return None
        return self.incumbent[0] * (1 + self.rule.margin)

    def _ended(self, key: Any, trial_id: str, time: float) -> None:
        self.times.setdefault(key, {})[trial_id] = time
        medians = [(median(list(v.values())), k) for k, v in self.times.items()]
        finite = [m for m in medians if math.isfinite(m[0])]
        self.incumbent = min(finite, key=lambda m: m[0]) if finite else None

    def observe(self, trial_id: str, clock: float, value: float, epoch: int = 0,
                epochs: int = 0, key: Any = None) -> str | None:
        key = trial_id if key is None else key
        t = self.trials.setdefault(trial_id, _Trial())
        if t.done:
            return None
        if t.curve and t.curve[-1] == (clock, value) and epoch == len(t.curve):
            return None  # its last result said again (a function trainable's end)
        if epoch > 0:  # a restarted trial says its epochs after the checkpoint again
            del t.curve[epoch - 1:]
        if not t.curve and epoch > 1:
            # First seen mid-run (a resumed sweep): one epoch's worth, at its mean.
            step = clock / epoch
        else:
            step = clock - (t.curve[-1][0] if t.curve else 0.0)
        self.spent += max(step, 0.0)  # a redone epoch was spent twice
        if step > 0:
            t.fastest = min(t.fastest, step)
        t.curve.append((clock, value))
        known = t.time
        t.time = crossing(t.curve, self.rule)
        if t.time is not None:
            if known is None:
                self._ended(key, trial_id, t.time)
                self._event("reached", trial_id, clock, value, epoch, epochs, time=t.time,
                            key=key)
            if not self.rule.full_runs:
                t.done = True
                return "reached"
            return None
        cap = self.cap()
        crossed = pending(t.curve, self.rule)  # confirmed by the next epoch, it may yet win
        if cap is not None and (crossed is None or crossed > cap) and clock + t.fastest > cap:
            t.done = True
            self._event("capped", trial_id, clock, value, epoch, epochs, cap=cap, key=key,
                        incumbent=_name(self.incumbent[1]) if self.incumbent else None)
            self._ended(key, trial_id, math.inf)
            return "capped"
        if epochs and epoch >= epochs:  # its last epoch, below the target: a miss
            t.done = True
            self._event("missed", trial_id, clock, value, epoch, epochs, key=key)
            self._ended(key, trial_id, math.inf)
        return None

    def replay(self, events: list[dict]) -> None:
        """Take back the crossings and caps of an earlier run of this sweep (its
        target.jsonl), so a resumed sweep caps against the incumbent it had."""
        for e in events:
            if e.get("event") not in ("reached", "capped", "missed") or "key" not in e:
                continue
            k = e["key"]
            k = tuple(tuple(p) for p in k) if isinstance(k, list) else k
            self.trials.setdefault(e["trial_id"], _Trial()).done = not self.rule.full_runs
            self._ended(k, e["trial_id"], e["time"] if e["event"] == "reached" else math.inf)

    def exhausted(self) -> bool:
        return self.budget is not None and self.spent >= self.budget

    def _event(self, kind: str, trial_id: str, clock: float, value: float, epoch: int,
               epochs: int, **more) -> None:
        left = max(epochs - epoch, 0)
        saved = left * clock / epoch if epoch > 0 and kind == "capped" else 0.0
        self.events.append({"event": kind, "trial_id": trial_id, "clock": clock,
                            "value": value, "epoch": epoch, "saved": saved} | more)
        if kind == "capped":
            log.info("capped %s at %s %.4g (%s %.4g, below %g): the incumbent %s reached it "
                     "in %.4g; its next epoch would end past %.4g", trial_id, self.rule.clock,
                     clock, self.rule.metric, value, self.rule.target, more.get("incumbent"),
                     self.incumbent[0] if self.incumbent else math.nan, more["cap"])


def _name(key: Any) -> str:
    """A configuration key (sorted (knob, value) pairs) or a trial id, as text."""
    return " ".join(f"{k}={v}" for k, v in key) if isinstance(key, tuple) else str(key)


def events(folder: Path) -> list[dict]:
    """The caps and crossings a sweep logged (none when it was not in target mode)."""
    path = folder / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- the finalist race ----------------------------------------------------------------


def median(times: Sequence[float]) -> float:
    """The median time to target over seeds; a miss is infinite, so a configuration
    that misses with half its seeds or more has none."""
    s = sorted(times)
    n = len(s)
    if n == 0:
        return math.inf
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def p_faster(a: Sequence[float], b: Sequence[float], n: int = 4000, seed: int = 0) -> float:
    """P(median of `a` < median of `b`) by bootstrap: each configuration's seeds are
    resampled with replacement; misses are infinite and ties count half."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    ma = np.median(xa[rng.integers(0, len(xa), (n, len(xa)))], axis=1)
    mb = np.median(xb[rng.integers(0, len(xb), (n, len(xb)))], axis=1)
    return float(np.mean(ma < mb) + 0.5 * np.mean(ma == mb))


def ranking(times: dict) -> list:
    """Configurations by median time to target, the fastest first; among those with no
    median (half their seeds or more missed), the larger share of seeds that reached
    it first, then the faster best time."""
    def order(k) -> tuple[float, float, float]:
        x = times[k]
        return median(x), -sum(map(math.isfinite, x)) / max(len(x), 1), min(x, default=math.inf)
    return sorted(times, key=order)


def finalists(times: dict, within: float) -> list:
    """The configurations whose median time is within `within` of the best median (one
    run each before the race: the trials within `within` of the best), fastest first."""
    med = {k: median(v) for k, v in times.items() if math.isfinite(median(v))}
    if not med:
        return []
    top = min(med.values())
    return sorted((k for k, t in med.items() if t <= top * (1 + within)), key=lambda k: med[k])


def decided(times: dict, confidence: float) -> tuple[bool, float | None]:
    """Whether the fastest configuration by median is faster than the runner-up with
    P >= `confidence` (and that P; None when there is no runner-up to beat)."""
    order = [k for k in ranking(times) if math.isfinite(median(times[k]))]
    if not order:
        return False, None
    rest = [k for k in ranking(times) if k != order[0]]
    if not rest:
        return True, None
    p = p_faster(times[order[0]], times[rest[0]])
    return p >= confidence, p


# --- the answer ---------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    headline: str  # one paragraph, markdown
    lines: list[str]  # the runners-up, the confidence, the compute
    table: Any  # a pandas DataFrame: one row per configuration


def _fmt(rule: Rule, x: float) -> str:
    if not math.isfinite(x):
        return "never"
    return f"${x:.4g}" if rule.clock == "cost_usd" else f"{x:.3g} s"


def answer(df, rule: Rule, confidence: float, log: list[dict]):
    """Target mode's answer from a sweep's epoch rows (`df`, labelled with `config`)
    and its log (`events`): the configuration with the lowest median time to target
    over its seeds, the runners-up with P(faster than it), and what the search spent."""
    import pandas as pd

    capped_ids = {e.get("trial_id") for e in log if e.get("event") == "capped"}
    trials = []
    for i, rows in df.sort_values("epoch").groupby("trial_index", sort=True):
        rows = rows[rows["epoch"].notna()]
        curve = [(float(c), float(v)) for c, v in zip(rows[rule.clock], rows[rule.metric],
                                                      strict=True) if pd.notna(c) and pd.notna(v)]
        first = rows.iloc[0] if len(rows) else df[df["trial_index"] == i].iloc[0]
        t = crossing(curve, rule)
        at = rows[rows[rule.clock] == t].iloc[0] if t is not None else None
        # A miss: capped, or every epoch run below the target. A trial cut short
        # otherwise (interrupted, the budget spent) is unfinished: no measurement.
        ran_all = len(rows) > 0 and rows["epoch"].max() >= first.get("epochs", math.inf)
        missed = first.get("trial_id") in capped_ids or ran_all
        trials.append({"trial": i, "config": first["config"], "status": first["status"],
                       "time": t if t is not None else math.inf if missed else math.nan,
                       "cost": at["cost_usd"] if at is not None and "cost_usd" in rows else None,
                       "spent": float(rows["train_time_s"].max()) if len(rows) else 0.0})
    t = pd.DataFrame(trials)
    ok = t[(t["status"] != "FAILED") & t["time"].notna()]
    times = {c: g["time"].tolist() for c, g in ok.groupby("config", sort=False)}
    unfinished = int(((t["status"] != "FAILED") & t["time"].isna()).sum())
    order = ranking(times)
    capped = [e for e in log if e.get("event") == "capped"]
    saved = sum(e.get("saved", 0.0) for e in capped)
    spent = (f"{t['spent'].sum():.4g} trial-seconds of training over {len(t)} trials"
             f" ({(t['status'] == 'FAILED').sum()} FAILED and {unfinished} unfinished, "
             "not counted as misses)")
    caps = (f"capping stopped {len(capped)} trials and saved about {saved:.4g} "
            f"{'USD' if rule.clock == 'cost_usd' else 'trial-seconds'} (their remaining "
            "epochs at their mean epoch)")
    op = "≥" if rule.higher else "≤"
    goal = f"{rule.metric} {op} {rule.target:g}"
    if not order or not math.isfinite(median(times[order[0]])):
        best = t[t["status"] != "FAILED"].merge(df[["trial_index", rule.metric]], left_on="trial",
                        right_on="trial_index").dropna(subset=[rule.metric])
        near = ""
        if len(best):
            row = best.loc[best[rule.metric].idxmax() if rule.higher else best[rule.metric].idxmin()]
            near = f" The closest: {row['config']} at {row[rule.metric]:.4g}."
        return Answer(f"No configuration reached {goal} (confirmed) at the median of its seeds."
                      + near, [f"Compute: {spent}; {caps}."], pd.DataFrame())
    win = order[0]
    rows = []
    for c in order:
        x = times[c]
        rows.append({"config": c, "seeds": len(x), "reached": sum(map(math.isfinite, x)),
                     "median": median(x), "min": min(x), "max": max(x),
                     "p_faster_than_answer": None if c == win else round(p_faster(x, times[win]), 3)})
    table = pd.DataFrame(rows).set_index("config")
    w = times[win]
    costs = t[(t["config"] == win) & t["cost"].notna()]["cost"] if "cost" in t else []
    cost = (f"; its cost to target: ${median(list(costs)):.4g} (median)" if len(costs)
            else "; cost: not measured (no node price: set cost.node_hour_usd)"
            if rule.clock != "cost_usd" else "")
    head = (f"Fastest to {goal}: **{win}**, in {_fmt(rule, median(w))} of "
            f"{rule.clock} (median over {len(w)} seed{'s' if len(w) > 1 else ''}, "
            f"[{_fmt(rule, min(w))}–{_fmt(rule, max(w))}]; {sum(map(math.isfinite, w))} "
            f"of {len(w)} reached it){cost}.")
    lines = []
    for c in order[1:4]:
        x = times[c]
        lines.append(f"Runner-up **{c}**: {_fmt(rule, median(x))} (median over {len(x)}, "
                     f"{sum(map(math.isfinite, x))} reached); P(faster than the answer) = "
                     f"{table.loc[c, 'p_faster_than_answer']:.2f}.")
    done, p = decided(times, confidence)
    if p is None:
        lines.append("Confidence: no other configuration reached the target.")
    elif len(w) == 1:
        lines.append(f"Confidence: not measured (one seed; the finalist race did not run). "
                     f"A bootstrap over one seed each gives P = {p:.2f}.")
    else:
        lines.append(f"Confidence: P(the answer is faster than the runner-up) = {p:.2f}, by "
                     f"bootstrap over seeds ({'at or above' if done else 'below'} the "
                     f"{confidence:g} the race asks for).")
    lines.append(f"Compute: {spent}; {caps}.")
    return Answer(head, lines, table)
