"""The sweep's coordinator: Tune's failure count per trial, and long-lived Ray Train
worker groups that serve the multi-worker trials.

Ray Train V2 starts a controller, a placement-group cleaner, a synchronization
actor, a dataset manager and N workers for every `fit()`: 10-60 s of start-up on
2 cores, more than a small trial trains. So a sweep keeps one `TorchTrainer` per
(world size, GPU share, node) running, started when a trial of that size first
needs it, and its workers serve a queue of jobs (a trial's config and the
checkpoint to go on from). Every rank runs `fit` for the job on the live process
group; rank 0 hands each epoch's metrics and checkpoint to the trial, which
reports them to Tune and says whether to go on (ASHA's stop).

Resources: the trial's Tune actor reserves the workers' CPUs, so Tune's resource
line and the deadlock-free planning count them there; the pool's workers reserve
only a token of memory on the trial's node, so an idle CPU pool holds nothing a
trial needs and stays until the sweep ends. A GPU pool's workers hold their GPUs
(a worker sees only the GPUs it holds), so it stops once no trial needs it.

Failures: an error that every rank raises alike (a diverged loss) fails the job
and the group serves on. Any other worker error, or a dead worker, lets Train
restart the group; the job it was serving fails with that error, and Tune's
FailureConfig restarts the trial from its last checkpoint, as for any trial.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

STOP = "stop"  # take(): the pool is shutting down
PIPELINE_S = 1.0  # epochs shorter than this go on before Tune's verdict on the last
# A job whose trial has not been heard from for this long is given up: its Tune
# actor died without saying so (killed, or its node lost).
SILENT_S = 30.0
TOKEN = {"memory": 2**20}  # Ray rejects an empty bundle; a trial actor holds the CPUs


@dataclass(frozen=True)
class PoolKey:
    world: int
    gpus_per_worker: float  # 0: a CPU pool
    node_ip: str

    def __str__(self) -> str:
        gpu = f"-{self.gpus_per_worker:g}gpu" if self.gpus_per_worker else ""
        return f"{self.world}w{gpu}-{self.node_ip}"


@dataclass
class _Job:
    spec: dict
    key: PoolKey
    events: collections.deque = field(default_factory=collections.deque)
    answers: dict[int, bool] = field(default_factory=dict)  # epoch -> go on?
    cancelled: bool = False
    heard: float = field(default_factory=time.monotonic)


@dataclass
class _Pool:
    id: int
    key: PoolKey
    queue: collections.deque = field(default_factory=collections.deque)
    running: str | None = None  # the job its workers serve now
    up: bool = False  # its workers are up (warming up, or asking for work)
    stopping: bool = False
    thread: threading.Thread | None = None


@ray.remote(num_cpus=0, max_concurrency=1000)  # threaded: every call may block a while
class Coordinator:
    def __init__(self, storage: str):
        self._storage = storage
        self._cv = threading.Condition()
        self._failures: dict[str, tuple[int, str]] = {}
        self._jobs: dict[str, _Job] = {}
        self._pools: dict[PoolKey, _Pool] = {}  # the pool that takes new jobs, per key
        self._by_id: dict[int, _Pool] = {}  # every pool still running, stopping ones too
        self._ids = itertools.count()
        threading.Thread(target=self._watch, daemon=True).start()

    # --- Tune's failure count: written by the driver's callback, read by trials
    def record_failure(self, trial_id: str, count: int, error: str) -> None:
        self._failures[trial_id] = (count, error)

    def failures(self, trial_id: str) -> tuple[int, str]:
        return self._failures.get(trial_id, (0, ""))

    # --- the trial's side of a job
    def submit(self, key: PoolKey, job: dict) -> None:
        with self._cv:
            self._jobs[job["id"]] = _Job(job, key)
            self._pool(key).queue.append(job["id"])
            self._cv.notify_all()

    def next_event(self, job_id: str, timeout: float) -> tuple | None:
        """("epoch", metrics, files), ("done",) or ("error", exception); None: not yet."""
        end = time.monotonic() + timeout
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return ("error", RuntimeError(f"job {job_id} was given up: its trial went "
                                              f"silent for {SILENT_S:g} s"))
            while not job.events:
                job.heard = time.monotonic()
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            event = job.events.popleft()
            if event[0] != "epoch":
                del self._jobs[job_id]
            return event

    def answer(self, job_id: str, epoch: int, go: bool) -> None:
        """Tune's verdict on an epoch: go on (True) or stop."""
        with self._cv:
            if (job := self._jobs.get(job_id)) is not None:
                job.answers[epoch], job.heard = go, time.monotonic()
                self._cv.notify_all()

    def heartbeat(self, job_id: str) -> None:
        if (job := self._jobs.get(job_id)) is not None:
            job.heard = time.monotonic()

    def cancel(self, job_id: str) -> None:
        with self._cv:
            self._cancel(job_id)

    def _cancel(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.cancelled = True
        pool = self._pools.get(job.key)
        if pool is not None and job_id in pool.queue:
            pool.queue.remove(job_id)
        self._cv.notify_all()

    # --- the pool's side (rank 0)
    def take(self, pool_id: int, timeout: float) -> dict | str | None:
        """The next job for this pool, STOP, or None when there was none for `timeout` s
        (rank 0 then says so to the other ranks, keeping their collectives alive)."""
        end = time.monotonic() + timeout
        with self._cv:
            pool = self._by_id[pool_id]
            pool.running = None
            self._up(pool)
            while True:
                if pool.stopping:
                    return STOP
                if pool.queue:
                    pool.running = pool.queue.popleft()
                    job = self._jobs[pool.running]
                    job.heard = time.monotonic()
                    return job.spec
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    def up(self, pool_id: int) -> None:
        """The pool's workers are up (rank 0 says so before they warm up)."""
        with self._cv:
            self._up(self._by_id[pool_id])

    def _up(self, pool: _Pool) -> None:
        pool.up = True
        self._cv.notify_all()

    def put_epoch(self, job_id: str, metrics: dict, files: dict[str, bytes]) -> None:
        """Hand an epoch (its metrics and checkpoint files) to the trial."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is not None and not job.cancelled:
                job.events.append(("epoch", metrics, files))
                self._cv.notify_all()

    def verdict(self, job_id: str, epoch: int) -> bool:
        """Wait for Tune's verdict on an epoch: go on (True) or stop."""
        with self._cv:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job.cancelled:
                    return False
                if epoch in job.answers:
                    return job.answers[epoch]
                self._cv.wait(1.0)

    def finish(self, job_id: str, error: BaseException | None) -> None:
        with self._cv:
            job = self._jobs.get(job_id)
            if job is not None and not job.cancelled:
                job.events.append(("error", error) if error is not None else ("done",))
            self._cv.notify_all()

    def group_failed(self, pool_id: int, error: str) -> None:
        """Train is restarting the pool's workers: the job they served fails with
        `error`, and its trial goes to Tune's FailureConfig like any failed trial."""
        with self._cv:
            pool = self._by_id.get(pool_id)
            if pool is None or pool.running is None:
                return
            self.finish(pool.running, RuntimeError(error))
            pool.running = None

    # --- the driver's side
    def start(self, key: PoolKey) -> None:
        """Start a pool ahead of its first trial."""
        with self._cv:
            self._pool(key)

    def wait_up(self, timeout: float) -> bool:
        """Wait until every pool is up; False if one was not by `timeout`."""
        end = time.monotonic() + timeout
        with self._cv:
            while not all(p.up for p in self._pools.values()):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def retire(self, needed: list[tuple[int, float]], search_done: bool) -> None:
        """Stop idle pools no live trial needs: GPU pools at once (they hold GPUs),
        CPU pools once the searcher can make no more trials."""
        with self._cv:
            for key, pool in self._pools.items():
                idle = pool.running is None and not pool.queue
                wanted = (key.world, key.gpus_per_worker) in needed
                if idle and not wanted and (key.gpus_per_worker or search_done):
                    pool.stopping = True
            self._cv.notify_all()

    def shutdown(self, timeout: float = 120.0, wait_starting: bool = True) -> None:
        """Stop every pool and wait for Train to tear its workers down; not for pools
        still starting unless `wait_starting` (a pool stops once it is up)."""
        with self._cv:
            for job_id in list(self._jobs):
                self._cancel(job_id)
            for pool in self._by_id.values():
                pool.stopping = True
            self._cv.notify_all()
            threads = [p.thread for p in self._by_id.values()
                       if p.thread is not None and (p.up or wait_starting)]
        end = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))

    def pools(self) -> list[str]:
        return [str(k) for k, p in self._pools.items() if not p.stopping]

    # --- inside
    def _pool(self, key: PoolKey) -> _Pool:
        pool = self._pools.get(key)
        if pool is None or pool.stopping:
            pool = _Pool(next(self._ids), key)
            self._pools[key] = self._by_id[pool.id] = pool
            pool.thread = threading.Thread(target=self._run, args=(pool,), daemon=True)
            pool.thread.start()
        return pool

    def _run(self, pool: _Pool) -> None:
        """One pool's life: a TorchTrainer whose workers serve jobs until told to stop."""
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from raytune_ctr import trace

        key = pool.key
        trace.mark("pool_start", pool=str(key))
        per_worker = {"CPU": 0, **TOKEN, f"node:{key.node_ip}": 0.001}
        if key.gpus_per_worker:
            per_worker["GPU"] = key.gpus_per_worker
        me = ray.get_runtime_context().current_actor
        trainer = TorchTrainer(
            serve, train_loop_config={"coordinator": me, "pool": pool.id},
            scaling_config=ScalingConfig(num_workers=key.world,
                                         use_gpu=bool(key.gpus_per_worker),
                                         resources_per_worker=per_worker),
            run_config=RunConfig(name=f"pool-{key}-{pool.id}",
                                 storage_path=_join(self._storage, "pools"),
                                 callbacks=[_group_failures(me, pool.id)],
                                 # A bound, so a pool whose workers cannot start gives up.
                                 failure_config=FailureConfig(max_failures=8)))
        error = None
        try:
            trainer.fit()
        except Exception as err:  # noqa: BLE001 - the pool's jobs get the reason
            error = RuntimeError(f"the {key} worker group gave up: {_line(err)}")
        with self._cv:
            pool.stopping = True
            for job_id in [*pool.queue, *([pool.running] if pool.running else [])]:
                if error is not None:
                    self.finish(job_id, error)
                else:
                    self._cancel(job_id)
            pool.queue.clear()
            if self._pools.get(key) is pool:
                del self._pools[key]
            del self._by_id[pool.id]
        trace.mark("pool_end", pool=str(key))

    def _watch(self) -> None:
        while True:
            time.sleep(2.0)
            with self._cv:
                now = time.monotonic()
                for job_id, job in list(self._jobs.items()):
                    if now - job.heard > SILENT_S:
                        self._cancel(job_id)


