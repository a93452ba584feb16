"""The live view without Ray: fake trials through the callback's hooks, a log's lines
and final table, a terminal's table in place, the pickled state, the rows' order."""

import dataclasses
import io
import pickle
import re
import sys

import pytest
from rich.console import Console

from raytune_ctr import live, results
from raytune_ctr import spec as spec_lib


@dataclasses.dataclass
class Trial:
    trial_id: str
    config: dict
    status: str = "PENDING"
    last_result: dict = dataclasses.field(default_factory=dict)


def _spec(objectives=None):
    return spec_lib.from_dict({"train": {"epochs": 2}, "search": {
        "method": "grid", "grid": {"lr": [0.1, 0.2, 0.3, 0.4]},
        "objectives": objectives or {"test_acc": "max"}}})


def _trials():
    return [Trial(f"t{i}", {"lr": lr}) for i, lr in enumerate([0.1, 0.2, 0.3, 0.4])]


class Clock:
    def __init__(self, monkeypatch):
        self.t = 0.0
        monkeypatch.setattr(live, "_now", lambda: self.t)


def _result(cb, trials, i, epoch, acc, t_epoch=1.5):
    trials[i].status = "RUNNING"
    cb.on_trial_result(0, trials, trials[i], {"epoch": epoch, "test_acc": acc,
                                              "epoch_time_s": t_epoch})


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_log_gets_a_line_per_interval_and_the_full_table_at_the_end(monkeypatch):
    clock, out = Clock(monkeypatch), io.StringIO()
    spec, trials = _spec(), _trials()
    cb = live.Live(spec, console=Console(file=out, force_terminal=False, width=120))
    assert not cb._tty and cb._every == 30.0
    cb.on_step_begin(0, trials)

    def step(t):
        clock.t = t
        cb.on_step_end(0, trials)

    _result(cb, trials, 0, 1, 90.0)
    step(1)                       # the first news: a line at once
    _result(cb, trials, 1, 1, 80.0)
    step(10)                      # within 30 s of it: none
    _result(cb, trials, 0, 2, 95.0)
    cb.on_trial_complete(0, trials, trials[0])  # Tune sets TERMINATED after this
    step(20)
    step(31)                      # 30 s on, with news: a line
    step(50)
    step(100)                     # 30 s on, but nothing new: none
    cb.on_trial_error(0, trials, trials[2])      # failed before any result
    trials[2].status = "RUNNING"
    _result(cb, trials, 1, 2, 85.0)
    cb.on_trial_complete(0, trials, trials[1])
    step(101)

    lines = out.getvalue().splitlines()
    assert lines == [
        "[live] 0/4 trials done in 1 s; running: 1; best test_acc 90 (trial 0); ETA 7 s",
        "[live] 1/4 trials done in 31 s; running: 1; best test_acc 95 (trial 0); ETA 52 s",
        "[live] 3/4 trials done in 101 s; running: 0; failed: 1; best test_acc 95 (trial 0); "
        "ETA 34 s"]

    trials[0].status = trials[1].status = trials[3].status = "TERMINATED"
    trials[2].status = "ERROR"
    out.truncate(0), out.seek(0)
    clock.t = 120
    cb.on_experiment_end(trials)
    text = out.getvalue()
    assert "4/4 trials done in 120 s" in text and "failed: 1" in text and "ETA" not in text
    body = [line.split() for line in text.splitlines() if re.match(r"\s*\d+\s", line)]
    # Every trial, best first; the failed one says so, with no accuracy at all.
    assert body == [["0", "done", "lr=0.1", "2/2", "95", "1.5"],
                    ["1", "done", "lr=0.2", "2/2", "85", "1.5"],
                    ["3", "done", "lr=0.4", "-/2"],
                    ["2", "error", "lr=0.3", "-/2"]]


