import dataclasses

import pytest

from raytune_ctr import checks
from raytune_ctr import spec as spec_lib
from raytune_ctr.spec import SpecError


def test_defaults_are_valid_and_round_trip(tmp_path):
    s = checks.from_dict({})
    spec_lib.dump(s, tmp_path / "s.yaml")
    assert checks.load(tmp_path / "s.yaml") == s


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path("experiments/configs").glob("*.yaml")))
def test_every_experiment_file_loads(path):
    s = checks.load(path)
    assert s.name and s.search.objectives


def test_quickstart_meets_its_promises():
    s = checks.load("experiments/configs/quickstart.yaml")
    assert s.data.dataset == "digits"
    assert s.search.num_samples >= 8
    assert set(s.search.space["num_workers"].choice) == {1, 2}
    assert len(s.search.objectives) == 2


def test_s1_has_the_five_hand_run_configs():
    s = checks.load("experiments/configs/s1_batch_lr.yaml")
    got = [(p["batch_size"], p["lr"]) for p in s.grid_points()]
    assert got == [(32, 1.0), (64, 1.0), (128, 1.0), (128, 1.5), (32, 0.5)]
    assert s.train.model == "mnist_cnn" and s.train.optimizer == "adadelta" and s.train.gamma == 0.7


def test_grid_is_product_then_points():
    s = checks.from_dict({"search": {"grid": {"batch_size": [32, 64], "lr": [0.5, 1.0]},
                                       "points": [{"batch_size": 8}]}})
    assert s.grid_points() == [{"batch_size": 32, "lr": 0.5}, {"batch_size": 32, "lr": 1.0},
                               {"batch_size": 64, "lr": 0.5}, {"batch_size": 64, "lr": 1.0},
                               {"batch_size": 8}]
    train, res = s.resolve({"batch_size": 8, "num_workers": 2})
    assert train.batch_size == 8 and res.num_workers == 2


