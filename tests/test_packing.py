"""What a trial hands Tune (packing.py): the keys Tune acts on as they are, the rest
in one string that comes back unchanged, in the driver and from Tune's record."""

import math

import numpy as np
import pandas as pd
import pytest
from ray.tune import Result

from raytune_ctr import packing, results
from raytune_ctr import spec as spec_lib


def _spec(search: dict):
    return spec_lib.from_dict({"name": "p", "data": {"dataset": "digits"},
                               "train": {"model": "mlp", "epochs": 3}, "search": search})


def test_tune_sees_only_what_its_searcher_scheduler_and_stopper_read():
    spec = _spec({"method": "optuna", "num_samples": 2,
                  "objectives": {"test_acc": "max", "train_time_s": "min"},
                  "scheduler": "asha", "asha": {"time_attr": "epoch"},
                  "space": {"lr": {"loguniform": [1.0e-3, 1.0e-1]}}})
    assert packing.tune_keys(spec) == ["epoch", "test_acc", "train_time_s"]
    metrics = {"epoch": 2, "test_acc": 91.5, "train_time_s": 1.25, "test_loss": 0.3,
               "samples_per_s": 1234.5, "env_cpu_model": "Xeon", "channels_last_used": False,
               "retry_error": None, "train_loss": math.nan, "tflops": np.float32(0.5)}
    packed = packing.pack(metrics, packing.tune_keys(spec))
    assert set(packed) == {"epoch", "test_acc", "train_time_s", packing.PACKED}
    assert isinstance(packed[packing.PACKED], str)
    back = packing.unpack(packed)
    assert set(back) == set(metrics) and math.isnan(back["train_loss"])
    assert {k: v for k, v in back.items() if k != "train_loss"} == \
        {k: (float(v) if k == "tflops" else v) for k, v in metrics.items() if k != "train_loss"}


def test_target_mode_keeps_its_metric_and_clock():
    spec = _spec({"method": "optuna", "objectives": {"test_acc": "max"},
                  "goal": {"target": {"test_acc": 90.0}, "minimize": "wall_time_s",
                           "budget": {"trials": 4}},
                  "space": {"lr": {"loguniform": [1.0e-3, 1.0e-1]}}})
    assert {"test_acc", "wall_time_s", "epoch"} <= set(packing.tune_keys(spec))


def test_a_value_json_cannot_hold_is_an_error_not_text():
    with pytest.raises(TypeError, match="must be a number, text or bool"):
        packing.pack({"epoch": 1, "weights": object()}, ["epoch"])


def test_unpacking_what_was_never_packed_changes_nothing():
    assert packing.unpack({"epoch": 1, "test_acc": 50.0}) == {"epoch": 1, "test_acc": 50.0}
    assert packing.unpack({"epoch": 1, packing.PACKED: math.nan}) == {"epoch": 1}


def test_the_table_from_tunes_record_unpacks_each_epoch():
    """After a resume the table is built from Tune's record, whose rows hold the
    packed string as Tune saved it."""
    spec = _spec({"method": "grid", "grid": {"lr": [0.01]}})
    keep = packing.tune_keys(spec)
    rows = [packing.pack({"epoch": e, "test_acc": 80.0 + e, "samples_per_s": 100.0 * e,
                          "trial_id": "abc"}, keep) for e in (1, 2, 3)]
    r = Result(metrics=rows[-1], checkpoint=None, path="/nowhere/trial_abc", error=None,
               metrics_dataframe=pd.DataFrame(rows))
    df = results.table([(0, r)], ["TERMINATED"], spec)
    assert df["samples_per_s"].tolist() == [100.0, 200.0, 300.0]
    assert df["test_acc"].tolist() == [81.0, 82.0, 83.0] and packing.PACKED not in df
    assert set(df["status"]) == {"COMPLETED"}


def test_a_packed_value_wins_over_nan_in_a_record_resumed_across_the_change():
    """Tune's record of a sweep started before packing: older rows made columns that
    newer rows fill with NaN."""
    row = {"epoch": 3, "test_loss": math.nan,
           packing.PACKED: '{"test_loss": 0.25, "samples_per_s": 9.5}'}
    assert packing.unpack(row) == {"epoch": 3, "test_loss": 0.25, "samples_per_s": 9.5}


def test_an_array_is_an_error_not_a_number():
    with pytest.raises(TypeError, match="not ndarray"):
        packing.pack({"epoch": 1, "losses": np.array([0.1, 0.2])}, ["epoch"])
