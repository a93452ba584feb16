"""Target mode's rules on constructed curves: the confirmed crossing, capping, the
finalist race's statistics, the answer, the spec's checks and the constrained search."""

import dataclasses
import math

import pandas as pd
import pytest
import yaml

from raytune_ctr import spec as spec_lib
from raytune_ctr import target
from raytune_ctr.spec import SpecError
from raytune_ctr.target import Capping, Rule, crossing

ACC = Rule("test_acc", 95.0, margin=0.1, confirm=1.0)


def curve(*values, step=1.0):
    """Evaluations one clock step apart: (1, v1), (2, v2), ..."""
    return [(step * (i + 1), v) for i, v in enumerate(values)]


# --- the confirmed crossing -------------------------------------------------------------


def test_two_evaluations_in_a_row_confirm_at_the_first():
    assert crossing(curve(90, 95.2, 95.1), ACC) == 2.0


def test_one_evaluation_beyond_the_margin_confirms_itself():
    assert crossing(curve(90, 96.0), ACC) == 2.0  # 96 >= 95 + 1


def test_a_lone_spike_does_not_count():
    assert crossing(curve(90, 95.5, 94.0, 93.0), ACC) is None
    assert crossing(curve(95.5, 94, 95.2, 95.3), ACC) == 3.0  # the later pair


def test_a_crossing_at_the_last_evaluation_is_pending_not_reached():
    c = curve(90, 94, 95.5)
    assert crossing(c, ACC) is None
    assert target.pending(c, ACC) == 3.0
    assert target.pending(curve(90, 94), ACC) is None


def test_a_loss_target_is_reached_at_or_below():
    loss = Rule("test_loss", 0.3, confirm=0.05)
    assert not loss.higher
    assert crossing(curve(0.5, 0.29, 0.31), loss) is None
    assert crossing(curve(0.5, 0.29, 0.3), loss) == 2.0
    assert crossing(curve(0.5, 0.2), loss) == 2.0
    assert loss.shortfall(0.4) == pytest.approx(0.1)


def test_nan_never_reaches():
    assert crossing(curve(math.nan, math.nan), ACC) is None
    assert ACC.shortfall(math.nan) == math.inf


# --- capping --------------------------------------------------------------------------


def feed(cap: Capping, trial: str, values, step=1.0, epochs=10, key=None):
    """Feed a trial's evaluations until the rules stop it; (why, epochs fed)."""
    for i, v in enumerate(values):
        why = cap.observe(trial, step * (i + 1), v, i + 1, epochs, key=key)
        if why:
            return why, i + 1
    return None, len(values)


def test_nothing_is_capped_before_any_trial_reaches_the_target():
    cap = Capping(ACC)
    assert feed(cap, "slow", [50] * 9) == (None, 9)
    assert cap.incumbent is None and cap.cap() is None


def test_a_trial_stops_as_soon_as_its_time_is_known():
    cap = Capping(ACC)
    assert feed(cap, "a", [90, 95.2, 95.3, 97]) == ("reached", 3)
    assert cap.incumbent == (2.0, "a")
    assert cap.events[-1] == {"event": "reached", "trial_id": "a", "clock": 3.0, "value": 95.3,
                              "epoch": 3, "saved": 0.0, "time": 2.0, "key": "a"}


def test_full_runs_keep_training_after_the_target():
    cap = Capping(dataclasses.replace(ACC, full_runs=True))
    assert feed(cap, "a", [90, 95.2, 95.3, 97]) == (None, 4)
    assert [e["event"] for e in cap.events] == ["reached"]  # logged once


def test_a_trial_that_cannot_beat_the_incumbent_by_the_margin_is_capped():
    cap = Capping(ACC)
    feed(cap, "fast", [90, 95.5, 95.6], step=2.0)  # reached at 4 s: cap 4.4 s
    assert cap.cap() == pytest.approx(4.4)
    # 1.5 s epochs: after 3 (4.5 s) its next epoch would end at 6 > 4.4; after 2 (3 s),
    # 4.5 > 4.4 as well: capped after its second epoch.
    why, n = feed(cap, "slow", [80, 85, 90, 96], step=1.5)
    assert (why, n) == ("capped", 2)
    e = cap.events[-1]
    assert e["event"] == "capped" and e["cap"] == pytest.approx(4.4)
    assert e["saved"] == pytest.approx(8 * 1.5)  # 8 epochs left at its mean epoch


