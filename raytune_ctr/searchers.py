"""The searchers and stopper Tune is given: Optuna that survives a resume, and target
mode's (target.py) constrained Optuna search, its finalist race and its capping
stopper.

Ray's OptunaSearch tells Optuna whatever the last result held, and no constraint.
Here a trial's value is its time to target, and its constraint says whether it got
there: a capped or unfinished trial is infeasible by how far below the target it
stayed, so Optuna's TPE ranks near misses above hopeless ones and never takes a
censored time for a real one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from raytune_ctr import spec as spec_lib
from raytune_ctr import target
from raytune_ctr.spec import FinalistSpec, Spec

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that survives a resume: a trial which finished after Tune's last
    experiment checkpoint is already told in the study, so Tune's restarted copy of it
    must not report to it again (Optuna refuses, and Tune would crash)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)


def budget(spec: Spec) -> float | None:
    """The budget on the clock capping counts: train seconds, or dollars."""
    g = spec.search.goal
    assert g is not None
    return g.budget.usd if g.minimize == "cost_usd" else g.budget.trial_seconds


def key(config: dict) -> tuple:
    """A configuration, its seed left out: the runs the race compares."""
    return tuple(sorted((k, v) for k, v in config.items() if k != "seed"))


class CappingStopper(Stopper):
    """Tune asks it after every result: stop a trial that reached the target or can no
    longer beat the best time to target; stop all once the budget is spent. Each cap
    and crossing is appended to `folder`/target.jsonl as it happens."""

    def __init__(self, rule: target.Rule, budget: float | None, epochs: int,
                 folder: str | None) -> None:
        self.capping = target.Capping(rule, budget)
        self.epochs, self.folder = epochs, folder

    def __call__(self, trial_id: str, result: dict) -> bool:
        r = self.capping.rule
        value, clock = result.get(r.metric), result.get(r.clock)
        if value is None or clock is None:
            return False
        n = len(self.capping.events)
        config = result.get("config", {})
        why = self.capping.observe(trial_id, float(clock), float(value),
                                   int(result.get("epoch", 0)),
                                   int(config.get("epochs", self.epochs)), key=key(config))
        if self.folder is not None and len(self.capping.events) > n:
            try:
                with open(Path(self.folder, target.LOG), "a") as f:
                    f.writelines(json.dumps(e) + "\n" for e in self.capping.events[n:])
            except OSError as err:  # the tables say what ran; this is the caps' log
                log.warning("cannot write %s: %s", target.LOG, err)
        return why is not None

    def __setstate__(self, state: dict) -> None:
        # Tune restores this stopper as the sweep made it; its log says what it saw since.
        self.__dict__.update(state)
        if self.folder is not None:
            self.capping.replay(target.events(Path(self.folder)))

    def stop_all(self) -> bool:
        return self.capping.exhausted()


class GoalOptunaSearch(ResumableOptunaSearch):
    """OptunaSearch minimising time to target under the constraint "reached it"; then,
    with `race`, the finalist race: once `explore` trials have ended, the configurations
    within `race.within` of the best time run again with new seeds (round by round, up
    to each of `race.seeds`) until the fastest by median beats the runner-up with
    P >= `race.confidence` (target.decided). Race trials are not Optuna's."""

    def __init__(self, rule: target.Rule, explore: int, race: FinalistSpec | None,
                 seed: int, folder: str | None, **kwargs) -> None:
        super().__init__(metric=rule.clock, mode="min", **kwargs)
        self.rule, self.explore, self.race, self.seed0 = rule, explore, race, seed
        self.folder = folder
        self._curves: dict[str, list[tuple[float, float]]] = {}
        self._configs: dict[str, tuple] = {}  # trial -> its configuration, seed left out
        self._seeds: dict[tuple, int] = {}  # configuration -> seeds run (or asked for)
        self._times: dict[tuple, list[float]] = {}  # configuration -> time per ended seed
        self._running: set[str] = set()
        self._queue: list[tuple] = []
        self._round = -1  # the race's round; -1: exploring
        self._suggested = 0

    def suggest(self, trial_id: str) -> dict | None:
        if self._suggested < self.explore:
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                self._asked(trial_id, config)
            return config
        if not self._queue and not self._next_round():
            return None if self._running else self.FINISHED  # type: ignore[return-value]
        config = dict(self._queue.pop(0))
        self._asked(trial_id, config)
        return config

    def _asked(self, trial_id: str, config: dict) -> None:
        """Count the run; a configuration's second run on, Optuna's repeats included,
        gets the next seed (train.seed + 1, + 2, ...), so no seed is counted twice."""
        self._configs[trial_id] = k = key(config)
        n = self._seeds.get(k, 0)
        self._seeds[k] = n + 1
        if n and "seed" not in config:
            config["seed"] = self.seed0 + n
        self._running.add(trial_id)
        self._suggested += 1

    def _next_round(self) -> bool:
        """Queue the next round's runs once every trial so far has ended; False when
        there is nothing to queue (yet, or any more)."""
        if self._running or self.race is None or self._round + 1 >= len(self.race.seeds):
            return False
        if self._round >= 0:
            done, p = target.decided(self._times, self.race.confidence)
            self._log({"event": "race_round", "round": self._round, "p_faster": p,
                       "decided": done})
            if done:
                return False
        self._round += 1
        final = target.finalists(self._times, self.race.within)
        want = self.race.seeds[self._round]
        self._queue = [k for k in final for _ in range(max(want - self._seeds[k], 0))]
        self._log({"event": "finalists", "round": self._round, "seeds": want,
                   "finalists": [dict(k) for k in final]})
        return bool(self._queue) or self._next_round()

    def _log(self, event: dict) -> None:
        log.info("target mode: %s", event)
        if self.folder is not None:
            try:
                with open(Path(self.folder, target.LOG), "a") as f:
                    f.write(json.dumps(event, default=str) + "\n")
            except OSError as err:
                log.warning("cannot write %s: %s", target.LOG, err)

    def _add(self, trial_id: str, result: dict | None) -> None:
        r = self.rule
        if not result or result.get(r.metric) is None or result.get(r.clock) is None:
            return
        curve = self._curves.setdefault(trial_id, [])
        if (epoch := int(result.get("epoch", 0))) > 0:
            del curve[epoch - 1:]  # a restarted trial says its epochs again
        curve.append((float(result[r.clock]), float(result[r.metric])))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._add(trial_id, result)
        if trial_id in self._ot_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        import optuna

        self._add(trial_id, result)
        curve = self._curves.pop(trial_id, [])
        self._running.discard(trial_id)
        time = target.crossing(curve, self.rule)
        if not error and curve and (k := self._configs.get(trial_id)) is not None:
            # A miss is infinite; a failed trial is no measurement of the configuration.
            self._times.setdefault(k, []).append(time if time is not None else math.inf)
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return  # a race trial, or one told before a killed driver's last record
        if error or not curve:
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial, study = self._ot_trials[trial_id], self._ot_study
        assert study is not None  # set up before any trial was suggested
        shortfall = min(self.rule.shortfall(v) for _, v in curve)
        try:
            # Feasible at 0; else how far it stayed from the target, never 0.
            ot_trial.set_constraint("target", 0.0 if time is not None else
                                    max(shortfall, 1e-9) if math.isfinite(shortfall) else 1e9)
            ot_trial.set_user_attr("reached", time is not None)
            study.tell(ot_trial, time if time is not None else curve[-1][0])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told before a killed driver's last record (ResumableOptunaSearch)
        self._completed_trials.add(trial_id)