def _join(storage: str, name: str) -> str:
    return storage.rstrip("/") + "/" + name


def _line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _group_failures(coordinator, pool_id: int):
    """A Train callback, in the pool's controller, that tells the coordinator when
    the pool's workers fail (Train then restarts them)."""
    from ray.train.v2.api.callback import UserCallback

    class GroupFailures(UserCallback):
        def after_exception(self, run_context, worker_exceptions: dict[int, Exception]):
            err = next(iter(worker_exceptions.values()))
            ray.get(coordinator.group_failed.remote(pool_id, f"{type(err).__name__}: "
                                                    f"{_line(err)}"))

    return GroupFailures()


class _Stopped(Exception):
    """Tune stopped the job's trial (ASHA, or the sweep ending)."""


def serve(config: dict) -> None:
    """A pool worker's whole life: take jobs and train them until told to stop."""
    import ray.train
    import ray.train.torch
    import torch

    from raytune_ctr import trace

    coordinator, pool = config["coordinator"], config["pool"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    trace.mark("pool_worker_ready", pool=pool, rank=rank)
    if rank == 0:  # trials may start: their processes take longer to start than this
        ray.get(coordinator.up.remote(pool))
    _warm_up(device)
    trace.mark("pool_worker_warm", pool=pool, rank=rank)
    while True:
        job = ray.get(coordinator.take.remote(pool, 5.0)) if rank == 0 else None
        job = _broadcast(job)
        if job == STOP:
            return
        if job is not None:
            torch.set_num_threads(job["resources"].threads)
            _serve_job(job, coordinator, rank, world, device)


def _warm_up(device) -> None:
    """Pay the imports a first job would (the training loop; torch.optim's first call
    imports torch._dynamo) while the first trials start, not while one trains."""
    import ray.train.torch
    import torch

    from raytune_ctr import train
    from raytune_ctr.spec import TrainSpec

    model = ray.train.torch.prepare_model(torch.nn.Linear(1, 1).to(device))
    train.make_optimizer(TrainSpec(), model.parameters()).zero_grad()


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _serve_job(job: dict, coordinator, rank: int, world: int, device) -> None:
    import ray.train.torch

    from raytune_ctr import data, trace, train

    trace.set_trial(job["trial_id"])
    trace.mark("job_start", rank=rank)
    res = job["resources"]
    waiting: list[int] = []  # rank 0: the epoch whose verdict comes after the next one

    def verdict(epoch: int) -> bool:
        return ray.get(coordinator.verdict.remote(job["id"], epoch))

    def report(metrics: dict, state: dict | None) -> None:
        go = True
        if rank == 0:
            if waiting:
                go = verdict(waiting.pop())
            if go:
                files = train.state_files(state) if state is not None else {}
                ray.get(coordinator.put_epoch.remote(job["id"], metrics, files))
                trace.mark("epoch_sent")
                # A short epoch goes on while Tune weighs the last one (a round trip
                # through the trial and Tune's loop is tens of ms); a stop then costs
                # at most that one short epoch.
                if metrics["epoch_time_s"] + metrics["eval_time_s"] < PIPELINE_S:
                    waiting.append(metrics["epoch"])
                else:
                    go = verdict(metrics["epoch"])
        if not _broadcast(go):
            raise _Stopped

    state = train.load_state(job["state"]) if job["state"] else None
    error = None
    try:
        train.fit(job["data"], job["train"], device=device, rank=rank, world=world,
                  wrap=ray.train.torch.prepare_model, report=report, state=state,
                  peak_tflops=res.peak_tflops, hour_usd=res.hour_usd,
                  memory_limit_mb=res.max_memory_gb * 1024 if res.max_memory_gb else None,
                  require=tuple(job["objectives"]), flops=job["flops"], load=data.load_cached)
        if waiting:  # the trial has said what it will of the last epoch
            verdict(waiting.pop())
    except _Stopped:
        pass
    except FloatingPointError as err:  # raised alike on every rank: the group stays in step
        error = err
    if rank == 0:
        ray.get(coordinator.finish.remote(job["id"], error))
    trace.mark("job_end", rank=rank)
    trace.set_trial(None)
