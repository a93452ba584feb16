import numpy as np
import pandas as pd
import pytest

from raytune_ctr import checks, results, writeup
from raytune_ctr import spec as spec_lib


def fake_results(tmp_path, spec_map):
    """A results folder with made-up rows, shaped like results.collect's output."""
    spec = checks.from_dict(spec_map)
    rows = []
    #        batch, lr, acc by epoch,        s/epoch, status
    trials = [(32, 1.0, [97.0, 98.5, 99.0], 50.0, "COMPLETED"),
              (64, 1.0, [96.0, 98.0, 98.9], 35.0, "COMPLETED"),
              (128, 1.0, [94.0, 97.0, 98.0], 25.0, "COMPLETED"),
              (128, 1.5, [90.0], 25.0, "STOPPED"),
              (32, 0.5, [95.0], 50.0, "FAILED")]
    for i, (b, lr, accs, spe, status) in enumerate(trials):
        for e, acc in enumerate(accs, 1):
            rows.append({"trial_index": i, "trial_id": f"t{i}", "batch_size": b, "lr": lr,
                         "seed": 1, "num_workers": 1, "threads_per_worker": 1, "use_gpu": False,
                         "status": status, "error": "FloatingPointError: nan" if status == "FAILED" else "",
                         "epoch": e, "test_acc": acc, "test_loss": (100 - acc) / 100,
                         "train_acc": acc, "train_loss": 0.1, "epoch_time_s": spe,
                         "train_time_s": spe * e, "data_time_s": 1.0, "eval_time_s": 1.0,
                         "setup_time_s": 2.0, "samples_per_s": 60000 / spe, "peak_rss_mb": 900.0,
                         "peak_cuda_mb": np.nan, "env_host": "h", "env_torch": "2.x"})
    run = tmp_path / "run"
    run.mkdir(parents=True)
    spec_lib.dump(spec, run / "spec.yaml")
    pd.DataFrame(rows).to_parquet(run / "trials.parquet")
    return run, spec


S1 = {"name": "s1", "search": {"objectives": {"test_acc": "max", "train_time_s": "min"},
                               "grid": {"batch_size": [64, 128], "lr": [1.0, 1.5]},
                               "points": [{"batch_size": 32, "lr": 1.0}]},
      "report": {"target_acc": 98.0, "baseline": {"batch_size": 64}}}


def test_pareto_mask():
    v = np.array([[99.0, 150.0], [98.9, 105.0], [98.0, 75.0], [97.0, 80.0]])
    assert writeup.pareto_mask(v, [True, False]).tolist() == [True, True, True, False]


def test_tables_answer_and_pareto(tmp_path):
    run, spec = fake_results(tmp_path, S1)
    _, df = results.load(run)
    df = writeup.label_trials(df, spec)
    acc = writeup.by_epoch(df, "test_acc", 2)
    assert acc.loc["batch_size=64 lr=1.0", "epoch 3"] == "98.90"
    assert "batch_size=32 lr=0.5" not in acc.index  # failed trials are not scored
    times, base = writeup.time_table(df, spec)
    assert base == "batch_size=64 lr=1.0"
    assert times.loc["batch_size=32 lr=1.0", "speedup"] == 0.7
    assert times.loc["batch_size=128 lr=1.0", "speedup"] == 1.4
    assert times.loc["batch_size=128 lr=1.0", "Δ acc (points)"] == -0.9
    front = writeup.pareto_front(df, spec)
    assert set(front["config"]) == {"batch_size=32 lr=1.0", "batch_size=64 lr=1.0",
                                    "batch_size=128 lr=1.0", "batch_size=128 lr=1.5"}
    answer = writeup.fastest_reaching(df, 98.0)
    # batch 128 reaches 98.0 at 75 s; batch 64 at 70 s (epoch 2): 64 wins.
    assert "**batch_size=64 lr=1.0** reached 98.00% at epoch 2 after 70 s of training" in answer
    assert "No configuration reached 99.5%" in writeup.fastest_reaching(df, 99.5)


def test_seeds_become_mean_and_std(tmp_path):
    run, spec = fake_results(tmp_path, S1 | {"search": {"grid": {"batch_size": [32, 64],
                                                                 "seed": [1, 2]}}})
    _, df = results.load(run)
    second = df["trial_index"] == 1  # make trial 1 a second seed of trial 0's config
    df.loc[second, ["batch_size", "seed"]] = [32, 2]
    df.loc[second, "test_acc"] += 1.0
    df = writeup.label_trials(df, spec)
    acc = writeup.by_epoch(df, "test_acc", 1)
    assert acc.loc["batch_size=32", "epoch 1"] == "97.0 ± 0.0"
    assert acc.loc["batch_size=32", "epoch 2"] == "98.8 ± 0.4"
    assert acc.loc["batch_size=128", "epoch 1"] == "92.0 ± 2.8"  # lr is not searched here


def test_build_writes_report_and_plots(tmp_path):
    run, _ = fake_results(tmp_path, S1)
    out = writeup.build(run)
    text = out.read_text()
    for section in ("## Answer", "## Pareto-optimal", "## Test accuracy (%) by epoch",
                    "## Test loss by epoch", "## Time", "## Hardware per trial",
                    "## Failed trials", "FloatingPointError: nan", "## Environment"):
        assert section in text
    for p in writeup.PLOTS:
        assert (run / p).stat().st_size > 1000


def test_report_builds_when_no_knob_varies_among_the_finished_trials(tmp_path):
    """Two seeds of one config finished, the other config FAILED: no importances to
    draw, and the page says nothing of them rather than failing."""
    run, _ = fake_results(tmp_path, S1)
    df = pd.read_parquet(run / "trials.parquet")
    df = df[df["trial_index"].isin([1, 4])]
    again = df[df["trial_index"] == 1].assign(trial_index=5, trial_id="t5", seed=2)
    pd.concat([df, again]).to_parquet(run / "trials.parquet")
    writeup.build(run)
    page = (run / "report.html").read_text()
    assert 'id="parallel"' in page and 'id="importances"' not in page
    assert "1 FAILED" in (run / "report.md").read_text()


def test_report_on_a_non_results_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no spec.yaml"):
        writeup.build(tmp_path)


def test_compare_names_the_metric_epoch_and_environment_that_differ(tmp_path):
    a, _ = fake_results(tmp_path / "a", S1)
    b, _ = fake_results(tmp_path / "b", S1)
    text, same = writeup.compare(a, b)
    assert same and "results identical" in text and "fingerprint identical" in text
    df = pd.read_parquet(b / "trials.parquet")
    # Trials may finish in another order: rows are matched by config, not position.
    df["trial_index"] = 4 - df["trial_index"]
    df.loc[(df["batch_size"] == 64) & (df["epoch"] == 2), "test_acc"] += 1e-9
    df["env_host"] = "other"
    df.to_parquet(b / "trials.parquet")
    text, same = writeup.compare(a, b)
    assert not same
    assert "test_acc: differs in 1 rows, first at epoch 2 of [batch_size=64 lr=1.0]" in text
    assert "environment host: h vs other" in text
    assert "train_loss" not in text.split("test_acc")[0]  # only what differs is named
