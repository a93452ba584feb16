"""Knob effects on synthetic studies whose true effects are known: the importances
rank the knobs right, the effects have the right signs, and a knob with no effect,
or too few trials, is said to be noise rather than given a number."""

import numpy as np
import pandas as pd
import pytest

from raytune_ctr import checks, effects


def study(n_per: int = 8, noise: float = 0.3, seed: int = 0):
    """batch_size costs accuracy (−0.03 points per sample of batch) and saves time
    (time ∝ 1/batch); lr does nothing; num_workers adds 40% time."""
    rng = np.random.default_rng(seed)
    rows, i = [], 0
    for bs in (16, 32, 64, 128):
        for _ in range(n_per):
            lr = float(rng.uniform(0.1, 1.0))
            nw = int(rng.choice([1, 2]))
            acc = 95 - 0.03 * bs + rng.normal(0, noise)
            t = 100 / bs * (1.4 if nw == 2 else 1.0) * rng.normal(1, 0.02)
            for epoch in (1, 2):
                rows.append({"trial_index": i, "status": "COMPLETED", "epoch": epoch,
                             "batch_size": bs, "lr": lr, "num_workers": nw,
                             "test_acc": acc - (2 if epoch == 1 else 0), "train_time_s": t * epoch})
            i += 1
    df = pd.DataFrame(rows)
    spec = checks.from_dict({"search": {
        "method": "random", "num_samples": i, "objectives": {"test_acc": "max", "train_time_s": "min"},
        "space": {"batch_size": {"choice": [16, 32, 64, 128]}, "lr": {"uniform": [0.1, 1.0]},
                  "num_workers": {"choice": [1, 2]}}}})
    return df, spec


def test_importances_rank_the_knob_that_matters_first():
    df, spec = study()
    imp = effects.importances(df, spec)
    for obj in ("test_acc", "train_time_s"):
        ranked = imp[imp["objective"] == obj].sort_values("importance", ascending=False)
        assert ranked["knob"].iloc[0] == "batch_size", ranked
        assert ranked["importance"].sum() == pytest.approx(1.0, abs=0.01)
    acc = imp[imp["objective"] == "test_acc"].set_index("knob")["importance"]
    assert acc["lr"] < 0.2 and acc["num_workers"] < 0.2
    assert set(imp["evaluator"]) == {"fANOVA"}


def test_effects_have_the_true_signs_and_noise_is_called_noise():
    df, spec = study()
    eff = effects.effects(df, spec).set_index(["knob", "objective"])
    bs_acc = eff.loc[("batch_size", "test_acc")]
    assert (bs_acc["from"], bs_acc["to"]) == ("16", "128")
    assert bs_acc["change"] == pytest.approx(-0.03 * 112, abs=0.5) and bs_acc["told_from_noise"]
    assert bs_acc["unit"] == "points"
    bs_time = eff.loc[("batch_size", "train_time_s")]
    assert bs_time["unit"] == "%" and bs_time["change"] == pytest.approx(-87.5, abs=3)
    assert bs_time["told_from_noise"]
    nw_time = eff.loc[("num_workers", "train_time_s")]
    assert nw_time["change"] == pytest.approx(40, abs=5) and nw_time["told_from_noise"]
    assert eff.loc[("lr", "test_acc")]["from"] < eff.loc[("lr", "test_acc")]["to"]
    assert not eff.loc[("lr", "test_acc")]["told_from_noise"]
    text = "\n".join(effects.sentences(effects.effects(df, spec)))
    assert "`batch_size` 16→128: −3.3 points test acc (±0.3), −88% train time" in text, text
    assert "% train time" in text
    assert "`lr`" in text and "cannot be told from noise for test acc" in text


def test_too_few_trials_give_no_number():
    df, spec = study(n_per=1)
    eff = effects.effects(df, spec)
    assert not eff["told_from_noise"].any()
    text = " ".join(effects.sentences(eff))
    assert "4 trials are too few to fit 4 terms" in text, text
    few = df[df["trial_index"] < 2]
    assert effects.importances(few, spec).empty


def test_time_to_target_is_the_first_epoch_reaching_it():
    df, spec = study()
    df["config"] = "c"
    ttt = effects.time_to_target(df, target=92.0).set_index("trial_index")
    row = df[(df["trial_index"] == 0) & (df["epoch"] == 2)].iloc[0]  # bs 16: 94.5, then 92.5
    first = df[(df["trial_index"] == 0)].sort_values("epoch")
    reached = first[first["test_acc"] >= 92.0].iloc[0]
    assert ttt.loc[0, "epoch_to_target"] == reached["epoch"]
    assert ttt.loc[0, "s_to_target"] == reached["train_time_s"] <= row["train_time_s"]
    never = ttt[ttt["epoch_to_target"].isna()]
    assert len(never) > 0  # batch 128: 91.2 at best
    by = effects.time_to_target_by_knob(df, spec, 92.0)
    bs = by[by["knob"] == "batch_size"].set_index("level")
    assert bs.loc["128", "reached"] == 0 and bs.loc["16", "reached"] == 8


