"""The one training loop, `fit`: a one-worker trial runs it in its Tune trial
process, each rank of a multi-worker trial in its Ray Train worker (pool.py);
tests and benchmarks call it directly on plain torch.

Each epoch reports the metrics of `metrics.METRICS` (global over all workers; those
a run cannot measure are absent, never 0), the facts of `metrics.FACTS`, and the
worker's environment fingerprint as env_* strings. It also hands `report` the
trial's whole state (model, optimizer, scheduler, RNG), so a run can stop anywhere
and continue bit for bit.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import os
import random
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from raytune_ctr import data, hardware, metrics, models, trace, usercode
from raytune_ctr.fingerprint import fingerprint
from raytune_ctr.results import HISTORY_FILE, STATE_FILE
from raytune_ctr.spec import DataSpec, ResourceSpec, Spec, TrainSpec, candidates


@functools.cache
def keep_freed_memory() -> bool:
    """Once per process: glibc hands every freed block over 128 KB back to the OS and
    maps it afresh on the next allocation, so a new trial process page-faults on each
    batch's activations until its threshold adapts (20-30% of a small CPU net's epoch
    on the 2-core machine). Fix the thresholds where a long-lived process ends up.
    Freed memory then stays with the process; its peak RSS is the same."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this before its first use to pick reproducible reductions.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # warn_only: an op with no deterministic kernel (CUDA's adaptive-pool backward in
    # the ResNets) warns instead of failing the trial; every other op is deterministic.
    # Only when the state must change: the call imports torch._inductor (and dynamo),
    # seconds of CPU in every trial process, and a reused process keeps the setting.
    if (torch.are_deterministic_algorithms_enabled() != deterministic
            or deterministic and not torch.is_deterministic_algorithms_warn_only_enabled()):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def rng_state(device: torch.device) -> dict:
    """The random streams a run draws from. Every rank is seeded alike and draws alike,
    so rank 0's streams stand for all; CUDA's is the one of the device in use."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def first_imports(device: torch.device, wrap: Callable | None = None) -> None:
    """Pay once per process, before any trial trains, the imports its first set-up
    would (torch.optim's first call imports torch._dynamo, about 1 s): not on a
    trial's clock, nor beside one's epochs. `wrap`: the DDP wrap a pool uses."""
    model = nn.Linear(1, 1).to(device)
    make_optimizer(TrainSpec(), (wrap(model) if wrap else model).parameters()).zero_grad()


def make_optimizer(spec: TrainSpec, params) -> torch.optim.Optimizer:
    if spec.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise AssertionError(spec.optimizer)  # the spec's Literal rules this out


def make_schedule(spec: TrainSpec, opt, steps_per_epoch: int):
    """Returns (scheduler or None, steps per batch?)."""
    if spec.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=spec.gamma), False
    if spec.lr_schedule == "onecycle":
        # Adadelta has no momentum to cycle.
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch,
            cycle_momentum=spec.optimizer != "adadelta")
        return sched, True
    if spec.lr_schedule == "linear":
        total = spec.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total)), True
    return None, False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reduce(values: list[float], op=None) -> list[float]:
    """Sum (or max) values over all workers; a no-op outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _bare(model: nn.Module) -> nn.Module:
    """The net under torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def check_memory(limit_mb: float | None) -> None:
    """Fail clearly, as the trial's error, once this process has used more host memory
    than its limit; never wait for the kernel's OOM killer to end it silently."""
    if limit_mb is not None and (rss := peak_rss_mb()) > limit_mb:
        raise MemoryError(f"out of memory: peak RSS {rss:.0f} MB is over "
                          f"resources.max_memory_gb ({limit_mb / 1024:g} GB per worker)")


@dataclass(frozen=True)
class Context:
    """Where `fit` runs and whom it tells: the device; this rank in a group of `world`;
    how to wrap the net (DDP); who gets each epoch, `report(metrics, state)`; who hears,
    on every rank, whether set-up failed before the first collective call, `ready`;
    how datasets load (a trial process keeps them); FLOP counts made before the sweep
    (`flops_key` -> FLOPs per sample)."""

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1
    wrap: Callable[[nn.Module], nn.Module] | None = None
    report: Callable[[dict, dict | None], None] | None = None
    ready: Callable[[BaseException | None], None] | None = None
    load: Callable[..., data.Datasets] = data.load
    flops: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """What set-up made, for the epochs."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    per_batch: bool  # the schedule steps per batch, not per epoch
    ds: data.Datasets
    loader_workers: int  # DataLoader processes, for on-disk sets
    per_rank: int  # this rank's share of the global batch
    fmt: torch.memory_format
    flops: float  # training FLOPs per sample
    peak: float | None  # the device's peak TFLOP/s for this precision, when known
    facts: dict  # the fingerprint (env_*) and what the fast path chose
    setup_time: float
    memory_limit_mb: float | None


@dataclass(frozen=True)
class Sums:
    """An epoch's counts and times, summed (times: the slowest rank) over the group."""

    loss: float
    correct: float
    n: float
    test_loss: float
    test_correct: float
    true_pos: float  # class 1 predicted and true
    n_pos_pred: float
    n_pos_true: float
    n_test: float
    elapsed: float
    data_time: float
    eval_time: float
    rss_mb: float
    gpu_util: float  # NaN when not sampled
    cuda_mb: float | None


LOCAL = Context()  # one process, no group, no report
ONE_WORKER = ResourceSpec()


def fit(data_spec: DataSpec, train: TrainSpec, resources: ResourceSpec = ONE_WORKER, *,
        ctx: Context = LOCAL, state: dict | None = None, require: tuple[str, ...] = (),
        hour_usd: float | None = None, extra: dict | None = None) -> list[dict]:
    """Train `train.epochs` epochs, calling `ctx.report(metrics, state)` after each; return
    the epochs' metrics. `state`, one that `report` was given, continues that run after
    its epoch as if it had never stopped (when it was the last epoch, `report` gets
    the final metrics once more, with state None). A metric in `require` (the sweep's
    objectives) that this run cannot measure fails it before training. `hour_usd`:
    what an hour of the trial's share of a node costs (cost_usd). `extra`: more to put
    in every epoch's metrics (Tune's failure count), in its saved history too, which
    fills in the epochs Tune's own record of a restarted trial can lose."""
    run = _setup(data_spec, train, resources, ctx, state, require, hour_usd)
    start, train_time, wall_time, before = _continue(run, train, ctx, state)
    history = []
    for epoch in range(start + 1, train.epochs + 1):
        sums = _epoch(run, train, ctx, epoch)
        train_time += sums.elapsed
        wall_time += sums.elapsed + sums.eval_time
        metrics = _epoch_metrics(run, sums, epoch, train_time, wall_time, hour_usd, ctx.world)
        if not math.isfinite(metrics["train_loss"]):
            # A diverged trial is a failure, never a low score.
            raise FloatingPointError(f"train_loss is {metrics['train_loss']} at epoch {epoch} "
                                     f"(lr={train.lr}, optimizer={train.optimizer})")
        metrics |= run.facts | (extra or {}) | {"resumed_from_epoch": start}
        history.append(metrics)
        trace.mark("epoch_done", epoch=epoch)
        if ctx.report is not None:
            ctx.report(metrics, _state(run, ctx, epoch, metrics, before + history))
            trace.mark("reported", epoch=epoch)
    return history


def _continue(run: Run, train: TrainSpec, ctx: Context,
              state: dict | None) -> tuple[int, float, float, list[dict]]:
    """(epochs done, train time, wall time, their history): none, or those of `state`,
    whose weights and random streams come back."""
    if state is None:
        return 0, 0.0, run.setup_time, []
    # Last, on every rank: the compile warm-up moves BatchNorm's running stats, and
    # set-up (FLOP counting, warm-up) draws random numbers.
    _bare(run.model).load_state_dict(state["model"])
    set_rng_state(state["rng"], ctx.device)
    done, seen = state["epoch"], state["metrics"]
    if done >= train.epochs and ctx.report is not None:
        # Stopped after its last checkpoint: say the final result once more.
        ctx.report(seen | {"resumed_from_epoch": done}, None)
    # A restart's set-up is paid too.
    return done, seen["train_time_s"], run.setup_time + seen["wall_time_s"], state["history"]


def _state(run: Run, ctx: Context, epoch: int, metrics: dict, history: list[dict]) -> dict:
    """Everything a run needs to go on after `epoch` as if it had never stopped."""
    return {"epoch": epoch, "metrics": metrics, "history": history,
            "model": _bare(run.model).state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict() if run.sched else None,
            "rng": rng_state(ctx.device)}


def _setup(data_spec: DataSpec, train: TrainSpec, resources: ResourceSpec, ctx: Context,
           state: dict | None, require: tuple[str, ...], hour_usd: float | None) -> Run:
    """Seed, load the data, build the net and its optimizer, check the objectives."""
    device = ctx.device
    t0 = time.perf_counter()
    trace.mark("setup_start")
    error = None
    try:  # the part that makes no collective call
        keep_freed_memory()
        reset_peak_rss()
        seed_everything(train.seed, train.deterministic)
        source = models.hf_source(train.model)
        ds = ctx.load(data_spec, data.Tokenize(source, train.max_seq_length) if source else None)
        on_device = data.place(ds, device, data_spec.data_on_device)
        trace.mark("setup_data")
        model = models.build(train.model, ds.input_shape, ds.num_classes, hidden=train.hidden,
                             config=trial_config(train, resources)).to(device)
        trace.mark("setup_model")
        dtype = ds.train.x.dtype if isinstance(ds.train, data.TensorSet) else torch.float32
        key = flops_key(train, ds.input_shape, ds.num_classes, dtype, model)
        # Counting imports torch._dynamo (seconds); a sweep counts once, in the driver.
        flops = ctx.flops[key] if key in ctx.flops else hardware.flops_per_sample(
            model, ds.input_shape, ds.num_classes, device, dtype=dtype)
        trace.mark("setup_flops")
        conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        channels_last = train.channels_last is True or (
            train.channels_last == "auto" and device.type == "cuda" and conv)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        env = {f"env_{k}": v for k, v in fingerprint(device).items()}
        peak = hardware.peak_tflops(env["env_gpu_name"],
                                    hardware.math_precision(train.precision, conv),
                                    resources.peak_tflops)
        _check_measurable(require, peak=peak, hour_usd=hour_usd, device=device,
                          two_class=ds.num_classes == 2, gpu=env["env_gpu_name"])
    except Exception as err:  # noqa: BLE001 - raised below, after `ready` has seen it
        error = err
    if ctx.ready is not None:
        ctx.ready(error)
    if error is not None:
        raise error
    if ctx.wrap is not None:
        model = ctx.wrap(model)  # DDP: the first collective call
    if train.compile:
        # Compiling a Module gives an OptimizedModule, a Module; torch's typing says Callable.
        model = torch.compile(model)  # type: ignore[assignment]
    per_rank = max(1, train.batch_size // ctx.world)
    steps = math.ceil(math.ceil(len(ds.train) / ctx.world) / per_rank)
    opt = make_optimizer(train, model.parameters())
    sched, per_batch = make_schedule(train, opt, steps)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
    if train.compile:
        _warm_up(model, ds, per_rank, device, train.precision, fmt)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trace.mark("setup_done")
    return Run(model, opt, sched, per_batch, ds, data_spec.loader_workers, per_rank, fmt, flops,
               peak,
               env | {"data_on_device_used": on_device, "channels_last_used": channels_last},
               time.perf_counter() - t0,
               resources.max_memory_gb * 1024 if resources.max_memory_gb else None)


def _epoch(run: Run, train: TrainSpec, ctx: Context, epoch: int) -> Sums:
    """Train one epoch and evaluate; the counts summed over the group."""
    with hardware.GpuUtilization(ctx.device) as util:
        # Same permutation on every rank for an epoch, different across epochs.
        loss, correct, n, elapsed, data_time = _train_pass(
            run, ctx, seed=train.seed * 100_003 + epoch, precision=train.precision)
    if run.sched is not None and not run.per_batch:
        run.sched.step()
    t_eval = time.perf_counter()
    test = _evaluate(run, ctx, batch_size=train.test_batch_size, precision=train.precision)
    check_memory(run.memory_limit_mb)
    eval_time = time.perf_counter() - t_eval
    loss, correct, n, *test = _reduce([loss, correct, n, *test])
    slowest = dist.ReduceOp.MAX if ctx.world > 1 else None
    elapsed, data_time, eval_time, rss = _reduce(
        [elapsed, data_time, eval_time, peak_rss_mb()], slowest)
    # Every rank joins each reduction (NaN where NVML gave nothing): a collective
    # that only some ranks enter would hang the group.
    gpu_util = _reduce([float("nan") if util.mean is None else util.mean])[0] / ctx.world
    cuda_mb = _reduce([torch.cuda.max_memory_allocated(ctx.device) / 2**20], slowest)[0] \
        if ctx.device.type == "cuda" else None
    test_loss, test_correct, true_pos, pos_pred, pos_true, n_test = test  # _evaluate's six
    return Sums(loss, correct, n, test_loss, test_correct, true_pos, pos_pred, pos_true, n_test,
                elapsed, data_time, eval_time, rss, gpu_util, cuda_mb)


def _epoch_metrics(run: Run, s: Sums, epoch: int, train_time: float, wall_time: float,
                   hour_usd: float | None, world: int) -> dict:
    """The epoch's metrics (metrics.METRICS) from its sums; those this run cannot
    measure are left out, never 0."""
    m = {
        "epoch": epoch,
        "train_loss": s.loss / s.n, "train_acc": 100.0 * s.correct / s.n,
        "test_loss": s.test_loss / s.n_test, "test_acc": 100.0 * s.test_correct / s.n_test,
        "epoch_time_s": s.elapsed, "train_time_s": train_time, "data_time_s": s.data_time,
        "eval_time_s": s.eval_time, "setup_time_s": run.setup_time, "wall_time_s": wall_time,
        "samples_per_s": s.n / s.elapsed, "peak_rss_mb": s.rss_mb,
        "flops_per_sample": run.flops, "tflops": run.flops * s.n / s.elapsed / 1e12,
    }
    if run.ds.num_classes == 2:
        pos = s.n_pos_pred + s.n_pos_true
        m["test_f1"] = 100.0 * 2 * s.true_pos / pos if pos else 0.0
    if hour_usd is not None:
        m["cost_usd"] = wall_time / 3600 * hour_usd
    if run.peak:
        m["mfu"] = m["tflops"] / (run.peak * world)
    if math.isfinite(s.gpu_util):
        m["gpu_util"] = s.gpu_util
    if s.cuda_mb is not None:
        m["peak_cuda_mb"] = s.cuda_mb
    m["peak_memory_mb"] = m.get("peak_cuda_mb", s.rss_mb)
    m["ended_at"] = time.time()
    return m


def _train_pass(run: Run, ctx: Context, *, seed: int, precision: str):
    model, opt, device = run.model, run.opt, ctx.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n, data_time = 0, 0.0
    _sync(device)
    start = time.perf_counter()
    it = data.batches(run.ds.train, run.per_rank, rank=ctx.rank, world=ctx.world, seed=seed,
                      device=device, loader_workers=run.loader_workers)
    for wait, (x, y) in data.timed(it):
        data_time += wait
        x = x.contiguous(memory_format=run.fmt)
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        if run.per_batch:
            run.sched.step()
        # Accumulate on the device: a .item() per step would stall the GPU.
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
        check_memory(run.memory_limit_mb)  # the high-water mark: it sees peaks inside the step
    _sync(device)
    return float(loss_sum), int(correct), n, time.perf_counter() - start, data_time


@torch.no_grad()
def _evaluate(run: Run, ctx: Context, *, batch_size: int, precision: str) -> list[float]:
    """[loss sum, correct, true positives, predicted positives, actual positives, n]."""
    # The bare module: DDP's forward would sync buffers, and ranks may hold
    # different numbers of test batches.
    net, device = _bare(run.model), ctx.device
    net.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    counts = torch.zeros(4, device=device, dtype=torch.long)
    n_test = 0
    for x, y in data.batches(run.ds.test, batch_size, rank=ctx.rank, world=ctx.world, seed=None,
                             train=False, device=device, loader_workers=run.loader_workers):
        with _autocast(device, precision):
            out = net(x.contiguous(memory_format=run.fmt))
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        pred = out.argmax(1)
        counts += torch.stack([(pred == y).sum(), ((pred == 1) & (y == 1)).sum(),
                               (pred == 1).sum(), (y == 1).sum()])
        n_test += len(y)
    correct, true_pos, n_pos_pred, n_pos_true = map(int, counts.tolist())
    return [float(loss_sum), correct, true_pos, n_pos_pred, n_pos_true, n_test]


def _warm_up(model: nn.Module, ds, batch_size: int, device: torch.device, precision: str,
             fmt) -> None:
    """Compile forward and backward on one batch before the clock starts; no step is
    taken, so the weights stay as seeded."""
    x, y = next(data.batches(ds.train, batch_size, seed=0, device=device))
    with _autocast(device, precision):
        loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    _sync(device)


def _check_measurable(require, *, peak, hour_usd, device, two_class, gpu) -> None:
    for metric in require:
        why = metrics.unmeasurable(metric, gpu=device.type == "cuda", peak=bool(peak),
                                   priced=hour_usd is not None, two_class=two_class,
                                   gpu_name=gpu)
        if why:
            raise ValueError(f"objective {metric} cannot be measured here: {why}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_rss() -> None:
    """Count this process's peak RSS afresh: a reused trial process would otherwise
    report (and be held to max_memory_gb by) an earlier trial's peak. Freed memory,
    which keep_freed_memory keeps, goes back to the OS first, so the count starts at
    what is in use. Linux only; elsewhere the peak is the process's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM and ru_maxrss
    except OSError:
        pass


def flops_key(spec: TrainSpec, shape: tuple[int, ...], num_classes: int, dtype,
              net: nn.Module | None = None) -> str:
    """What a model's FLOPs per sample depend on. A user's factory may read any knob,
    so its net is keyed by its layers (repr), not by the config it came from."""
    if usercode.is_path(spec.model) and net is not None:
        import hashlib

        arch = hashlib.sha1(repr(net).encode()).hexdigest()[:16]
        return f"{spec.model}|{arch}|{tuple(shape)}|{num_classes}|{dtype}"
    hidden = spec.hidden if spec.model == "mlp" else ()
    return f"{spec.model}|{hidden}|{tuple(shape)}|{num_classes}|{dtype}"




def state_files(state: dict) -> dict[str, bytes]:
    """An epoch's checkpoint as file name -> bytes: the state `report` gets, and every
    epoch so far in JSON, the record of a trial that outlives the sweep's driver
    (Tune's own copy can lag behind when the driver is killed)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    return {STATE_FILE: buf.getvalue(), HISTORY_FILE: json.dumps(state["history"]).encode()}


def load_state(raw: bytes) -> dict:
    """The state in a checkpoint's STATE_FILE, from its bytes."""
    import io

    # Our own file: RNG states are numpy and tuples, beyond weights_only.
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)


def trial_config(train: TrainSpec, resources: ResourceSpec) -> dict:
    """What a user's model factory is given: the trial's train and resources fields."""
    return dataclasses.asdict(train) | dataclasses.asdict(resources)


def count_flops(spec: Spec) -> dict[str, float]:
    """Every model's training FLOPs per sample, counted once for the sweep (keys:
    `flops_key`). Counting imports torch._dynamo, seconds of CPU that no
    trial process should pay; a trial whose shape is not here counts its own.
    Our own vision models' counts are kept on disk (`hardware.FLOPS_CACHE`), so only
    a machine's first sweep of a shape pays them; a user's model or a text model is
    counted each time: its code or config may change under the same name."""
    cand = candidates(spec)
    cached = hardware.read_flops_cache()
    flops, new = {}, {}
    for name in cand["model"]:
        source = models.hf_source(name)
        tokenizes = [data.Tokenize(source, n) for n in cand["max_seq_length"]] if source else [None]
        for tokenize in tokenizes:
            ds = data.load(spec.data, tokenize)
            dtype = ds.train.x.dtype if isinstance(ds.train, data.TensorSet) else torch.float32
            for hidden in cand["hidden"] if name == "mlp" else [spec.train.hidden]:
                t = dataclasses.replace(spec.train, model=name, hidden=hidden)
                # A text model's layers come from a hub or folder config this key
                # does not see: counted each time, as a user's model is.
                ours = not usercode.is_path(name) and source is None
                if ours and (key := flops_key(t, ds.input_shape, ds.num_classes, dtype)) in cached:
                    flops[key] = cached[key]
                    continue
                net = models.build(name, ds.input_shape, ds.num_classes, hidden=t.hidden,
                                   config=trial_config(t, spec.resources))
                key = flops_key(t, ds.input_shape, ds.num_classes, dtype, net)
                flops[key] = hardware.flops_per_sample(net, ds.input_shape, ds.num_classes,
                                                       torch.device("cpu"), dtype=dtype)
                if ours:
                    new[key] = flops[key]
    if new:
        hardware.write_flops_cache(cached | new)
    return flops
