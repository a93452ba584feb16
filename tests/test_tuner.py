"""The spec as Tune sees it, with no Ray cluster; end-to-end runs are in test_sweep.py."""


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