def test_the_timeline_packs_overlapping_trials_into_slots():
    from raytune_ctr import page

    rows = []
    # trial 0: 0-3 s, trial 1: 1-4 s (overlaps), trial 2: 4-6 s (takes slot 0 again)
    for i, (start, setup) in enumerate([(0.0, 1.0), (1.0, 1.0), (4.0, 0.5)]):
        t = start + setup
        for epoch in (1, 2):
            t += 0.5 + 0.25  # train, then eval
            rows.append({"trial_index": i, "epoch": epoch, "ended_at": 1000 + t,
                         "epoch_time_s": 0.5, "eval_time_s": 0.25, "setup_time_s": setup,
                         "status": "COMPLETED"})
    seg, slots, wall, eff = page.timeline(pd.DataFrame(rows))
    assert slots == 2
    assert seg.groupby("trial_index")["slot"].first().tolist() == [0, 1, 0]
    assert wall == pytest.approx(6.0)
    assert eff == pytest.approx(3 * 1.5 / (6.0 * 2))
    assert set(seg["phase"]) == {"setup", "train", "eval"}


def test_the_timeline_from_the_command_counts_start_up_and_the_cpus_each_trial_held():
    """The command started 10 s before its first trial; a 2-CPU trial's training
    counts twice; efficiency is over the command's seconds x the cluster's CPUs."""
    from raytune_ctr import page

    rows = []
    for i, (start, workers) in enumerate([(0.0, 1), (0.0, 1), (1.5, 2)]):
        t = start + 0.5  # set-up
        rows.append({"trial_index": i, "epoch": 1, "ended_at": 1010 + t + 1.0,
                     "epoch_time_s": 0.75, "eval_time_s": 0.25, "setup_time_s": 0.5,
                     "num_workers": workers, "cpus_per_worker": 1.0, "status": "COMPLETED"})
    commands = [{"started": 1000.0, "ended": 1014.0, "cpus": 2.0}]
    seg, slots, wall, eff = page.timeline(pd.DataFrame(rows), commands)
    assert seg["start"].min() == pytest.approx(10.0)  # start-up shows before the first bar
    assert wall == pytest.approx(14.0)
    assert eff == pytest.approx((1.0 + 1.0 + 2 * 1.0) / (14.0 * 2))
    assert "from the command's start" in page.timeline_note((seg, slots, wall, eff))
    # Without the commands: from the first trial's start, over slots, as before.
    assert page.timeline(pd.DataFrame(rows))[2] == pytest.approx(3.0)
    # A command that ran trials went unrecorded (killed): no negative times, as before.
    late = [{"started": 1011.0, "ended": 1014.0, "cpus": 2.0}]
    assert page.timeline(pd.DataFrame(rows), late)[2] == pytest.approx(3.0)


def test_a_sweep_without_searched_knobs_has_no_effects_and_no_error():
    df, _ = study(n_per=2)
    spec = checks.from_dict({"search": {"method": "grid"}})
    assert effects.effects(df, spec).empty and effects.sentences(effects.effects(df, spec)) == []
    assert effects.importances(df, spec).empty and effects.marginal(df, spec).empty


def test_knobs_that_move_together_get_no_number():
    """points that scale lr with batch size: the fit cannot tell them apart."""
    df, spec = study()
    df["lr"] = df["batch_size"] / 160  # lr ∝ batch, as a linear-scaling rule would set it
    eff = effects.effects(df, spec).set_index(["knob", "objective"])
    for knob in ("batch_size", "lr"):
        assert eff.loc[(knob, "test_acc")]["tied"] and not eff.loc[(knob, "test_acc")]["told_from_noise"]
    assert not eff.loc[("num_workers", "test_acc")]["tied"]
    assert "moves together with another knob" in " ".join(effects.sentences(effects.effects(df, spec)))


def test_a_metric_some_trials_lack_fits_only_the_knobs_that_vary_among_the_rest():
    df, spec = study()
    df.loc[df["num_workers"] == 2, "train_time_s"] = float("nan")  # as mfu is on CPU trials
    eff = effects.effects(df, spec)
    t = eff[eff["objective"] == "train_time_s"].set_index("knob")
    assert "num_workers" not in t.index  # one value left among those that have it
    assert t.loc["batch_size", "change"] == pytest.approx(-87.5, abs=3)


def test_stopped_trials_epochs_are_held_fixed():
    """ASHA stops trials early; their shorter training is not a knob's effect."""
    df, spec = study()
    stopped = (df["trial_index"] % 3 == 0) & (df["batch_size"] == 128)
    df = df[~(stopped & (df["epoch"] == 2))].copy()
    df.loc[stopped, "status"] = "STOPPED"
    eff = effects.effects(df, spec).set_index(["knob", "objective"])
    assert eff.loc[("batch_size", "train_time_s")]["change"] == pytest.approx(-87.5, abs=3)


def test_a_restarted_trial_is_a_run_per_start_on_the_timeline():
    from raytune_ctr import page

    rows = [{"trial_index": 0, "epoch": e, "ended_at": 1000.0 + t, "epoch_time_s": 0.5,
             "eval_time_s": 0.25, "setup_time_s": 1.0, "resumed_from_epoch": r,
             "status": "COMPLETED"}
            for e, t, r in [(1, 1.75, 0), (2, 2.5, 0), (3, 103.25, 2), (4, 104.0, 2)]]
    seg, slots, wall, eff = page.timeline(pd.DataFrame(rows))
    assert slots == 1 and seg["run"].nunique() == 2  # two runs, the gap between them idle
    assert (seg["phase"] == "setup").sum() == 2
    assert eff == pytest.approx(4 * 0.75 / wall)


def test_a_sweep_whose_every_trial_failed_gets_an_empty_study_not_an_error():
    spec = checks.from_dict({"search": {"method": "grid", "grid": {"lr": [0.1, 0.2]}}})
    failed = pd.DataFrame({"lr": [np.nan, np.nan], "test_acc": [np.nan, np.nan],
                           "status": ["FAILED", "FAILED"]})
    assert len(effects.optuna_study(failed, spec).trials) == 0
