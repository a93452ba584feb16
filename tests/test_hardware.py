import pytest
import torch

from raytune_ctr import hardware, models
from raytune_ctr.spec import DataSpec, ResourceSpec, TrainSpec
from raytune_ctr.train import fit


def test_mlp_training_flops_are_counted_exactly():
    net = models.build("mlp", (1, 28, 28), 10)
    flops = hardware.flops_per_sample(net, (1, 28, 28), 10, torch.device("cpu"))
    forward = 2 * 784 * 100 + 2 * 100 * 10
    # Backward: weight grads of both layers plus the input grad of the second
    # (the images need no grad).
    backward = 2 * 784 * 100 + 2 * (2 * 100 * 10)
    assert flops == forward + backward
    assert all(p.grad is None for p in net.parameters())  # counting leaves no trace


@pytest.mark.parametrize("name,precision,want", [
    ("NVIDIA H100 80GB HBM3", "fp32", 67.0), ("NVIDIA H200", "bf16", 989.5),
    ("NVIDIA A100-SXM4-40GB", "bf16", 312.0), ("Tesla T4", "fp32", 8.1),
    ("NVIDIA L4", "bf16", 121.0), ("none", "fp32", None), ("AMD EPYC", "bf16", None),
    # Whole words, longest first: an L40S is not an L4, a PCIe H100 not an SXM one.
    ("NVIDIA L40S", "bf16", 362.0), ("NVIDIA L40", "fp32", 90.5),
    ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
])
def test_peak_table(name, precision, want):
    assert hardware.peak_tflops(name, precision) == want
    assert hardware.peak_tflops(name, precision, override=5.0) == 5.0


def test_fp32_conv_nets_are_held_to_the_tf32_peak():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        # PyTorch's defaults: cuDNN convolutions may use TF32, matmuls may not.
        cudnn.allow_tf32, matmul.allow_tf32 = True, False
        assert hardware.math_precision("fp32", conv=True) == "tf32"
        assert hardware.math_precision("fp32", conv=False) == "fp32"
        assert hardware.math_precision("bf16", conv=True) == "bf16"
        cudnn.allow_tf32 = False
        assert hardware.math_precision("fp32", conv=True) == "fp32"
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_gpu_utilization_is_absent_on_cpu():
    with hardware.GpuUtilization(torch.device("cpu")) as util:
        pass
    assert util.mean is None


def test_fit_reports_flops_and_mfu_only_with_a_known_peak(tmp_path):
    data = DataSpec(data_dir=str(tmp_path))
    spec = TrainSpec(model="mlp", epochs=1, optimizer="adam", lr=1e-3)
    m = fit(data, spec)[0]
    assert m["flops_per_sample"] > 0
    assert m["tflops"] == pytest.approx(m["flops_per_sample"] * m["samples_per_s"] / 1e12)
    assert "mfu" not in m and "gpu_util" not in m  # absent on CPU, never 0
    m = fit(data, spec, ResourceSpec(peak_tflops=0.5))[0]
    assert m["mfu"] == pytest.approx(m["tflops"] / 0.5)


def test_counting_flops_leaves_batchnorm_stats_alone():
    net = models.build("resnet18", (3, 32, 32), 10)
    before = net.bn1.running_var.clone()
    hardware.flops_per_sample(net, (3, 32, 32), 10, torch.device("cpu"))
    assert torch.equal(net.bn1.running_var, before) and net.training


def test_our_models_flops_are_counted_once_per_machine(tmp_path, monkeypatch):
    from raytune_ctr import checks, train

    monkeypatch.setattr(hardware, "FLOPS_CACHE", tmp_path / "flops.json")
    spec = checks.from_dict({"data": {"dataset": "digits"},
                             "train": {"model": "mlp", "hidden": [16]}})
    first = train.count_flops(spec)
    assert (tmp_path / "flops.json").is_file()

    def counted(*a, **k):
        raise AssertionError("counted again")

    monkeypatch.setattr(hardware, "flops_per_sample", counted)
    assert train.count_flops(spec) == first
    # Another torch, or another code of the models, counts afresh.
    monkeypatch.setattr(hardware, "_flops_version", lambda: "another")
    with pytest.raises(AssertionError, match="counted again"):
        train.count_flops(spec)
