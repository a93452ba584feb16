import math

import pytest
import torch

from raytune_ctr.spec import DataSpec, TrainSpec
from raytune_ctr.train import METRICS, fit, make_optimizer, make_schedule


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_mnist_cnn_learns_digits_and_reports_every_metric(digits_dir):
    seen = []
    hist = fit(DataSpec(data_dir=digits_dir), TrainSpec(epochs=2, batch_size=32), report=seen.append)
    assert seen == hist and [m["epoch"] for m in hist] == [1, 2]
    assert hist[-1]["test_acc"] > 85.0
    assert METRICS - {"peak_cuda_mb"} <= set(hist[-1])
    m = hist[-1]
    assert math.isclose(m["train_time_s"], hist[0]["epoch_time_s"] + m["epoch_time_s"])
    assert 0 <= m["data_time_s"] <= m["epoch_time_s"]
    assert m["samples_per_s"] == pytest.approx(1347 / m["epoch_time_s"])
    assert m["peak_rss_mb"] > 50 and m["env_torch"] == torch.__version__


def test_same_seed_same_numbers(digits_dir):
    spec = TrainSpec(model="mlp", epochs=1, batch_size=64, optimizer="adam", lr=1e-3, seed=3)
    a = fit(DataSpec(data_dir=digits_dir), spec)[0]
    b = fit(DataSpec(data_dir=digits_dir), spec)[0]
    assert (a["train_loss"], a["test_acc"]) == (b["train_loss"], b["test_acc"])


def test_divergence_raises_instead_of_reporting_a_score(digits_dir):
    spec = TrainSpec(model="mlp", epochs=1, optimizer="sgd", lr=1e12)
    with pytest.raises(FloatingPointError, match="train_loss is nan"):
        fit(DataSpec(data_dir=digits_dir), spec)


@pytest.mark.parametrize("opt", ["adadelta", "sgd", "adam", "adamw"])
@pytest.mark.parametrize("sched", ["step", "onecycle", "none"])
def test_every_optimizer_and_schedule_steps(opt, sched):
    net = torch.nn.Linear(4, 2)
    spec = TrainSpec(optimizer=opt, lr_schedule=sched, lr=0.1, epochs=2)
    o = make_optimizer(spec, net.parameters())
    s, per_batch = make_schedule(spec, o, steps_per_epoch=3)
    for _ in range(6 if per_batch else 2):
        net(torch.randn(8, 4)).sum().backward()
        o.step()
        if s is not None:
            s.step()
    assert per_batch == (sched == "onecycle")