# The knobs that set a trial's throughput, and the end of each that is fastest (both
# ends where it depends on the model and machine).
_FAST = {"batch_size": (max,), "num_workers": (min, max), "threads_per_worker": (max,)}


def corners(spec: Spec) -> list[dict]:
    """The high-throughput corners of the space, tried first so that an incumbent (and
    with it a cap) comes early: each fast end of the throughput knobs, every other
    dimension at its middle (geometric for loguniform)."""
    import itertools

    space = spec.search.space
    middle: dict = {}
    for name, dim in space.items():
        a = dim.args
        if dim.kind == "choice":
            middle[name] = a[len(a) // 2]
        elif dim.kind == "loguniform":
            middle[name] = math.sqrt(a[0] * a[1])
        elif dim.kind == "uniform":
            middle[name] = (a[0] + a[1]) / 2
        else:
            middle[name] = (a[0] + a[1]) // 2
    fast = {name: sorted({pick(_values(space[name])) for pick in _FAST[name]})
            for name in space if name in _FAST}
    points = [middle | dict(zip(fast, combo, strict=True)) for combo in itertools.product(*fast.values())]
    return [p for p in points if _fits(spec, p)] if fast else []


def _values(dim: spec_lib.Dimension) -> tuple:
    return tuple(dim.args) if dim.kind == "choice" else dim.extremes()


def _fits(spec: Spec, point: dict) -> bool:
    train, res = spec.resolve(point)
    return train.batch_size >= res.num_workers
