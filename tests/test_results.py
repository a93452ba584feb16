"""The results folder: where it lives, the trials table, the checkpoints read back."""

import os

import pandas as pd
import pytest

from raytune_ctr import checks, results
from raytune_ctr.results import Results
from raytune_ctr.spec import SpecError


def test_mixed_type_columns_become_text_for_parquet(tmp_path):
    df = pd.DataFrame({"channels_last": ["auto", True, None], "lr": [0.1, 0.2, 0.3],
                       "model": ["mlp", "mlp", "mlp"]})
    out = results.one_type_per_column(df.copy())
    assert out["channels_last"].tolist()[:2] == ["auto", "True"] and pd.isna(out["channels_last"][2])
    assert out["lr"].tolist() == [0.1, 0.2, 0.3]
    out.to_parquet(tmp_path / "t.parquet")


def test_collected_rows_write_to_parquet_with_or_without_prices(tmp_path):
    from types import SimpleNamespace

    epoch = {"epoch": 1, "test_acc": 90.0, "train_time_s": 1.0, "env_host": "h"}
    result = SimpleNamespace(config={"lr": 0.5}, path=str(tmp_path / "run_t1_00000"),
                             metrics={"trial_id": "t1"}, error=None,
                             metrics_dataframe=pd.DataFrame([epoch]), filesystem=None)
    for cost in ({}, {"node_hour_usd": {"cpu": 0.4}, "node_cpus": 4.0}):
        spec = checks.from_dict({"cost": cost, "search": {"grid": {"lr": [0.5]}}})
        df = results.collect([result], spec)
        assert df["lr"].tolist() == [0.5] and "node_hour_usd" not in df  # prices: spec.yaml
        df.to_parquet(tmp_path / "trials.parquet")


def test_a_trial_goes_on_from_its_newest_whole_checkpoint(tmp_path):
    import json

    from pyarrow import fs

    from raytune_ctr import train

    for epoch in (1, 2, 3):
        d = tmp_path / f"checkpoint_{epoch - 1:06d}"
        d.mkdir()
        files = train.state_files({"epoch": epoch, "history": [{"epoch": e} for e in
                                                               range(1, epoch + 1)]})
        for name, raw in files.items():
            (d / name).write_bytes(raw)
    # A kill cut the newest one short: the one before it is taken.
    newest = tmp_path / "checkpoint_000002" / results.STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])
    found = results.newest_checkpoint(fs.LocalFileSystem(), str(tmp_path))
    assert [e["epoch"] for e in json.loads(found[results.HISTORY_FILE])] == [1, 2]
    assert train.load_state(found[results.STATE_FILE])["epoch"] == 2
    assert results.newest_checkpoint(fs.LocalFileSystem(), str(tmp_path / "none")) is None


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_a_killed_drivers_record_may_name_a_replaced_checkpoint(tmp_path, uri):
    import json

    from ray import tune

    from raytune_ctr import reporter, script

    # Tune's record names checkpoint 1; Tune had already replaced it by 3 (and the
    # killed trial had begun 4). A finished trial keeps its only checkpoint, 0.
    run = tmp_path / "run"
    for trial, numbers in {"trial_a": [3, 4], "trial_b": [0]}.items():
        for n in numbers:
            (run / trial / f"checkpoint_{n:06d}").mkdir(parents=True)
    (run / "trial_a" / "checkpoint_000003" / reporter.META).write_text(json.dumps({"epoch": 4}))
    (run / "notes").mkdir()
    folder = f"file://{run}" if uri else str(run)
    made = results.stand_in_for_replaced(folder)
    assert sorted(made) == [f"{folder}/trial_a/checkpoint_{n:06d}" for n in (0, 1, 2)]
    assert sorted(p.name for p in (run / "trial_a").iterdir()) == [
        f"checkpoint_{n:06d}" for n in range(5)]
    # A script trial handed the stand-in goes on from the newest folder it reported.
    named = tune.Checkpoint(str(run / "trial_a" / "checkpoint_000001"))
    assert script._newest(named).path == str(run / "trial_a" / "checkpoint_000003")
    assert script._newest(None) is None
    # Or none: Tune saved its record before the trial's first checkpoint.
    assert script._newest(None, f"{folder}/trial_a").path == str(run / "trial_a" / "checkpoint_000003")
    assert script._newest(None, f"{folder}/trial_c") is None
    # Tune wrote into one stand-in (its next checkpoint): that one stays.
    (run / "trial_a" / "checkpoint_000002" / "state.pt").write_text("x")
    results.remove_stand_ins(made)
    assert sorted(p.name for p in (run / "trial_a").iterdir()) == [
        f"checkpoint_{n:06d}" for n in (2, 3, 4)]
    assert [p.name for p in (run / "trial_b").iterdir()] == ["checkpoint_000000"]


