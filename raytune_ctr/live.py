"""The sweep's live view: a Tune callback in the driver.

On a terminal, one table that updates in place (rich), so a sweep stays one screen
instead of a new table every few seconds. In a log or CI (not a TTY), one line per
30 s when something changed, then the full table at the end. With -v, tuner.py keeps
Tune's own output instead.
"""

from __future__ import annotations

import atexit
import math
import sys
import time
from typing import Any, NamedTuple

from ray.tune import Callback
from rich import box
from rich.console import Console, Group
from rich.live import Live as RichLive
from rich.table import Column, Table
from rich.text import Text

from raytune_ctr import packing, results
from raytune_ctr.spec import Spec

_ACTIVE = ("running", "pending", "paused")
_STATUS = {"TERMINATED": "done", "ERROR": "error"}


def _now() -> float:  # one name, so tests can move the clock
    return time.monotonic()


class Row(NamedTuple):
    trial: int  # the trial's index among Tune's trials, as in the results tables
    status: str  # running, pending, paused, done or error
    knobs: str
    epoch: int | None  # None: no result yet
    epochs: int
    values: tuple[float | None, ...]  # the objectives, in the spec's order
    s_per_epoch: float | None


def total(spec: Spec) -> int:
    """The trials a sweep runs: a grid's points times its repeats, else num_samples
    (target mode: its budget's trials, before the finalist race)."""
    s = spec.search
    if s.method == "grid":
        return len(spec.grid_points()) * s.num_samples
    return (s.goal.budget.trials or s.num_samples) if s.goal is not None else s.num_samples


def rows(spec: Spec, trials, last_results: dict[str, dict],
         ended: dict[str, str] | None = None) -> list[Row]:
    """A row per trial: the running ones in order, then the finished ones best first by
    the first objective; those with no result, then failed ones, last. `ended`: trial id
    -> Tune status it is about to get (Tune calls on_trial_complete before it sets it)."""
    objectives = list(spec.search.objectives)
    keys = [k for k in spec.searched_keys() if k != "seed"]
    active: list[Row] = []
    finished: list[Row] = []
    for i, j in enumerate(results.made_order(trials)):
        t = trials[j]
        # A resumed sweep's earlier results are on the restored trials only.
        r = last_results.get(t.trial_id) or packing.unpack(getattr(t, "last_result", None) or {})
        config = dict(t.config)
        status = (ended or {}).get(t.trial_id, t.status)
        row = Row(i, _STATUS.get(status, status.lower()),
                  " ".join(f"{k}={_short(config[k])}" for k in keys if k in config),
                  r.get("epoch"), spec.resolve(config)[0].epochs,
                  tuple(_number(r.get(o)) for o in objectives), _number(r.get("epoch_time_s")))
        (active if row.status in _ACTIVE else finished).append(row)
    sign = -1 if spec.search.objectives[objectives[0]] == "max" else 1

    def rank(x: Row):
        v = math.nan if x.values[0] is None else x.values[0]
        return x.status == "error", math.isnan(v), 0.0 if math.isnan(v) else sign * v, x.trial

    return active + sorted(finished, key=rank)


