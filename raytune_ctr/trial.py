"""One Tune trial. A one-worker trial trains right here, in Tune's trial process,
which Tune reuses from trial to trial (`reuse_actors`). A multi-worker trial hands
its job to a long-lived Ray Train worker pool (pool.py) and relays its epochs.
Either way each epoch goes to Tune by `tune.report` with its checkpoint, and a
trial that Tune restarts (after a failure, or in a resumed sweep) goes on from
its last one.

Every trial process imports this module, so it leaves out pandas and optuna, and
a pool's relay never imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import tempfile
import threading
import uuid
from pathlib import Path

import ray

from raytune_ctr import packing, results, script, trace
from raytune_ctr.gate import BEAT_S
from raytune_ctr.pool import POOL_START_S, PoolKey
from raytune_ctr.spec import Spec, hour_usd

_pools_up = False  # this process has seen the pools started ahead up


def run_trial(config: dict, spec: Spec, coordinator, flops: dict[str, float],
              gated: bool = False, folder: str | None = None) -> None:
    """Tune's function for every trial of the sweep. `gated`: its process holds a
    sliver of a CPU, and the trial holds its workers' CPUs in the coordinator's
    gate while it trains (gate.py)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    trace.set_trial(trial_id)
    trace.mark("trial_start")
    train, res = spec.resolve(config)
    # This trial's folder (`folder`: the sweep's, as Tune writes it)
    mine = posixpath.join(folder, results.TRIAL_PREFIX + trial_id) if folder else None
    # Tune's count of this trial's failures so far (its callback tells the coordinator).
    retries, error = ray.get(coordinator.failures.remote(trial_id))
    extra = {"retries": retries} | ({"retry_error": error} if error else {})
    price = hour_usd(res, spec.cost)
    try:
        if spec.runner != "loop":  # tiers 2 and 3: the user's own process trains
            script.run(spec, {"train": train, "resources": res, "hour_usd": price}, extra,
                       mine)
            return
        state = results.last_state(tune.get_checkpoint(), mine)
        job = {"id": f"{trial_id}-{uuid.uuid4().hex[:8]}", "trial_id": trial_id,
               "data": spec.data, "train": train, "resources": res,
               "objectives": list(spec.search.objectives), "state": state, "flops": flops,
               "hour_usd": price, "extra": extra, "tune_keys": packing.tune_keys(spec)}
        with _cpus(coordinator, trial_id, res.num_workers * res.worker_cpus) if gated \
                else contextlib.nullcontext():
            if res.num_workers == 1:
                _train_here(job, extra, coordinator)
            else:
                _relay(job, extra, coordinator)
    finally:
        trace.mark("trial_end")
        trace.set_trial(None)


@contextlib.contextmanager
def _cpus(coordinator, trial_id: str, cpus: float):
    """Hold `cpus` of the node's CPUs in the coordinator's gate, first come, first
    served; beat while holding, so a dead process's CPUs come back."""
    while not ray.get(coordinator.acquire.remote(trial_id, cpus, BEAT_S * 2)):
        pass
    trace.mark("cpus_held")
    stop = threading.Event()

    def beat():
        while not stop.wait(BEAT_S):
            if not ray.get(coordinator.beat.remote(trial_id)):
                logging.getLogger(__name__).warning(
                    "the gate dropped this trial's CPUs (silent too long); training on")
                return

    threading.Thread(target=beat, daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        # Waited on: a threaded actor runs calls in any order, and a trial Tune
        # restarts in this process asks again under the same id.
        ray.get(coordinator.release.remote(trial_id))


def _train_here(job: dict, extra: dict, coordinator) -> None:
    import torch

    from raytune_ctr import data
    from raytune_ctr import train as train_lib

    res = job["resources"]
    torch.set_num_threads(res.threads)
    # Ray has set CUDA_VISIBLE_DEVICES to the GPU this trial holds.
    device = torch.device("cuda", 0) if res.use_gpu else torch.device("cpu")
    # Once per process: its first set-up's imports (torch._dynamo, ~1 s), outside the
    # trial's set-up time; during a pool's start, where one CPU idles, they cost no
    # wall time. Then wait for the pools started ahead: their start is a burst of CPU
    # that would skew this trial's epochs. Once up, they stay up.
    global _pools_up
    if not _pools_up:
        train_lib.first_imports(device)
        trace.mark("trial_warm")
        _pools_up = ray.get(coordinator.wait_up.remote(POOL_START_S))
        if not _pools_up:
            logging.getLogger(__name__).warning(
                "worker pools not up after %d s; training anyway", POOL_START_S)
        trace.mark("pools_up")

    def report(metrics: dict, state: dict | None) -> None:
        files = train_lib.state_files(state) if state is not None else None
        trace.mark("state_serialized")
        _report(packing.pack(metrics | extra, job["tune_keys"]), files)

    ctx = train_lib.Context(device=device, report=report, load=data.load_cached,
                            flops=job["flops"])
    train_lib.fit(job["data"], job["train"], res, ctx=ctx,
                  state=train_lib.load_state(job["state"]) if job["state"] else None,
                  require=tuple(job["objectives"]), hour_usd=job["hour_usd"], extra=extra)


def _relay(job: dict, extra: dict, coordinator) -> None:
    """Hand the job to this node's pool for its world size; report its epochs to Tune."""
    res = job["resources"]
    # A CPU pool runs beside its trials, on the CPUs they hold; a GPU pool wherever
    # its GPUs are.
    key = PoolKey(res.num_workers, res.gpus_per_worker, "") if res.use_gpu else \
        PoolKey(res.num_workers, 0.0, ray.util.get_node_ip_address())
    ray.get(coordinator.submit.remote(key, job))
    trace.mark("job_submitted")
    stop = threading.Event()

    def heartbeat():  # while this thread waits on Tune inside tune.report
        while not stop.wait(2.0):
            coordinator.heartbeat.remote(job["id"])

    threading.Thread(target=heartbeat, daemon=True).start()
    over = False
    try:
        while True:
            event = ray.get(coordinator.next_event.remote(job["id"], 10.0))
            if event is None:
                continue
            if event[0] == "epoch":
                trace.mark("event_received")
                # SystemExit here: Tune stopped us.
                _report(packing.pack(event[1] | extra, job["tune_keys"]), event[2] or None)
                coordinator.answer.remote(job["id"], event[1]["epoch"])
                continue
            over = True
            if event[0] == "error":
                raise event[1]
            return
    finally:
        stop.set()
        if not over:
            coordinator.cancel.remote(job["id"])


def _report(metrics: dict, files: dict[str, bytes] | None) -> None:
    from ray import tune

    if not files:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        for name, raw in files.items():
            Path(d, name).write_bytes(raw)
        trace.mark("files_written")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    trace.mark("tune_reported")
