"""Sweep plumbing that needs no Ray cluster; end-to-end runs are in test_sweep.py."""

import pandas as pd

from raytune_ctr import spec as spec_lib
from raytune_ctr import tuner


def test_mixed_type_columns_become_text_for_parquet(tmp_path):
    df = pd.DataFrame({"channels_last": ["auto", True, None], "lr": [0.1, 0.2, 0.3],
                       "model": ["mlp", "mlp", "mlp"]})
    out = tuner.one_type_per_column(df.copy())
    assert out["channels_last"].tolist()[:2] == ["auto", "True"] and pd.isna(out["channels_last"][2])
    assert out["lr"].tolist() == [0.1, 0.2, 0.3]
    out.to_parquet(tmp_path / "t.parquet")


def test_collected_rows_write_to_parquet_with_or_without_prices(tmp_path):
    from types import SimpleNamespace

    epoch = {"epoch": 1, "test_acc": 90.0, "train_time_s": 1.0, "env_host": "h"}
    result = SimpleNamespace(config={"lr": 0.5}, path=str(tmp_path / "run_t1_00000"),
                             metrics={"trial_id": "t1"}, error=None,
                             metrics_dataframe=pd.DataFrame([epoch]), filesystem=None)
    for resources in ({}, {"node_hour_usd": {"cpu": 0.4}, "node_cpus": 4.0}):
        spec = spec_lib.from_dict({"resources": resources, "search": {"grid": {"lr": [0.5]}}})
        df = tuner.collect([result], spec)
        assert df["lr"].tolist() == [0.5] and "node_hour_usd" not in df  # prices: spec.yaml
        df.to_parquet(tmp_path / "trials.parquet")


def test_smoke_keeps_two_configs_one_epoch_small_data():
    s = spec_lib.load("experiments/configs/s2_epochs_lr_batch.yaml")
    small = tuner.smoke(s)
    assert small.train.epochs == 1 and small.data.subset == 512
    assert small.grid_points() == [{}, {}]  # epochs, the only searched key here, is pinned
    q = tuner.smoke(spec_lib.load("experiments/configs/quickstart.yaml"))
    assert q.search.num_samples == 2 and "epochs" not in q.search.space
    spec_lib.from_dict(q.to_dict())  # still a valid spec


def test_grid_space_holds_every_searched_key(tmp_path):
    s = spec_lib.load("experiments/configs/s1_batch_lr.yaml")
    space, gen, n = tuner._search(s, tmp_path, concurrency=1)
    assert space == {"batch_size": 64, "lr": 1.0} and n == 5


def test_asha_can_count_train_seconds():
    s = spec_lib.from_dict({"search": {"scheduler": "asha", "asha": {
        "time_attr": "train_time_s", "max_t": 60.0, "grace_period": 5.0}}})
    sched = tuner._scheduler(s)
    assert (sched._time_attr, sched._metric, sched._mode) == ("train_time_s", "test_acc", "max")
    assert tuner._scheduler(spec_lib.from_dict({})) is None


def test_one_trial_waits_beside_those_that_fit_unless_the_limit_is_the_users():
    s = spec_lib.from_dict({"search": {"method": "grid", "grid": {"seed": [0, 1, 2]}}})
    assert tuner._live_trials(s, 2) == 3  # the third is staged: it takes over a process
    capped = spec_lib.from_dict({"search": {"method": "grid", "max_concurrent": 1}})
    assert tuner._live_trials(capped, 1) == 1
    det = spec_lib.from_dict({"train": {"deterministic": True}, "search": {
        "method": "optuna", "space": {"lr": {"loguniform": [0.1, 1.0]}}}})
    assert tuner._live_trials(det, 1) == 1


def test_a_trial_goes_on_from_its_newest_whole_checkpoint(tmp_path):
    import json

    from pyarrow import fs

    from raytune_ctr import train, trial

    for epoch in (1, 2, 3):
        d = tmp_path / f"checkpoint_{epoch - 1:06d}"
        d.mkdir()
        files = train.state_files({"epoch": epoch, "history": [{"epoch": e} for e in
                                                               range(1, epoch + 1)]})
        for name, raw in files.items():
            (d / name).write_bytes(raw)
    # A kill cut the newest one short: the one before it is taken.
    newest = tmp_path / "checkpoint_000002" / trial.STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])
    found = trial.newest_checkpoint(fs.LocalFileSystem(), str(tmp_path))
    assert [e["epoch"] for e in json.loads(found[trial.HISTORY_FILE])] == [1, 2]
    assert train.load_state(found[trial.STATE_FILE])["epoch"] == 2
    assert trial.newest_checkpoint(fs.LocalFileSystem(), str(tmp_path / "none")) is None
