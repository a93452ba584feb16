import dataclasses
import math

import pytest
import torch

from raytune_ctr.metrics import METRICS
from raytune_ctr.spec import DataSpec, ResourceSpec, TrainSpec
from raytune_ctr.train import Context, fit, make_optimizer, make_schedule


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_mnist_cnn_learns_digits_and_reports_every_metric(digits_dir):
    seen = []
    hist = fit(DataSpec(data_dir=digits_dir), TrainSpec(epochs=2, batch_size=32),
               ctx=Context(report=lambda m, state: seen.append(m)))
    assert seen == hist and [m["epoch"] for m in hist] == [1, 2]
    assert hist[-1]["test_acc"] > 85.0
    # GPU-only figures, cost without prices and F1 of a 10-class task are absent, not 0.
    assert set(METRICS) - {"peak_cuda_mb", "mfu", "gpu_util", "cost_usd", "test_f1"} <= set(hist[-1])
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


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("sched", ["step", "onecycle"])
def test_resumed_run_continues_bit_for_bit(digits_dir, sched):
    """Stop after epoch 2 of 4 keeping only the saved state; the rest of the run then
    matches an uninterrupted one exactly (weights, optimizer, schedule, dropout RNG)."""
    import io

    spec = TrainSpec(model="mnist_cnn", epochs=4, batch_size=64, lr_schedule=sched, seed=5,
                     deterministic=True)
    whole = fit(DataSpec(data_dir=digits_dir), spec)
    saved = {}

    def stop_after_2(metrics, state):
        if metrics["epoch"] == 2:
            buf = io.BytesIO()
            torch.save(state, buf)  # what train_func writes: a copy, not live tensors
            saved["state"] = buf.getvalue()
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(DataSpec(data_dir=digits_dir), spec, ctx=Context(report=stop_after_2))
    state = torch.load(io.BytesIO(saved["state"]), weights_only=False)
    rest = fit(DataSpec(data_dir=digits_dir), spec, state=state)
    keys = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert [[m[k] for k in keys] for m in rest] == [[m[k] for k in keys] for m in whole[2:]]
    assert [m["resumed_from_epoch"] for m in rest] == [2, 2]
    assert rest[0]["train_time_s"] > state["metrics"]["train_time_s"]  # the clock goes on
    # and the bill: the saved time, the restart's set-up, then the epoch
    assert rest[0]["wall_time_s"] > (state["metrics"]["wall_time_s"] + rest[0]["setup_time_s"]
                                     + rest[0]["epoch_time_s"])


def test_a_state_after_the_last_epoch_reports_the_result_again(digits_dir):
    spec = TrainSpec(model="mlp", epochs=1, optimizer="adam", lr=1e-3)
    states = []
    fit(DataSpec(data_dir=digits_dir), spec, ctx=Context(report=lambda m, s: states.append(s)))
    again = []
    assert fit(DataSpec(data_dir=digits_dir), spec, state=states[-1],
               ctx=Context(report=lambda m, s: again.append(m))) == []
    assert again[0]["test_acc"] == states[-1]["metrics"]["test_acc"]


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


def test_fast_path_switches_keep_results_close(digits_dir):
    """bf16 autocast and channels_last run on CPU too; GPU speed is a benchmark's job."""
    data = DataSpec(data_dir=digits_dir)
    base = TrainSpec(epochs=2, batch_size=32, seed=2)
    ref = fit(data, base)[-1]
    fast = fit(data, dataclasses.replace(base, precision="bf16", channels_last=True))[-1]
    assert fast["channels_last_used"] is True and ref["channels_last_used"] is False  # auto: CUDA
    assert fast["data_on_device_used"] is False  # nothing to move on a CPU
    assert abs(fast["test_acc"] - ref["test_acc"]) < 3.0


def test_compile_warms_up_outside_train_time(digits_dir):
    spec = TrainSpec(model="mlp", epochs=2, optimizer="adam", lr=1e-3, compile=True)
    hist = fit(DataSpec(data_dir=digits_dir), spec)
    m = hist[-1]
    assert m["setup_time_s"] > m["train_time_s"]  # compilation was paid during set-up
    assert m["test_acc"] > 80.0


def test_cost_bills_the_time_the_workers_were_held(digits_dir):
    hist = fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=2), hour_usd=3.6)
    for m in hist:
        assert m["wall_time_s"] > m["train_time_s"] + m["setup_time_s"]  # evaluation counts
        assert m["cost_usd"] == pytest.approx(m["wall_time_s"] / 1000)
    assert hist[1]["wall_time_s"] > hist[0]["wall_time_s"]
    assert "cost_usd" not in fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=1))[0]
    # A price of 0 is a price: the metric is there, so it can be an objective.
    assert fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=1),
               hour_usd=0.0)[0]["cost_usd"] == 0.0


def test_an_objective_this_run_cannot_measure_fails_before_training(digits_dir):
    with pytest.raises(ValueError, match="objective mfu cannot be measured here: no known peak"):
        fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=1), require=("mfu",))
    with pytest.raises(ValueError, match="objective test_f1 cannot be measured here: two-class"):
        fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=1), require=("test_f1",))
    m = fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=1), ResourceSpec(peak_tflops=1.0),
            require=("mfu", "test_acc"))[0]
    assert m["mfu"] > 0


def test_deterministic_switches_torch_to_deterministic_kernels_and_back(digits_dir):
    spec = TrainSpec(model="mlp", epochs=1, optimizer="adam", lr=1e-3, deterministic=True)
    fit(DataSpec(data_dir=digits_dir), spec)
    assert torch.are_deterministic_algorithms_enabled()
    fit(DataSpec(data_dir=digits_dir), dataclasses.replace(spec, deterministic=False))
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_reused_process_measures_each_trials_own_peak_memory(digits_dir):
    """peak_rss_mb is the trial's own: a bigger earlier trial in the same process
    (a reused trial process) does not carry over."""
    import numpy as np

    def peak():
        return fit(DataSpec(data_dir=digits_dir), TrainSpec(model="mlp", epochs=1))[0]["peak_rss_mb"]

    alone = peak()
    big = np.ones(600 * 2**20 // 8)  # an earlier trial's 600 MiB, freed below
    del big
    assert peak() < alone + 100, alone