def test_a_uri_storage_path_keeps_a_local_copy_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = Results.new(f"file://{tmp_path}/bucket", "s1")
    assert where.local == tmp_path / results.LOCAL_RESULTS / "s1"
    assert where.remote == f"file://{tmp_path}/bucket/s1" == where.where
    (tmp_path / "bucket" / "s1").mkdir(parents=True)
    with pytest.raises(SpecError, match=f"results folder file://{tmp_path}/bucket/s1 already"):
        Results.new(f"file://{tmp_path}/bucket", "s1")
    with pytest.raises(SpecError, match="--storage-path: cannot use it"):
        Results.new("nosuchfs://bucket/prefix", "s1")
    local = Results.new(str(tmp_path / "runs"), "s1")
    assert (local.local, local.remote, local.tune_storage) == (tmp_path / "runs" / "s1", None,
                                                               str(tmp_path / "runs"))


def test_the_optuna_record_of_a_random_sweep_keeps_a_continuous_knob_as_a_range(tmp_path, journal):
    """Each trial's record stores its distributions: a list of every learning rate
    seen would grow with the trials, and so would each trial's write."""
    import optuna

    spec = checks.from_dict({"name": "rec", "search": {
        "method": "random", "num_samples": 8, "objectives": {"test_acc": "max"},
        "space": {"lr": {"loguniform": [0.001, 1.0]}, "batch_size": {"choice": [32, 64]}}}})
    lrs = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0]
    df = pd.DataFrame({"trial_index": range(8), "epoch": 1, "lr": lrs,
                       "batch_size": [32, 64] * 4, "test_acc": [50.0 + i for i in range(8)],
                       "status": ["COMPLETED"] * 7 + ["FAILED"], "error": [""] * 7 + ["boom"]})
    where = Results(str(tmp_path), "rec")
    where.local.mkdir(parents=True)
    results.record_optuna_study(df, spec, where)
    study = optuna.load_study(study_name="rec", storage=journal(where.local))
    ok = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(ok) == 7 and study.trials[-1].state == optuna.trial.TrialState.FAIL
    lr = ok[0].distributions["lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (0.001, 1.0)
    assert [t.params["lr"] for t in ok] == lrs[:7] and ok[1].params["batch_size"] == 64
    assert isinstance(ok[0].distributions["batch_size"],
                      optuna.distributions.CategoricalDistribution)
    assert study.trials[-1].user_attrs == {"status": "FAILED", "error": "boom"}


def test_the_optuna_record_keeps_an_optional_knob_searched_with_null(tmp_path, journal):
    """`threads_per_worker: [null, 1, 2, ...]`: the null rows are NaN in the table."""
    import optuna

    threads = [None, 1, 2, 3, 4, 6]
    spec = checks.from_dict({"name": "opt", "search": {
        "grid": {"threads_per_worker": threads}, "objectives": {"test_acc": "max"}}})
    df = pd.DataFrame({"trial_index": range(6), "epoch": 1,
                       "threads_per_worker": [float("nan"), 1.0, 2.0, 3.0, 4.0, 6.0],
                       "test_acc": [60.0 + i for i in range(6)],
                       "status": "COMPLETED", "error": ""})
    where = Results(str(tmp_path), "opt")
    where.local.mkdir(parents=True)
    results.record_optuna_study(df, spec, where)
    study = optuna.load_study(study_name="opt", storage=journal(where.local))
    assert [t.params["threads_per_worker"] for t in study.trials] == threads


def test_the_optuna_study_is_a_journal_and_an_older_folder_keeps_its_sqlite(tmp_path):
    """New folders keep the study in Optuna's journal file (no ORM, no SQLAlchemy); a
    folder made before it, resumed or reported on, goes on with its optuna.db."""
    import optuna

    from raytune_ctr import cli

    new, old = Results(str(tmp_path), "new"), Results(str(tmp_path), "old")
    for where in (new, old):
        where.local.mkdir(parents=True)
    assert isinstance(new.optuna_storage(), optuna.storages.JournalStorage)
    optuna.create_study(study_name="old", storage=f"sqlite:///{old.local / 'optuna.db'}")
    (old.local / "optuna.journal").touch()  # opened by hand, say: the db still holds it
    assert old.optuna_file == old.local / "optuna.db"
    assert isinstance(old.optuna_storage(), optuna.storages.RDBStorage)
    assert optuna.load_study(study_name="old", storage=old.optuna_storage()).study_name == "old"
    assert f"optuna-dashboard {new.local / 'optuna.journal'}" in cli._where(new.local)
    assert f"optuna-dashboard sqlite:///{old.local / 'optuna.db'}" in cli._where(old.local)


def test_a_resume_mends_a_journal_line_cut_short_and_a_stale_lock(tmp_path):
    """A disk that filled mid-write leaves half a line: Optuna would glue the next
    line to it and fail every read after. A driver killed mid-write leaves the lock."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    def add(study, value):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))

    where = Results(str(tmp_path), "cut")
    where.local.mkdir(parents=True)
    add(optuna.create_study(study_name="cut", storage=where.optuna_storage()), 1.0)
    path = where.local / "optuna.journal"
    with open(path, "ab") as f:
        f.write(b'{"op_code": 4, "worker_id": "x", "stu')
    lock = where.local / "optuna.journal.lock"
    lock.symlink_to(path)  # JournalFileSymlinkLock's, held by the dead driver
    unmended = tmp_path / "copy.journal"
    unmended.write_bytes(path.read_bytes())

    def journal(p):
        return JournalStorage(JournalFileBackend(str(p)))

    with pytest.raises((AttributeError, ValueError)):  # the first: Optuna 5.1's
        for value in (2.0, 3.0):
            add(optuna.load_study(study_name="cut", storage=journal(unmended)), value)

    where.mend_optuna_journal()
    assert not os.path.lexists(lock) and path.read_bytes().endswith(b"\n")
    add(optuna.load_study(study_name="cut", storage=where.optuna_storage()), 2.0)
    study = optuna.load_study(study_name="cut", storage=where.optuna_storage())
    assert [t.value for t in study.trials] == [1.0, 2.0]
    where.mend_optuna_journal()  # a whole journal is left as it is
    assert [t.value for t in optuna.load_study(
        study_name="cut", storage=where.optuna_storage()).trials] == [1.0, 2.0]


@pytest.mark.parametrize("broken", ["searcher-state-2026-12-07_08-24-07.pkl",
                                    "experiment_state-2026-12-07_08-24-07.json", None])
def test_a_resume_refuses_tunes_record_cut_short_and_changes_nothing(tmp_path, broken):
    """A head lost while Tune copied its record (before storage.whole_files) left files
    empty; Tune's resume would log it and run the whole sweep again in the folder."""
    import ray.cloudpickle as cloudpickle

    where = Results(str(tmp_path), "headloss")
    where.local.mkdir(parents=True)
    files = {"spec.yaml": b"name: headloss\n", "tuner.pkl": cloudpickle.dumps({"x": 1}),
             results.UNFINISHED: b'{"state": "running"}',
             "experiment_state-2026-12-07_08-24-07.json": b'{"runner_data": {}}',
             # an older session's: Tune reads only the newest of each kind
             "experiment_state-2026-12-06_10-00-00.json": b"",
             "search_gen_state-2026-12-07_08-24-07.json": cloudpickle.dumps({"counter": 4}),
             "searcher-state-2026-12-07_08-24-07.pkl": cloudpickle.dumps({"_space": {"lr": 1}})}
    if broken:
        files[broken] = files[broken][:len(files[broken]) // 2]
    for name, data in files.items():
        (where.local / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in where.local.iterdir()}
    if broken is None:
        assert Results.interrupted(str(tmp_path), "headloss").local == where.local
        return
    with pytest.raises(SpecError) as err:
        Results.interrupted(str(tmp_path), "headloss")
    line = str(err.value)
    assert line.startswith(f"--resume: Tune's record {broken} in {where.local} is cut short")
    assert "\n" not in line and line.endswith("got 'headloss'")
    assert {p.name: p.read_bytes() for p in where.local.iterdir()} == before