BAD = [
    ({"train": {"lr": 0}}, "train.lr", "greater than 0"),
    ({"train": {"lr": -1.0}}, "train.lr", "-1.0"),
    ({"train": {"batch_size": 0}}, "train.batch_size", "0"),
    ({"train": {"batch_size": "64"}}, "train.batch_size", "'64'"),
    ({"train": {"lrr": 1.0}}, "train.lrr", "did you mean 'lr'"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer", "'rmsprop'"),
    ({"resources": {"use_gpu": "yes"}}, "resources.use_gpu", "'yes'"),
    ({"data": {"dataset": "cifar"}}, "data.dataset", "'cifar'"),
    ({"train": {"model": "vgg"}}, "train.model", "'vgg'"),
    ({"train": {"model": "alexnet"}}, "train.model", "at least 63x63"),
    ({"search": {"method": "optuna", "grid": {"lr": [0.1, 1.0]},
                 "space": {"batch_size": {"choice": [32]}}}},
     "search.grid", "cannot be mixed into a optuna search"),
    ({"search": {"method": "grid", "space": {"lr": {"uniform": [0.1, 1.0]}}}},
     "search.space", "not `space`"),
    ({"search": {"method": "random", "space": {"lr": {"loguniform": [1.0, 0.1]}}}},
     "search.space.lr.loguniform", "low < high"),
    ({"search": {"method": "random", "space": {"lr": {"uniform": [-1.0, 1.0]}}}},
     "search.space.lr.uniform", "-1.0"),
    ({"search": {"method": "random", "space": {"lr": {"choice": [0.1], "uniform": [0.1, 1.0]}}}},
     "search.space.lr", "exactly one"),
    ({"search": {"grid": {"batch_size": [32, 0]}}}, "search.grid.batch_size[1]", "0"),
    ({"search": {"grid": {"bach_size": [32]}}}, "search.grid.bach_size", "did you mean 'batch_size'"),
    ({"search": {"points": [{"num_workers": 0}]}}, "search.points[0].num_workers", "0"),
    ({"search": {"objectives": {"accuracy": "max"}}}, "search.objectives.accuracy", "unknown metric"),
    ({"search": {"objectives": {"test_acc": "up"}}}, "search.objectives.test_acc", "'up'"),
    ({"search": {"scheduler": "asha", "asha": {"time_attr": "train_time_s"}}},
     "search.asha.max_t", "required"),
    ({"train": {"epochs": 3}, "search": {"scheduler": "asha", "asha": {"grace_period": 4.0}}},
     "search.asha.grace_period", "at most max_t (3"),
    ({"search": {"method": "random"}}, "search.space", "at least one dimension"),
    ({"train": {"batch_size": 2}, "resources": {"num_workers": 4}}, "train.batch_size", "2"),
    ({"train": "fast"}, "train", "'fast'"),
    # An objective every trial must report, or Tune stops the sweep at the first result.
    ({"search": {"objectives": {"cost_usd": "min"}}}, "search.objectives.cost_usd",
     "needs a CPU node price for every trial"),
    ({"search": {"objectives": {"mfu": "max"}}}, "search.objectives.mfu", "GPU only"),
    ({"search": {"objectives": {"gpu_util": "max"}, "grid": {"use_gpu": [True, False]}}},
     "search.objectives.gpu_util", "GPU only"),
    ({"cost": {"node_hour_usd": {"cpu": 0.4}}}, "cost.node_cpus",
     "is needed with a CPU node price"),
    ({"cost": {"node_hour_usd": {"tpu": 4.0}}}, "cost.node_hour_usd.tpu", "tpu"),
    ({"cost": {"market": "spot", "node_hour_usd": {"cpu": 0.4}, "node_cpus": 4.0}},
     "cost.market", "'spot'"),
    ({"search": {"grid": {"market": ["spot"]}}}, "search.grid.market", "not a train or resources"),
    ({"resources": {"node_hour_usd": {"cpu": 0.4}}}, "resources.node_hour_usd",
     "unknown key"),
]


@pytest.mark.parametrize("mapping,key,fragment", BAD)
def test_bad_spec_names_key_and_value_on_one_line(mapping, key, fragment):
    with pytest.raises(SpecError) as e:
        checks.from_dict(mapping)
    msg = str(e.value)
    assert msg.startswith(key + ":"), msg
    assert fragment in msg, msg
    assert "\n" not in msg


def test_command_line_overrides_are_validated_with_the_file(write_spec):
    path = write_spec("search: {objectives: {mfu: max}}\n")
    with pytest.raises(SpecError, match="search.objectives.mfu: is measured on a GPU only"):
        checks.load(path)
    # A peak given on the command line makes MFU measurable on the CPU.
    s = checks.load(path, overrides={"resources": {"peak_tflops": 1.5}, "report": {}})
    assert s.resources.peak_tflops == 1.5


def test_bad_yaml_and_missing_file(write_spec, tmp_path):
    with pytest.raises(SpecError, match="is not valid YAML at line 3"):
        checks.load(write_spec("train:\n  lr: [1,\n"))
    with pytest.raises(SpecError, match="no such file"):
        checks.load(tmp_path / "missing.yaml")


def test_specs_are_frozen():
    s = checks.from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.train.lr = 2.0  # type: ignore[misc]


def test_text_datasets_take_text_models_without_channels_last():
    with pytest.raises(SpecError, match="train.channels_last: is for conv nets"):
        checks.from_dict({"data": {"dataset": "glue-mrpc"},
                            "train": {"model": "distilbert-base-uncased", "channels_last": True}})
    with pytest.raises(SpecError, match="an image dataset .digits. needs an image model"):
        checks.from_dict({"train": {"model": "hf:/some/folder"}})


def test_smoke_keeps_two_configs_one_epoch_small_data():
    s = checks.load("experiments/configs/s2_epochs_lr_batch.yaml")
    small = spec_lib.smoke(s)
    assert small.train.epochs == 1 and small.data.subset == 512
    assert small.grid_points() == [{}, {}]  # epochs, the only searched key here, is pinned
    q = spec_lib.smoke(checks.load("experiments/configs/quickstart.yaml"))
    assert q.search.num_samples == 2 and "epochs" not in q.search.space
    checks.from_dict(q.to_dict())  # still a valid spec


@pytest.mark.parametrize("kw,share", [
    # GPU trials pay their GPUs' share of a GPU node, whose price covers its CPUs.
    ({"use_gpu": True, "num_workers": 2, "gpus_per_worker": 0.5, "cpus_per_worker": 4.0}, 1 / 8),
    ({"num_workers": 2, "cpus_per_worker": 4.0}, 8 / 16),
    ({"num_workers": 4, "cpus_per_worker": 8.0}, 2.0),  # more than one node
])
def test_a_trial_pays_its_share_of_a_node(kw, share):
    from raytune_ctr.spec import CostSpec, ResourceSpec, hour_usd

    cost = CostSpec(node_hour_usd={"cpu": 0.8, "gpu": 24.0},
                    spot_node_hour_usd={"cpu": 0.2, "gpu": 8.0}, node_cpus=16.0, node_gpus=8.0)
    r = ResourceSpec(**kw)
    price = 24.0 if r.use_gpu else 0.8
    assert hour_usd(r, cost) == pytest.approx(price * share)
    spot = dataclasses.replace(cost, market="spot")
    assert hour_usd(r, spot) == pytest.approx((8.0 if r.use_gpu else 0.2) * share)
    assert hour_usd(r, CostSpec()) is None


@pytest.mark.parametrize("search,baseline,fragments", [
    ({}, {"lr": float("nan")}, ["report.baseline.lr", "finite"]),
    ({}, {"lrr": 0.1}, ["report.baseline.lrr", "did you mean 'lr'"]),
    ({"method": "grid", "grid": {"batch_size": [32, 64]}}, {"batch_size": 128},
     ["report.baseline", "matches no configuration of the grid"]),
    ({"method": "grid", "grid": {"batch_size": [32, 64]}}, {"batch_size": 64, "lr": 0.5},
     ["report.baseline", "matches no configuration"]),
    ({"method": "optuna", "space": {"batch_size": {"choice": [32, 64]}}}, {"batch_size": 16},
     ["report.baseline.batch_size", "not one of the choices [32, 64]"]),
    ({"method": "random", "space": {"lr": {"loguniform": [0.01, 0.1]}}}, {"lr": 0.5},
     ["report.baseline.lr", "outside the range [0.01, 0.1]"]),
    ({"method": "random", "space": {"lr": {"loguniform": [0.01, 0.1]}}}, {"epochs": 9},
     ["report.baseline.epochs", "not searched"]),
])
def test_a_baseline_no_trial_can_match_is_refused_before_any_compute(search, baseline, fragments):
    with pytest.raises(SpecError) as err:
        checks.from_dict({"search": search, "report": {"baseline": baseline}})
    for f in fragments:
        assert f in str(err.value), str(err.value)


@pytest.mark.parametrize("search,baseline", [
    ({"method": "grid", "grid": {"batch_size": [32, 64]}}, {"batch_size": 64}),
    ({"method": "grid", "grid": {"batch_size": [32]}, "points": [{"batch_size": 8}]},
     {"batch_size": 8}),
    ({"method": "random", "space": {"lr": {"loguniform": [0.01, 0.1]}}}, {"lr": 0.1}),
    ({"method": "optuna", "space": {"batch_size": {"choice": [32, 64]}}}, {"batch_size": 32}),
])
def test_a_baseline_the_sweep_can_run_is_accepted(search, baseline):
    s = checks.from_dict({"search": search, "report": {"baseline": baseline}})
    assert s.report.baseline == baseline


def test_every_study_file_still_checks_after_smoke():
    """--smoke keeps two configurations: a baseline among those left out is dropped
    (the report then compares against the first), never an error."""
    for path in sorted(__import__("pathlib").Path("experiments/configs").glob("*.yaml")):
        small = spec_lib.smoke(checks.load(path))
        assert checks.from_dict(small.to_dict()) == small, path
    wide = checks.load("experiments/configs/s1_wide_grid.yaml")
    assert wide.report.baseline and spec_lib.smoke(wide).report.baseline == {}


def test_a_null_baseline_in_a_range_is_one_line():
    with pytest.raises(SpecError, match="report.baseline.threads_per_worker: is outside"):
        checks.from_dict({"search": {"method": "random", "space": {
            "threads_per_worker": {"randint": [1, 4]}}},
            "report": {"baseline": {"threads_per_worker": None}}})


def test_a_saved_spec_whose_baseline_matches_nothing_still_reads(tmp_path):
    """Folders written before the baseline check: the report warns, as it did."""
    (tmp_path / "spec.yaml").write_text(
        "search: {grid: {lr: [0.1, 0.2]}}\nreport: {baseline: {lr: 0.3}}\n")
    assert spec_lib.load(tmp_path / "spec.yaml", saved=True).report.baseline == {"lr": 0.3}
    with pytest.raises(SpecError, match="report.baseline"):
        checks.load(tmp_path / "spec.yaml")