class Live(Callback):
    """The live view (see the module's docstring). `every`: seconds between updates,
    default 0.25 on a terminal (4 a second at most), 30 in a log; `rows`: running
    trials shown, and finished ones below them up to that (3 at least)."""

    def __init__(self, spec: Spec, every: float | None = None, rows: int = 12,
                 console: Console | None = None):
        self.spec, self.every, self.rows = spec, every, rows
        self._setup(console)

    def _setup(self, console: Console | None) -> None:
        if console is None:  # a log has no width to fit: wide, so its table doesn't wrap
            console = Console() if sys.stdout.isatty() else Console(force_terminal=False, width=160)
        self._console = console
        self._tty = console.is_terminal and not console.is_dumb_terminal
        self._every = self.every if self.every is not None else 0.25 if self._tty else 30.0
        self._last: dict[str, dict] = {}
        self._ended: dict[str, str] = {}
        self._live: RichLive | None = None
        self._t0: float | None = None
        self._drawn, self._changed = -math.inf, False

    # Saved with Tune's experiment state: the spec and settings, not the console,
    # the display or the clock, which a resumed sweep starts afresh.
    def __getstate__(self):
        return {"spec": self.spec, "every": self.every, "rows": self.rows}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup(None)

    def on_step_begin(self, iteration, trials, **info):
        if self._t0 is None:
            self._t0 = _now()
            # A resumed sweep's earlier results, unpacked once, not at each redraw.
            for t in trials:
                if getattr(t, "last_result", None) and t.trial_id not in self._last:
                    self._last[t.trial_id] = self._kept(t.last_result)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id], self._changed = self._kept(result), True

    def _kept(self, result: dict) -> dict:
        """What `rows` shows of a result: kept for every trial, so only that."""
        r = packing.unpack(result)
        return {k: r[k] for k in ("epoch", "epoch_time_s", *self.spec.search.objectives) if k in r}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id], self._changed = "TERMINATED", True

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id], self._changed = "ERROR", True

    def on_step_end(self, iteration, trials, **info):
        now = _now()
        # On a terminal the elapsed time ticks too: redraw each second without news.
        wait = self._every if self._changed else 1.0 if self._tty else math.inf
        if now - self._drawn < wait:
            return
        self._drawn, self._changed = now, False
        rs = rows(self.spec, trials, self._last, self._ended)
        if not self._tty:
            self._console.print(f"[live] {self._summary(rs)}", markup=False, highlight=False,
                                soft_wrap=True)
            return
        table = self._view(_shown(rs, self.rows), self._summary(rs))
        if self._live is None:  # started on the first step: Tune's start-up prints first
            self._live = RichLive(console=self._console, auto_refresh=False, transient=False)
            self._live.start()
            # Should Tune not end the experiment (an exception it doesn't catch), the
            # cursor and stdout still come back at exit.
            atexit.register(self._stop)
        self._live.update(table, refresh=True)

    def on_experiment_end(self, trials, **info):
        try:
            rs = rows(self.spec, trials, self._last, self._ended)
            final = self._view(_shown(rs, self.rows) if self._tty else rs, self._summary(rs))
            if self._live is not None:  # stays on screen (transient=False)
                self._live.update(final, refresh=True)
            else:
                self._console.print(final)
        finally:
            self._stop()

    def _stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            atexit.unregister(self._stop)
            live.stop()

    def _summary(self, rs: list[Row]) -> str:
        """Trials done/total, running, failed, the best so far and an ETA, on one line."""
        first, mode = next(iter(self.spec.search.objectives.items()))
        n, done = total(self.spec), sum(x.status not in _ACTIVE for x in rs)
        elapsed = _now() - (self._t0 if self._t0 is not None else _now())
        race = " (then the finalist race)" if self.spec.search.goal is not None \
            and self.spec.search.goal.finalists is not None else ""
        line = f"{done}/{n}{race} trials done in {elapsed:.0f} s; running: " \
               f"{sum(x.status == 'running' for x in rs)}"
        if failed := sum(x.status == "error" for x in rs):
            line += f"; failed: {failed}"
        scored = [x for x in rs if x.status != "error" and x.values[0] is not None
                  and not math.isnan(x.values[0])]
        if scored:
            best = (max if mode == "max" else min)(scored, key=lambda x: x.values[0] or 0.0)
            line += f"; best {first} {_fmt(best.values[0])} (trial {best.trial})"
        # Progress in trials, a running one counting its share of epochs.
        progress = done + sum(min(x.epoch / x.epochs, 1.0) for x in rs
                              if x.status in _ACTIVE and x.epoch)
        if 0 < progress < n:
            line += f"; ETA {elapsed / progress * (n - progress):.0f} s"
        return line

    def _view(self, shown: list[Row], summary: str) -> Group:
        """The table, then the summary line below it (a caption would wrap to its width)."""
        table = Table(Column("trial", justify="right"), "status", "knobs",
                      Column("epoch", justify="right"),
                      *(Column(o, justify="right") for o in self.spec.search.objectives),
                      Column("s/epoch", justify="right"), box=box.SIMPLE_HEAD,
                      show_edge=False)
        for x in shown:
            epoch = f"{'-' if x.epoch is None else x.epoch}/{x.epochs}"
            table.add_row(str(x.trial), x.status, Text(x.knobs), epoch,
                          *(_fmt(v) for v in x.values), _fmt(x.s_per_epoch, 3),
                          style="red" if x.status == "error" else None)
        return Group(table, Text(summary))


def _shown(rs: list[Row], limit: int) -> list[Row]:
    """What fits a screen: the running trials, then at least 3 of the best finished."""
    active = [x for x in rs if x.status in _ACTIVE]
    return active[:limit] + rs[len(active):][:max(3, limit - len(active))]


def _number(v: Any) -> float | None:  # a metric not reported is blank, never 0
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
