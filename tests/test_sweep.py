"""End to end on a real local Ray cluster: Tune trials that each run a Ray Train job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from raytune_ctr import writeup

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=os.environ.copy())
    return proc


def trials(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "trials.parquet")
    return df.sort_values(["trial_index", "epoch"])


def test_grid_with_ddp_trial_and_a_crash(write_spec, tmp_path, journal, monkeypatch):
    data_dir = tmp_path / "data"
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RAYTUNE_CTR_TRACE", str(trace))
    spec = write_spec({
        "name": "it-grid",
        "data": {"dataset": "digits", "data_dir": str(data_dir)},
        "train": {"model": "mlp", "hidden": [32], "epochs": 2, "optimizer": "adam", "lr": 0.01,
                  "lr_schedule": "none"},
        "search": {"method": "grid", "objectives": {"test_acc": "max", "train_time_s": "min"},
                   "points": [{"num_workers": 2, "batch_size": 64},
                              {"num_workers": 1, "batch_size": 64},
                              {"num_workers": 1, "optimizer": "sgd", "lr": 1.0e12}]},
        "report": {"target_acc": 80.0},
    })
    proc = run("experiments/sweep.py", "--config", spec, "--storage-path", tmp_path / "res",
               "--name", "grid")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "res" / "grid"
    df = trials(out)
    status = df.groupby("trial_index")["status"].first().tolist()
    assert status == ["COMPLETED", "COMPLETED", "FAILED"]

    ddp, single, crashed = (df[df["trial_index"] == i] for i in range(3))
    assert ddp["epoch"].tolist() == [1, 2] and (ddp["num_workers"] == 2).all()
    # DDP really split the data: 1347 training images, padded to 1348 for two ranks.
    assert (ddp["samples_per_s"] * ddp["epoch_time_s"]).round().tolist() == [1348, 1348]
    assert (single["samples_per_s"] * single["epoch_time_s"]).round().tolist() == [1347, 1347]
    assert single["test_acc"].iloc[-1] > 80.0
    # A crash is FAILED with its error, never a score.
    assert "train_loss is nan" in crashed["error"].iloc[0]
    assert crashed["test_acc"].isna().all()
    assert {"env_host", "env_torch", "env_ray", "env_cpu_model"} <= set(df.columns)
    # A trial process that waits for the 2-worker pool pays its first set-up's imports
    # (torch._dynamo) while it waits, not on its first trial's clock.
    marks = [json.loads(line) for line in trace.read_text().splitlines()]
    waited = {m["pid"] for m in marks if m["phase"] == "pools_up"}
    assert waited
    for pid in waited:
        phases = [m["phase"] for m in marks if m["pid"] == pid]
        assert phases.index("trial_warm") < phases.index("pools_up") \
            < phases.index("setup_start"), phases

    text = (out / "report.md").read_text()
    assert "## Pareto-optimal configurations" in text and "train_loss is nan" in text
    for p in writeup.PLOTS:
        assert (out / p).is_file()
    study = optuna.load_study(study_name="grid", storage=journal(out))
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"] and len(study.directions) == 2

    # The report rebuilds from the saved results alone.
    (out / "report.md").unlink()
    proc = run("-m", "raytune_ctr.cli", "report", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.md").read_text() == text


def test_optuna_nsga2_with_asha(write_spec, tmp_path, journal):
    spec = write_spec({
        "name": "it-optuna",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [32], "epochs": 3, "optimizer": "adam",
                  "lr_schedule": "none"},
        "search": {"method": "optuna", "num_samples": 3,
                   "objectives": {"test_acc": "max", "train_time_s": "min"},
                   "scheduler": "asha",
                   "asha": {"time_attr": "epoch", "grace_period": 1, "reduction_factor": 2},
                   "space": {"lr": {"loguniform": [1.0e-3, 1.0e-1]},
                             "batch_size": {"choice": [32, 64]}}},
    })
    proc = run("experiments/sweep.py", "--config", spec, "--storage-path", tmp_path / "res",
               "--name", "opt")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "res" / "opt"
    df = trials(out)
    assert df["trial_index"].nunique() == 3
    assert set(df["status"]) <= {"COMPLETED", "STOPPED"}
    study = optuna.load_study(study_name="opt", storage=journal(out))
    assert len(study.trials) == 3 and len(study.directions) == 2
    assert all(1e-3 <= t.params["lr"] <= 1e-1 for t in study.trials)
    # Tune keeps running statistics only of what it acts on (packing.py); the table
    # still has every metric.
    state = json.loads(next(out.glob("experiment_state-*.json")).read_text())
    analysed = set().union(*(json.loads(meta)["metric_analysis"]
                             for _, meta in state["trial_data"]))
    assert {"test_acc", "train_time_s", "epoch"} <= analysed
    assert not analysed & {"samples_per_s", "test_loss", "tflops", "env_cpu_count"}
    assert df["samples_per_s"].notna().all() and df["test_loss"].notna().all()
    # TensorBoard (Tune's logger, given each result unpacked) has them too.
    events = b"".join(p.read_bytes() for p in out.rglob("events.out.tfevents.*"))
    assert b"ray/tune/test_loss" in events and b"ray/tune/samples_per_s" in events


def test_quickstart_smoke_is_the_readme_job_in_small(tmp_path, monkeypatch):
    """`python experiments/sweep.py --smoke`: the default config, two trials, one epoch."""
    monkeypatch.setenv("RAYTUNE_CTR_DATA", str(tmp_path / "data"))
    proc = run("experiments/sweep.py", "--smoke", "--storage-path", tmp_path, "--name", "smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = trials(tmp_path / "smoke")
    assert df["trial_index"].nunique() == 2 and (df["epoch"] == 1).all()
    assert (tmp_path / "smoke" / "report.md").is_file()
    assert (tmp_path / "smoke" / "report.html").is_file() and (tmp_path / "smoke" / "knobs.csv").is_file()
    assert "Fastest configuration" in proc.stdout or "No configuration reached" in proc.stdout
    # The live view, not Tune's boxes of 40 metrics: the whole run fits a screen or two.
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) < 80, "\n".join(lines)
    assert "trials done" in proc.stdout and "tensorboard --logdir" in proc.stdout


def test_smoke_to_a_uri_storage_path(tmp_path, monkeypatch):
    """`--storage-path file://...` (gs:// in the cloud): Tune, Train and the tables all
    land at the URI, and a local copy under results/ holds the report."""
    monkeypatch.setenv("RAYTUNE_CTR_DATA", str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, ROOT / "experiments" / "sweep.py", "--smoke",
         "--config", ROOT / "experiments" / "configs" / "quickstart.yaml",
         "--storage-path", f"file://{tmp_path}/bucket/prefix", "--name", "smoke"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    remote, local = tmp_path / "bucket" / "prefix" / "smoke", tmp_path / "results" / "smoke"
    assert trials(remote).equals(trials(local))
    assert {"report.md", "spec.yaml", "optuna.journal", "trials.csv"} <= {p.name for p in remote.iterdir()}
    assert any(remote.glob("experiment_state-*.json"))  # Tune's own state, written there
    assert any(remote.glob("trial_*/checkpoint_*/state.pt"))  # each trial's epoch checkpoints


def test_every_trial_failing_exits_1_and_still_writes_the_report(write_spec, tmp_path):
    spec = write_spec({
        "name": "all-fail",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [16], "epochs": 1, "optimizer": "sgd", "lr": 1.0e12,
                  "lr_schedule": "none"},
        "search": {"method": "grid", "max_failures": 0},
    })
    proc = run("experiments/sweep.py", "--config", spec, "--storage-path", tmp_path / "res",
               "--name", "bad")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: all 1 trials failed; see ")
    df = trials(tmp_path / "res" / "bad")
    assert df["status"].tolist() == ["FAILED"] and df["test_acc"].isna().all()
    assert "train_loss is nan" in (tmp_path / "res" / "bad" / "report.md").read_text()


def test_target_mode_races_to_the_target_and_answers_with_its_confidence(write_spec, tmp_path, journal):
    """The quickstart's space in target mode, smaller: trials stop at the target or when
    capped, Optuna is told time and constraint, the finalists run again with seeds, and
    the answer comes with its confidence in report.md, report.html and the command's
    output."""
    import yaml

    with open(ROOT / "experiments/configs/quickstart_target.yaml") as f:
        mapping = yaml.safe_load(f)
    mapping["train"]["epochs"] = 6
    mapping["search"]["num_samples"] = 5
    mapping["search"]["space"]["batch_size"] = {"choice": [64, 128]}
    mapping["search"]["goal"]["finalists"] = {"seeds": [2]}
    spec = write_spec(mapping)
    proc = run("experiments/sweep.py", "--config", spec, "--storage-path", tmp_path / "res",
               "--name", "goal")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "res" / "goal"
    df = trials(out)
    last = df.groupby("trial_index").tail(1)
    assert set(last["status"]) <= {"COMPLETED", "STOPPED"}
    log = [e["event"] for e in writeup.target_mode.events(out)]
    reached = df.groupby("trial_index")["test_acc"].max() >= 95
    assert log.count("reached") >= 1 and "finalists" in log
    assert reached.any()
    rule = writeup.target_mode.rule(writeup.results.load_spec(out))
    for _, rows in df.groupby("trial_index"):
        curve = list(zip(rows["train_time_s"], rows["test_acc"], strict=True))
        known = [k for k in range(1, len(curve) + 1)
                 if writeup.target_mode.crossing(curve[:k], rule) is not None]
        # a trial stops at the evaluation that confirms its crossing, not later
        assert not known or known[0] == len(curve)
    study = optuna.load_study(study_name="goal", storage=journal(out))
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == 5  # the race's reruns are not Optuna's trials
    assert all("target" in t.constraints for t in told)
    # the race ran each finalist with a second seed
    assert df.groupby("trial_index")["seed"].first().nunique() == 2
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for text in (md, page, proc.stdout):
        assert "Fastest to test_acc ≥ 95" in text or "No configuration reached" in text
        assert "Compute:" in text
    assert "Confidence:" in md and "Confidence:" in page