def test_a_trial_whose_next_epoch_may_still_win_goes_on():
    cap = Capping(ACC)
    feed(cap, "fast", [90, 95.5, 95.6], step=2.0)  # 4.4 s cap
    # 1 s epochs: after 3 s its next ends at 4 <= 4.4, and it reaches at 4 s (confirmed at 5)
    why, n = feed(cap, "quick", [80, 85, 90, 95.5, 95.7], step=1.0)
    assert (why, n) == ("reached", 5)
    assert cap.incumbent == (4.0, "fast")  # a tie keeps the first
    assert cap.cap() == pytest.approx(4.4)


def test_a_pending_crossing_inside_the_cap_is_given_its_confirming_epoch():
    cap = Capping(ACC)
    feed(cap, "fast", [90, 95.5, 95.6], step=2.0)  # 4.4 s cap
    # crosses at 4.0 (<= 4.4) by less than the margin; its confirming epoch ends past the cap
    assert cap.observe("b", 2.0, 90, 1, 10) is None
    assert cap.observe("b", 4.0, 95.2, 2, 10) is None  # pending at 4.0: not capped
    assert cap.observe("b", 6.0, 95.3, 3, 10) == "reached"
    # a pending crossing beyond the cap is capped
    cap2 = Capping(ACC)
    feed(cap2, "fast", [95.5, 95.6], step=1.0)  # 1.1 s cap
    assert cap2.observe("c", 0.5, 80, 1, 10) is None
    assert cap2.observe("c", 1.2, 95.2, 2, 10) == "capped"


def test_a_trial_ending_below_the_target_is_a_miss_for_its_configuration():
    cap = Capping(ACC)
    feed(cap, "a", [90, 94], epochs=2, key="A")
    assert cap.times["A"] == {"a": math.inf}
    assert cap.trials["a"].done


def test_the_incumbent_is_the_best_median_over_a_configurations_seeds():
    cap = Capping(ACC)
    feed(cap, "lucky", [95.5, 95.6], step=1.0, key="A")  # A: 1 s
    assert cap.incumbent == (1.0, "A")
    feed(cap, "a2", [90, 95.5, 95.6], step=1.0, key="A")  # A: 1, 2
    feed(cap, "a3", [90, 95.5, 95.6], step=1.0, key="A")  # A: 1, 2, 2 -> median 2
    assert cap.incumbent == (2.0, "A")
    assert cap.cap() == pytest.approx(2.2)


def test_the_budget_is_spent_over_all_trials_redone_epochs_included():
    cap = Capping(ACC, budget=5.0)
    feed(cap, "a", [50, 60, 70])  # 3 s
    assert not cap.exhausted()
    # restarted from its epoch-1 checkpoint: epochs 2 and 3 again, 2 s more
    assert cap.observe("a", 2.0, 60, 2, 10) is None
    assert len(cap.trials["a"].curve) == 2
    cap.observe("a", 3.0, 70, 3, 10)
    assert cap.spent == pytest.approx(5.0) and cap.exhausted()


# --- the race's statistics --------------------------------------------------------------


def test_median_counts_misses_as_infinite():
    assert target.median([3.0, 1.0, 2.0]) == 2.0
    assert target.median([1.0, 2.0]) == 1.5
    assert target.median([1.0, math.inf, math.inf]) == math.inf
    assert target.median([]) == math.inf