def test_no_console_decides_by_stdout(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    cb = live.Live(_spec())
    assert not cb._tty and cb._every == 30.0 and not cb._console.is_terminal
    assert live.Live(_spec(), every=5)._every == 5


def test_a_terminal_gets_one_table_in_place(monkeypatch):
    clock, out = Clock(monkeypatch), io.StringIO()
    spec, trials = _spec(), _trials()
    cb = live.Live(spec, console=Console(file=out, force_terminal=True, width=120))
    assert cb._tty and cb._every == 0.25
    stdout = sys.stdout
    try:
        cb.on_step_begin(0, trials)
        for t, (i, epoch, acc) in enumerate([(0, 1, 91.0), (1, 1, 96.5), (0, 2, 92.0),
                                             (1, 2, 97.25)]):
            _result(cb, trials, i, epoch, acc)
            clock.t = t + 0.1
            cb.on_step_end(0, trials)
            assert cb._live is not None and sys.stdout is not stdout  # prints go above it
        clock.t = 3.2
        cb.on_step_end(0, trials)  # nothing new within 1 s: not drawn
        drawn = out.getvalue()
        for t in trials:
            t.status = "TERMINATED" if t.trial_id in ("t0", "t1") else "PENDING"
        cb.on_trial_complete(0, trials, trials[0])
        cb.on_trial_complete(0, trials, trials[1])
        clock.t = 4
        cb.on_experiment_end(trials)
    finally:
        cb._stop()
    assert cb._live is None and sys.stdout is stdout
    final = _plain(out.getvalue()[len(drawn):])
    assert "2/4 trials done in 4 s; running: 0; best test_acc 97.25 (trial 1)" in final
    best = next(line for line in final.splitlines() if "lr=0.2" in line)
    assert best.split() == ["1", "done", "lr=0.2", "2/2", "97.25", "1.5"]
    assert "\x1b[?25h" in out.getvalue()  # the cursor is back


def test_pickling_keeps_the_spec_and_settings_not_the_display(monkeypatch):
    Clock(monkeypatch)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    spec, trials = _spec(), _trials()
    cb = live.Live(spec, every=2.0, rows=5,
                   console=Console(file=io.StringIO(), force_terminal=True))
    try:
        _result(cb, trials, 0, 1, 90.0)
        cb.on_step_end(0, trials)
        assert cb._live is not None
        back = pickle.loads(pickle.dumps(cb))
    finally:
        cb._stop()
    assert (back.spec, back.every, back.rows) == (spec, 2.0, 5)
    assert back._live is None and back._last == {} and back._t0 is None
    assert not back._tty  # decided afresh from this stdout, which is no terminal


@pytest.mark.parametrize("mode, order", [("max", [0, 2, 1, 3, 5, 4]),
                                         ("min", [0, 2, 3, 1, 5, 4])])
def test_rows_put_running_trials_first_then_the_best_finished(mode, order):
    spec = spec_lib.from_dict({"search": {"method": "random", "num_samples": 6,
                                          "space": {"lr": {"uniform": [0.1, 1.0]}},
                                          "objectives": {"test_loss": mode, "test_acc": "max"}}})
    trials = [Trial("a", {"lr": 0.5}, "RUNNING"), Trial("b", {"lr": 0.6}, "TERMINATED"),
              Trial("c", {"lr": 0.7}, "PENDING"), Trial("d", {"lr": 0.8}, "TERMINATED"),
              Trial("e", {"lr": 0.9}, "ERROR"), Trial("f", {"lr": 1.0}, "TERMINATED")]
    last = {"a": {"epoch": 1, "test_loss": 0.05}, "b": {"epoch": 5, "test_loss": 0.3},
            "d": {"epoch": 5, "test_loss": 0.2, "test_acc": 93},
            "e": {"epoch": 2, "test_loss": 0.01}}
    rs = live.rows(spec, trials, last)
    assert [r.trial for r in rs] == order
    assert [r.status for r in rs][:2] == ["running", "pending"]
    d = next(r for r in rs if r.trial == 3)
    assert (d.knobs, d.epoch, d.epochs, d.values, d.s_per_epoch) == \
        ("lr=0.8", 5, 5, (0.2, 93.0), None)
    assert next(r for r in rs if r.trial == 1).values == (0.3, None)  # no test_acc: blank
    assert next(r for r in rs if r.trial == 4).status == "error"


def test_rows_take_a_status_tune_has_not_set_yet_and_a_restored_trial_result():
    spec, trials = _spec(), _trials()
    trials[0].status, trials[1].status = "RUNNING", "TERMINATED"
    trials[1].last_result = {"epoch": 2, "test_acc": 88.0}  # from before a resume
    rs = live.rows(spec, trials, {}, {"t0": "ERROR"})
    assert [(r.trial, r.status) for r in rs] == [(2, "pending"), (3, "pending"),
                                                 (1, "done"), (0, "error")]
    assert rs[2].values == (88.0,)


@pytest.mark.parametrize("first", [0, 1], ids=["BasicVariantGenerator", "SearchGenerator"])
def test_a_trial_keeps_its_number_when_tune_moves_it_to_the_end_of_its_list(first):
    """Tune moves a trial it restarts to the end of its list; its number, as in the
    tables, is the count its searcher gave it (experiment_tag's head: from 0 for
    Tune's grid and random generator, from 1 for a Searcher's)."""
    spec, trials = _spec(), _trials()
    for n, t in enumerate(trials):
        t.experiment_tag = f"{n + first}_lr={t.config['lr']}"
        t.status = "RUNNING"
    trials.append(trials.pop(0))  # TuneController._requeue_trial
    rs = live.rows(spec, trials, {})
    assert [(r.trial, r.knobs) for r in rs] == [(0, "lr=0.1"), (1, "lr=0.2"), (2, "lr=0.3"),
                                                 (3, "lr=0.4")]
    assert results.made_order(trials) == [3, 0, 1, 2]
    assert results.made_order(_trials()) == [0, 1, 2, 3]  # no tags: the list's order


def test_a_screen_shows_the_running_trials_then_at_least_three_finished():
    spec = _spec()
    trials = [Trial(str(i), {"lr": 0.1}, "RUNNING" if i < 15 else "TERMINATED")
              for i in range(20)]
    shown = live._shown(live.rows(spec, trials, {}), 12)
    assert [r.trial for r in shown] == [*range(12), 15, 16, 17]
    shown = live._shown(live.rows(spec, trials[13:], {}), 12)
    assert [r.trial for r in shown] == list(range(7))


def test_total_counts_grid_points_times_repeats():
    assert live.total(_spec()) == 4
    grid = spec_lib.from_dict({"search": {"method": "grid", "num_samples": 3,
                                          "grid": {"lr": [0.1, 0.2]}}})
    assert live.total(grid) == 6
    assert live.total(spec_lib.from_dict({"search": {
        "method": "random", "num_samples": 7, "space": {"lr": {"uniform": [0.1, 1.0]}}}})) == 7


def test_packed_results_show_as_reported_including_a_resumed_trials(monkeypatch):
    """Trials hand Tune most metrics packed in one string (packing.py); the view
    shows them, and keeps of each trial only what it shows."""
    from raytune_ctr import packing

    Clock(monkeypatch)
    spec, trials = _spec(), _trials()
    keep = packing.tune_keys(spec)
    trials[1].status = "TERMINATED"  # from before a resume
    trials[1].last_result = packing.pack({"epoch": 2, "test_acc": 88.0, "epoch_time_s": 0.5,
                                          "samples_per_s": 10.0}, keep)
    cb = live.Live(spec, console=Console(file=io.StringIO(), force_terminal=False))
    cb.on_step_begin(0, trials)
    trials[0].status = "RUNNING"
    cb.on_trial_result(0, trials, trials[0], packing.pack(
        {"epoch": 1, "test_acc": 70.0, "epoch_time_s": 1.25, "tflops": 0.1}, keep))
    assert cb._last == {"t1": {"epoch": 2, "test_acc": 88.0, "epoch_time_s": 0.5},
                        "t0": {"epoch": 1, "test_acc": 70.0, "epoch_time_s": 1.25}}
    rs = live.rows(spec, trials, cb._last)
    assert [(r.trial, r.values, r.s_per_epoch) for r in rs if r.epoch] == \
        [(0, (70.0,), 1.25), (1, (88.0,), 0.5)]
