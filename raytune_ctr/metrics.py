"""Every metric an epoch reports, once: its unit, what it means, what kind of number it
is, and when it can be measured.

Spec validation and the training loop ask `unmeasurable` whether a trial can report
a metric; the results table keeps these columns; the report takes its column notes
from here, and `compare` holds the `result` kind to the bit and the timing kinds to
ratios. Adding a metric is a row here and the line in `train.fit` that computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# result: the same spec and seed give it to the bit (on CPU); time, memory: measured,
# varies from run to run; hardware: derived from times and the device; cost: money.
Kind = Literal["result", "time", "memory", "hardware", "cost"]
# What a trial needs to report it: a GPU, a known peak TFLOP/s, a node price, two classes.
Needs = Literal["", "gpu", "peak", "price", "two_class"]


@dataclass(frozen=True)
class Metric:
    unit: str
    meaning: str
    kind: Kind
    needs: Needs = ""


METRICS: dict[str, Metric] = {
    "epoch": Metric("", "epochs trained so far", "result"),
    "train_loss": Metric("", "mean cross-entropy over the epoch's training batches", "result"),
    "train_acc": Metric("%", "training accuracy over the epoch", "result"),
    "test_loss": Metric("", "mean cross-entropy on the test set", "result"),
    "test_acc": Metric("%", "accuracy on the test set", "result"),
    "test_f1": Metric("%", "F1 of class 1 on the test set", "result", "two_class"),
    "flops_per_sample": Metric("FLOP", "training FLOPs per sample (forward and backward), "
                               "counted once", "result"),
    "epoch_time_s": Metric("s", "the epoch's training pass, read after the GPU "
                           "synchronized", "time"),
    "train_time_s": Metric("s", "training passes so far (no start-up, no evaluation): the "
                           "clock objectives and ASHA use", "time"),
    "data_time_s": Metric("s", "the part of epoch_time_s spent waiting for batches", "time"),
    "eval_time_s": Metric("s", "the epoch's evaluation pass", "time"),
    "setup_time_s": Metric("s", "data, model and optimizer set-up, once per run", "time"),
    "wall_time_s": Metric("s", "set-up plus every epoch's training and evaluation, over "
                          "restarts (not Ray's start-up or checkpoint writes)", "time"),
    "samples_per_s": Metric("1/s", "training samples over epoch_time_s", "time"),
    "peak_rss_mb": Metric("MiB", "the largest worker's peak host memory in this run", "memory"),
    "peak_cuda_mb": Metric("MiB", "the largest worker's peak CUDA memory", "memory", "gpu"),
    "peak_memory_mb": Metric("MiB", "the device's peak: CUDA's on a GPU, else host memory",
                             "memory"),
    "tflops": Metric("TFLOP/s", "achieved: flops_per_sample x samples_per_s", "hardware"),
    "mfu": Metric("", "tflops over the device's peak (TF32's for fp32 conv nets)",
                  "hardware", "peak"),
    "gpu_util": Metric("%", "NVML GPU utilization while training", "hardware", "gpu"),
    "cost_usd": Metric("USD", "wall_time_s x the trial's share of a node's hourly price",
                       "cost", "price"),
}

# What a trial chose or went through, kept beside its metrics in the table.
FACTS = {
    "data_on_device_used": "whether the dataset was held on the GPU (data.data_on_device)",
    "channels_last_used": "whether conv inputs were channels_last (train.channels_last)",
    "resumed_from_epoch": "the epoch this run went on from (0: from the start)",
    "retries": "Tune's count of the trial's failures so far",
    "retry_error": "the last failure's error",
    "ended_at": "when the epoch's evaluation ended (Unix seconds), for the sweep timeline",
}

# Target mode (search.goal): the metrics a target is set on, higher or lower being
# better, and the clocks it minimises (they only grow over a trial's epochs).
HIGHER = ("test_acc", "train_acc", "test_f1")
LOWER = ("test_loss", "train_loss")
CLOCKS = ("train_time_s", "wall_time_s", "cost_usd")

RESULTS = tuple(k for k, m in METRICS.items() if m.kind == "result" and k != "epoch")
MEASURED = tuple(k for k, m in METRICS.items() if m.kind in ("time", "memory"))


def unmeasurable(metric: str, *, gpu: bool, peak: bool, priced: bool,
                 two_class: bool | None = None, gpu_name: str = "",
                 market: str = "on_demand") -> str | None:
    """Why a trial could not report `metric`, or None. `gpu`: it trains on a GPU;
    `peak`: its device's peak TFLOP/s is known (before the sweep, a GPU's may be);
    `priced`: its kind of node has a price on its `market`; `two_class`: its dataset
    has two classes (None: not known yet); `gpu_name`: the device's, once it runs."""
    needs = METRICS[metric].needs
    if needs == "gpu" and not gpu:
        return "is measured on a GPU only, and a trial has use_gpu: false"
    if needs == "peak" and not peak:
        if gpu_name:  # the trial's device, as it runs
            return f"no known peak TFLOP/s for {gpu_name!r}; set resources.peak_tflops"
        return "is measured on a GPU only, and a trial has use_gpu: false (or set " \
               "resources.peak_tflops)"
    if needs == "price" and not priced:
        kind = "gpu" if gpu else "cpu"
        prices = "spot_node_hour_usd" if market == "spot" else "node_hour_usd"
        return f"needs a {kind.upper()} node price for every trial: set cost.{prices}.{kind}"
    if needs == "two_class" and two_class is False:
        return "two-class datasets only"
    return None


def note(name: str) -> str:
    """One line for a report: `name` (unit): meaning."""
    m = METRICS.get(name)
    if m is None:
        return f"`{name}`: {FACTS.get(name, '')}"
    return f"`{name}`" + (f" ({m.unit})" if m.unit else "") + f": {m.meaning}"