def test_p_faster_by_bootstrap():
    assert target.p_faster([1.0, 1.1, 1.05], [2.0, 2.1, 2.2]) == 1.0
    assert target.p_faster([2.0, 2.1, 2.2], [1.0, 1.1, 1.05]) == 0.0
    assert target.p_faster([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5, abs=0.05)
    assert target.p_faster([1.0], [math.inf]) == 1.0
    assert target.p_faster([1.0, 1.2, 0.9], [1.1, 1.0, 1.3]) == \
        target.p_faster([1.0, 1.2, 0.9], [1.1, 1.0, 1.3])  # seeded: the same twice


def test_finalists_are_within_the_window_of_the_best_time():
    times = {"A": [10.0], "B": [12.4], "C": [12.6], "D": [math.inf]}
    assert target.finalists(times, 0.25) == ["A", "B"]
    assert target.finalists({"D": [math.inf]}, 0.25) == []


def test_decided_when_the_leader_beats_the_runner_up():
    sure = {"A": [10.0, 10.2, 10.1], "B": [13.0, 13.5, 12.9]}
    assert target.decided(sure, 0.9) == (True, 1.0)
    unsure = {"A": [10.0, 12.0, 11.0], "B": [11.5, 10.5, 12.5]}
    done, p = target.decided(unsure, 0.9)
    assert not done and 0.3 < p < 0.9
    assert target.decided({"A": [10.0]}, 0.9) == (True, None)
    assert target.decided({"A": [math.inf]}, 0.9) == (False, None)


def test_ranking_puts_configurations_that_reached_more_often_first_among_misses():
    times = {"never": [math.inf], "sometimes": [5.0, math.inf, math.inf], "fast": [3.0]}
    assert target.ranking(times) == ["fast", "sometimes", "never"]


# --- the answer -----------------------------------------------------------------------


def rows(trial, config, values, status="COMPLETED", step=1.0, seed=1, epochs=None):
    return [{"trial_index": trial, "trial_id": f"t{trial}", "config": config, "status": status,
             "epoch": i + 1, "epochs": epochs or len(values), "seed": seed, "test_acc": v,
             "train_time_s": step * (i + 1), "cost_usd": None}
            for i, v in enumerate(values)]


def test_the_answer_is_the_lowest_median_with_runners_up_and_confidence():
    df = pd.DataFrame(
        rows(0, "A", [95.5, 95.6], step=1.0) + rows(1, "A", [90, 95.5, 95.6], seed=2)
        + rows(2, "A", [95.5, 95.6], step=1.1, seed=3)
        + rows(3, "B", [90, 90, 95.5, 95.6], step=1.0) + rows(4, "B", [90, 90, 95.5, 95.6], seed=2)
        + rows(5, "B", [90, 90, 90, 95.5, 95.6], seed=3)
        + rows(6, "C", [80, 85], status="FAILED"))
    log = [{"event": "capped", "saved": 3.0}, {"event": "reached"}]
    a = target.answer(df, ACC, 0.9, log)
    assert "**A**" in a.headline and "median over 3 seeds" in a.headline
    assert "[1 s–2 s]" in a.headline and "3 of 3 reached it" in a.headline
    assert "cost: not measured" in a.headline
    assert a.lines[0].startswith("Runner-up **B**: 3 s")
    assert "P(the answer is faster than the runner-up) = 1.00" in a.lines[-2]
    assert "1 FAILED" in a.lines[-1] and "capping stopped 1 trials" in a.lines[-1]
    assert list(a.table.index) == ["A", "B"]  # the FAILED trial is no measurement


def test_a_trial_cut_short_is_unfinished_not_a_miss_and_a_capped_one_is_a_miss():
    a_runs = rows(0, "A", [95.5, 95.6]) + rows(1, "A", [90, 95.5, 95.6], seed=2)
    b_runs = rows(2, "B", [90, 95.5, 95.6], step=0.5) + rows(3, "B", [90, 95.5, 95.6], seed=2,
                                                              step=0.5)
    # B's third seed: cut short by an interruption (2 of 10 epochs): left out
    cut = rows(4, "B", [90, 91], status="INTERRUPTED", seed=3, epochs=10)
    a = target.answer(pd.DataFrame(a_runs + b_runs + cut), ACC, 0.9, [])
    assert "**B**" in a.headline and "median over 2 seeds" in a.headline
    assert "1 unfinished" in a.lines[-1]
    # the same run capped: a miss, and B's median is gone
    capped = rows(4, "B", [90, 91], status="STOPPED", seed=3, epochs=10)
    a = target.answer(pd.DataFrame(a_runs + b_runs + capped), ACC, 0.9,
                      [{"event": "capped", "trial_id": "t4", "saved": 8.0}])
    assert "**B**" in a.headline and "median over 3 seeds" in a.headline
    assert "2 of 3 reached it" in a.headline


def test_no_answer_says_so_and_names_the_closest():
    df = pd.DataFrame(rows(0, "A", [80, 90]) + rows(1, "B", [85, 93]))
    a = target.answer(df, ACC, 0.9, [])
    assert a.headline.startswith("No configuration reached test_acc ≥ 95")
    assert "B at 93" in a.headline


def test_one_seed_each_says_confidence_is_not_measured():
    df = pd.DataFrame(rows(0, "A", [95.5, 95.6]) + rows(1, "B", [90, 95.5, 95.6]))
    a = target.answer(df, ACC, 0.9, [])
    assert any(x.startswith("Confidence: not measured (one seed") for x in a.lines)


# --- the spec -------------------------------------------------------------------------


def quick(goal, **search):
    with open("experiments/configs/quickstart_target.yaml") as f:
        d = yaml.safe_load(f)
    d["search"]["goal"] = goal
    d["search"].update(search)
    return d


def test_the_target_config_loads_with_its_own_objectives():
    s = spec_lib.load("experiments/configs/quickstart_target.yaml")
    assert s.search.objectives == {"test_acc": "max", "train_time_s": "min"}
    assert s.search.goal is not None and s.search.goal.target == {"test_acc": 95.0}
    loss = spec_lib.from_dict(quick({"target": {"test_loss": 0.2}, "minimize": "wall_time_s"}))
    assert loss.search.objectives == {"test_loss": "min", "wall_time_s": "min"}


@pytest.mark.parametrize("goal,search,key,fragment", [
    ({"target": {"test_acc": 101.0}}, {}, "search.goal.target.test_acc", "at most 100"),
    ({"target": {"test_acc": 95.0}, "minimize": "epoch_time_s"}, {}, "search.goal.minimize",
     "grows over a trial's epochs"),
    ({"target": {"test_acc": 95.0}, "minimize": "test_acc"}, {}, "search.goal.minimize",
     "time or cost"),
    ({"target": {"peak_rss_mb": 100.0}}, {}, "search.goal.target.peak_rss_mb",
     "a target is set on one of"),
    ({"target": {"test_acc": 95.0, "test_loss": 0.1}}, {}, "search.goal.target", "exactly one"),
    ({"target": {"test_acc": 95.0}, "budget": {"usd": 1.0}}, {}, "search.goal.budget.usd",
     "node price"),
    ({"target": {"test_acc": 95.0}, "minimize": "cost_usd"}, {}, "search.goal.minimize",
     "node price"),
    ({"target": {"test_acc": 95.0}}, {"objectives": {"test_acc": "min"}}, "search.objectives",
     "leave objectives out"),
    ({"target": {"test_acc": 95.0}}, {"scheduler": "asha"}, "search.scheduler", "capping"),
    ({"target": {"test_acc": 95.0}, "finalists": {"seeds": [5, 3]}}, {},
     "search.goal.finalists.seeds", "grow"),
    ({"target": {"test_acc": 95.0}, "margn": 0.1}, {}, "search.goal.margn", "did you mean"),
    ({"target": {"test_acc": 95.0}, "finalists": {"seeds": [1, 3]}}, {},
     "search.goal.finalists.seeds", "2 seeds or more"),
])
def test_a_goal_that_cannot_hold_is_refused_on_one_line(goal, search, key, fragment):
    with pytest.raises(SpecError) as e:
        spec_lib.from_dict(quick(goal, **search))
    msg = str(e.value)
    assert msg.startswith(key) and fragment in msg and "\n" not in msg


def test_target_mode_needs_optuna():
    d = quick({"target": {"test_acc": 95.0}})
    d["search"] = {"method": "grid", "grid": {"lr": [0.5, 1.0]}, "goal": d["search"]["goal"]}
    with pytest.raises(SpecError, match="^search.method: target mode"):
        spec_lib.from_dict(d)


def test_the_fast_corners_are_seeded_first():
    from raytune_ctr import searchers

    s = spec_lib.load("experiments/configs/quickstart_target.yaml")
    lr = math.sqrt(0.2 * 2.0)
    assert searchers.corners(s) == [{"batch_size": 128, "lr": pytest.approx(lr), "num_workers": 1},
                                      {"batch_size": 128, "lr": pytest.approx(lr), "num_workers": 2}]


# --- the constrained search and its race (no Ray cluster: Tune's searcher API) ---------


def run(searcher, trial_id, config_values, step):
    """Report a trial's evaluations to the searcher and complete it."""
    for i, v in enumerate(config_values):
        result = {"test_acc": v, "train_time_s": step * (i + 1), "epoch": i + 1,
                  "training_iteration": i + 1}
        if i + 1 < len(config_values):
            searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


def test_the_search_tells_time_and_constraint_then_races_the_finalists(tmp_path):
    import optuna
    from ray import tune

    from raytune_ctr import searchers

    race = spec_lib.FinalistSpec(within=0.25, seeds=(3, 5), confidence=0.9)
    s = searchers.GoalOptunaSearch(
        ACC, 3, race, seed=1, folder=str(tmp_path), sampler=optuna.samplers.RandomSampler(seed=0),
        points_to_evaluate=[{"lr": 0.5}, {"lr": 1.0}, {"lr": 2.0}])
    # as Tune gives it the Tuner's param_space
    assert s.set_search_properties(None, None, {"lr": tune.choice([0.5, 1.0, 2.0])})
    assert [s.suggest(t)["lr"] for t in ("t0", "t1", "t2")] == [0.5, 1.0, 2.0]
    assert s.suggest("t3") is None  # the race waits for every explored trial
    run(s, "t0", [90, 95.5, 95.6], step=1.0)  # reached at 2.0
    run(s, "t1", [90, 95.5, 95.6], step=1.1)  # 2.2: within 25%
    run(s, "t2", [90, 94.0], step=1.0)  # missed by 1 point
    study = s._ot_study
    got = sorted((t.params["lr"], t.values[0], t.constraints) for t in study.trials)
    assert got == [(0.5, 2.0, {"target": 0.0}), (1.0, pytest.approx(2.2), {"target": 0.0}),
                   (2.0, 2.0, {"target": pytest.approx(1.0)})]
    # round 0: each finalist to 3 seeds, the best first; seeds count on from train.seed
    asked = [s.suggest(f"r{i}") for i in range(4)]
    assert asked == [{"lr": 0.5, "seed": 2}, {"lr": 0.5, "seed": 3},
                     {"lr": 1.0, "seed": 2}, {"lr": 1.0, "seed": 3}]
    assert s.suggest("r4") is None
    for i, step in enumerate([1.0, 1.05, 1.5, 1.6]):  # 0.5: 2.0, 2.1; 1.0: 3.0, 3.2
        run(s, f"r{i}", [90, 95.5, 95.6], step=step)
    assert len(study.trials) == 3  # race trials are not Optuna's
    assert s.suggest("r5") == s.FINISHED  # P(0.5 faster than 1.0) = 1 after round 0
    log = target.events(tmp_path)
    assert [e["event"] for e in log] == ["finalists", "race_round"]
    assert log[1]["decided"] and log[1]["p_faster"] == 1.0


def test_an_unclear_race_goes_to_the_next_round():
    import optuna
    from ray import tune

    from raytune_ctr import searchers

    race = spec_lib.FinalistSpec(within=0.25, seeds=(2, 3), confidence=0.9)
    s = searchers.GoalOptunaSearch(
        ACC, 2, race, seed=0, folder=None, sampler=optuna.samplers.RandomSampler(seed=0),
        points_to_evaluate=[{"lr": 0.5}, {"lr": 1.0}])
    assert s.set_search_properties(None, None, {"lr": tune.choice([0.5, 1.0])})
    s.suggest("a"), s.suggest("b")
    run(s, "a", [95.5, 95.6], step=1.0)
    run(s, "b", [95.5, 95.6], step=1.1)
    assert [s.suggest(t) for t in ("c", "d")] == [{"lr": 0.5, "seed": 1}, {"lr": 1.0, "seed": 1}]
    run(s, "c", [95.5, 95.6], step=1.2)  # 0.5: 1.0, 1.2 against 1.0: 1.1, 1.05
    run(s, "d", [95.5, 95.6], step=1.05)
    assert [s.suggest(t) for t in ("e", "f")] == [{"lr": 1.0, "seed": 2}, {"lr": 0.5, "seed": 2}]
    assert s.suggest("g") is None


def test_a_resumed_sweeps_stopper_caps_against_the_incumbent_it_had(tmp_path):
    """Tune restores the stopper as the sweep made it (tuner.pkl); its log brings back
    the crossings and caps since."""
    import pickle

    from raytune_ctr import searchers

    made = pickle.dumps(searchers.CappingStopper(ACC, None, 10, str(tmp_path)))
    stopper = pickle.loads(made)
    for i, acc in enumerate([90, 95.5, 95.6]):
        stopper("a", {"test_acc": acc, "train_time_s": 2.0 * (i + 1), "epoch": i + 1,
                      "config": {"lr": 1.0, "seed": 1}})
    assert stopper.capping.incumbent == (4.0, (("lr", 1.0),))
    restored = pickle.loads(made)
    assert restored.capping.incumbent == (4.0, (("lr", 1.0),))
    assert restored.capping.cap() == pytest.approx(4.4)
    # ...and caps as it would have: 3 s epochs cannot beat 4.4 s
    assert restored("b", {"test_acc": 80, "train_time_s": 3.0, "epoch": 1,
                          "config": {"lr": 0.1}})
    assert target.events(tmp_path)[-1]["event"] == "capped"


def test_a_resumed_trial_first_seen_mid_run_is_capped_on_its_mean_epoch_not_its_clock():
    cap = Capping(ACC)
    feed(cap, "fast", [95.5, 95.6], step=50.0)  # reached at 50: cap 55
    # first seen at epoch 7, clock 35 (5 s epochs): its next would end at 40 < 55
    assert cap.observe("resumed", 35.0, 90.0, 7, 20) is None
    assert cap.trials["resumed"].fastest == pytest.approx(5.0)


def test_a_miss_is_logged_and_comes_back_after_a_resume():
    cap = Capping(ACC)
    feed(cap, "a", [95.5, 95.6], key="A")  # A: 1
    feed(cap, "b", [90, 94], epochs=2, key="A")  # A: 1, inf
    feed(cap, "c", [90, 93], epochs=2, key="A")  # A: 1, inf, inf: no median
    assert cap.incumbent is None
    again = Capping(ACC)
    again.replay(json_round_trip(cap.events))
    assert again.incumbent is None and again.times["A"] == cap.times["A"]


def json_round_trip(events):
    import json

    return [json.loads(json.dumps(e)) for e in events]


def test_a_last_result_said_again_is_not_spent_twice():
    cap = Capping(dataclasses.replace(ACC, full_runs=True))
    feed(cap, "a", [90, 95.5, 95.6], step=10.0)
    assert cap.spent == 30.0
    cap.observe("a", 30.0, 95.6, 3, 3)
    assert cap.spent == 30.0


def test_an_optuna_repeat_gets_the_next_seed():
    import optuna
    from ray import tune

    from raytune_ctr import searchers

    s = searchers.GoalOptunaSearch(
        ACC, 3, None, seed=5, folder=None, sampler=optuna.samplers.RandomSampler(seed=0),
        points_to_evaluate=[{"lr": 0.5}, {"lr": 0.5}, {"lr": 0.5}])
    assert s.set_search_properties(None, None, {"lr": tune.choice([0.5, 1.0])})
    assert [s.suggest(t) for t in "abc"] == [{"lr": 0.5}, {"lr": 0.5, "seed": 6},
                                             {"lr": 0.5, "seed": 7}]
