"""The spec as Tune sees it, with no Ray cluster; end-to-end runs are in test_sweep.py."""

import os
import signal
import sys
import time
import weakref

import pytest

from raytune_ctr import checks, tuner
from raytune_ctr.results import Results


def test_grid_space_holds_every_searched_key(tmp_path):
    s = checks.load("experiments/configs/s1_batch_lr.yaml")
    space, gen, n = tuner._search(s, Results(str(tmp_path), "s1"), concurrency=1)
    assert space == {"batch_size": 64, "lr": 1.0} and n == 5


def test_asha_can_count_train_seconds():
    s = checks.from_dict({"search": {"scheduler": "asha", "asha": {
        "time_attr": "train_time_s", "max_t": 60.0, "grace_period": 5.0}}})
    sched = tuner._scheduler(s)
    assert (sched._time_attr, sched._metric, sched._mode) == ("train_time_s", "test_acc", "max")
    assert tuner._scheduler(checks.from_dict({})) is None


def test_one_trial_waits_beside_those_that_fit_unless_the_limit_is_the_users():
    s = checks.from_dict({"search": {"method": "grid", "grid": {"seed": [0, 1, 2]}}})
    assert tuner._live_trials(s, 2) == 3  # the third is staged: it takes over a process
    capped = checks.from_dict({"search": {"method": "grid", "max_concurrent": 1}})
    assert tuner._live_trials(capped, 1) == 1
    det = checks.from_dict({"train": {"deterministic": True}, "search": {
        "method": "optuna", "space": {"lr": {"loguniform": [0.1, 1.0]}}}})
    assert tuner._live_trials(det, 1) == 1


def test_a_resumed_optuna_searcher_takes_a_finished_trials_result_from_the_journal(tmp_path):
    """Tune saved the searcher while trial t1 ran, t1 finished, the driver was killed:
    the resumed searcher gets t1's results again. Optuna's journal refuses them as it
    replays the file (not before writing, as SQLite did); the searcher takes the
    refusal, and the study keeps t1's told value."""
    import optuna
    from ray import tune

    where = Results(str(tmp_path), "s")
    where.local.mkdir(parents=True)

    def searcher():
        return tuner.ResumableOptunaSearch(
            space={"lr": tune.loguniform(1e-3, 1.0)}, metric="test_acc", mode="max",
            study_name="s", storage=where.optuna_storage())

    first = searcher()
    first.suggest("t1")
    first.on_trial_result("t1", {"test_acc": 50.0, "training_iteration": 1})
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's experiment checkpoint
    first.on_trial_complete("t1", {"test_acc": 60.0, "training_iteration": 2})

    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t1", {"test_acc": 55.0, "training_iteration": 2})
    assert "t1" in resumed._completed_trials
    study = optuna.load_study(study_name="s", storage=where.optuna_storage())
    assert [(t.state, t.value) for t in study.trials] == [(optuna.trial.TrialState.COMPLETE, 60.0)]


@pytest.mark.parametrize("kind", ["__del__", "weakref.finalize"])
def test_a_signal_that_lands_in_a_finalizer_stops_the_sweep_once_it_returns(kind):
    """Python prints and drops an exception out of a finalizer, which the garbage
    collector runs anywhere: a Ctrl-C that lands in one must not be lost."""

    def interrupted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in here

    class Dropped:
        def __del__(self):
            interrupted()

    class Plain:
        pass

    hook = sys.unraisablehook
    with tuner.Stop() as stop, pytest.raises(tuner.Aborted):
        if kind == "__del__":
            Dropped()  # dropped at once
        else:
            obj = Plain()
            weakref.finalize(obj, interrupted)
            del obj
        time.sleep(5)  # raised again in here, once the finalizer has returned
    assert stop.signum == signal.SIGINT and sys.unraisablehook is hook
