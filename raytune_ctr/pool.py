"""The sweep's coordinator: Tune's failure count per trial, and long-lived Ray Train
worker groups ("pools") that serve the multi-worker trials.

Ray Train V2 starts a controller, a placement-group cleaner, a synchronization
actor, a dataset manager and N workers for every `fit()`: 10-60 s of start-up on
2 cores, more than a small trial trains. So a sweep keeps `TorchTrainer`s running,
one per multi-worker trial that runs at once, keyed by (world size, GPU share,
node), and their workers serve a queue of jobs (a trial's config and the
checkpoint to go on from). Every rank runs `fit` for the job on the live process
group; rank 0 hands each epoch's metrics and checkpoint to the trial, which
reports them to Tune (whose stop cancels the job).

Resources: the trial's Tune actor reserves the workers' CPUs, so Tune's resource
line and the deadlock-free planning count them there (on one node, when trials
differ in CPUs, the trial holds them in this coordinator's gate instead: gate.py);
a CPU pool's workers hold only a token of their node (the trial's), so an idle
CPU pool holds nothing a trial needs. A GPU pool's workers hold their GPUs (a worker sees only the GPUs it
holds) wherever Ray puts them, and the pool stops once no live trial needs it.

Failures: an error that every rank raises alike (set-up that fails, a diverged
loss) fails the job and the group serves on. Any other worker error, or a dead
worker, lets Train restart the group; the job it served fails with that error,
and Tune's FailureConfig restarts the trial from its last checkpoint, as for any
trial.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from raytune_ctr.errors import one_line
from raytune_ctr.gate import Gate

STOP = "stop"  # take(): the pool is shutting down
PIPELINE_S = 1.0  # epochs shorter than this go on before Tune's verdict on the last
# A job whose trial has not been heard from for this long is given up: its Tune
# actor died without saying so (killed, or its node lost). Trials beat every 2 s.
SILENT_S = 10.0
POOL_START_S = 300.0  # a pool not up by then gives up, and its key's queued jobs fail
GIVE_UP_AFTER = 3  # pools of a key that ended in a row without serving a job
# A pool still ending a job nobody waits for (its trial was stopped mid-epoch) is
# waited for this long by the next job of its size before a new pool starts: a start
# costs tens of CPU-seconds, longer than a small epoch, shorter than a long one.
FREE_SOON_S = 10.0


@dataclass(frozen=True)
class PoolKey:
    world: int
    gpus_per_worker: float  # 0: a CPU pool
    node_ip: str  # a CPU pool runs on its trials' node; "" for a GPU pool: anywhere

    def __str__(self) -> str:
        gpu = f"-{self.gpus_per_worker:g}gpu" if self.gpus_per_worker else ""
        return f"{self.world}w{gpu}" + (f"-{self.node_ip}" if self.node_ip else "")


@dataclass
class _Job:
    spec: dict
    key: PoolKey
    events: collections.deque = field(default_factory=collections.deque)
    answered: set[int] = field(default_factory=set)  # epochs Tune has taken: go on
    cancelled: bool = False
    heard: float = field(default_factory=time.monotonic)


@dataclass
class _Pool:
    id: int
    key: PoolKey
    running: str | None = None  # the job its workers serve now
    given_up: float | None = None  # when its running job lost its trial (done or stopped)
    up: bool = False  # its workers are up and warm
    served: bool = False  # it took a job
    ahead: bool = False  # started before any trial asked (`start`)
    stopping: bool = False
    started: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None


# Threaded: every call may block a while. Ray's typed overloads omit actor options.
@ray.remote(num_cpus=0, max_concurrency=1000)  # type: ignore[call-overload]
class Coordinator:
    def __init__(self, storage: str):
        self._storage = storage
        self._cv = threading.Condition()  # guards everything below
        self._failures: dict[str, tuple[int, str]] = {}
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[PoolKey, collections.deque] = collections.defaultdict(collections.deque)
        self._pools: dict[int, _Pool] = {}  # every pool whose thread still runs
        self._fruitless: collections.Counter = collections.Counter()  # key -> pools in a row
        self._ids = itertools.count()
        self._closed = False
        self._gate: Gate | None = None  # a one-node sweep's CPUs (gate.py)
        self._reserved = None  # the placement group holding them from Ray
        threading.Thread(target=self._watch, daemon=True).start()

    # --- Tune's failure count: written by the driver's callback, read by trials
    def record_failure(self, trial_id: str, count: int, error: str) -> None:
        with self._cv:
            self._failures[trial_id] = (count, error)

    def failures(self, trial_id: str) -> tuple[int, str]:
        with self._cv:
            return self._failures.get(trial_id, (0, ""))

    # --- the CPUs of a one-node sweep (gate.py)
    def open_gate(self, cpus: float, reserve: float, timeout: float) -> bool:
        """Hand out the node's `cpus` to trials, holding `reserve` of them from Ray
        (a placement group this actor owns, gone with it), so that Ray's resource line
        and any other job on the node see them taken. False, holding nothing, when
        Ray cannot give them within `timeout` s (the node is not this sweep's alone)."""
        from ray.util.placement_group import placement_group, remove_placement_group

        pg = placement_group([{"CPU": reserve}], strategy="STRICT_PACK")
        try:
            ray.get(pg.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            return False
        with self._cv:
            self._gate, self._reserved = Gate(cpus, self._cv, SILENT_S), pg
        return True

    def acquire(self, trial_id: str, cpus: float, timeout: float) -> bool:
        with self._cv:
            if self._gate is None:
                raise RuntimeError("the sweep's CPU gate is not open")
            return self._gate.acquire(trial_id, cpus, timeout)

    def beat(self, trial_id: str) -> bool:
        with self._cv:
            return self._gate is not None and self._gate.beat(trial_id)

    def release(self, trial_id: str) -> None:
        with self._cv:
            if self._gate is not None:
                self._gate.release(trial_id)

    def gate(self) -> dict | None:
        with self._cv:
            return None if self._gate is None else self._gate.state()

    # --- the trial's side of a job
    def submit(self, key: PoolKey, job: dict) -> None:
        with self._cv:
            # A trial runs once at a time: a job it left (its process died, and Tune
            # restarted it) is given up now, not when it falls silent.
            for old in [i for i, j in self._jobs.items() if j.spec["trial_id"] == job["trial_id"]]:
                self._cancel(old)
            self._jobs[job["id"]] = _Job(job, key)
            if self._closed:
                self._fail(job["id"], RuntimeError("the sweep is shutting down"))
                return
            self._queues[key].append(job["id"])
            self._grow(key)
            self._cv.notify_all()

    def next_event(self, job_id: str, timeout: float) -> tuple | None:
        """("epoch", metrics, files), ("done",) or ("error", exception); None: not yet."""
        end = time.monotonic() + timeout
        with self._cv:
            job = self._jobs.get(job_id)
            while job is not None and not job.events and not job.cancelled:
                job.heard = time.monotonic()
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            if job is None or job.cancelled:
                return ("error", RuntimeError(f"job {job_id} was given up: its trial went "
                                              f"silent for {SILENT_S:g} s"))
            event = job.events.popleft()
            if event[0] != "epoch":
                self._drop(job_id)
            return event

    def answer(self, job_id: str, epoch: int) -> None:
        """Tune has taken this epoch and the trial goes on (a stop cancels the job)."""
        with self._cv:
            if (job := self._jobs.get(job_id)) is not None:
                job.answered.add(epoch)
                job.heard = time.monotonic()
                self._cv.notify_all()

    def heartbeat(self, job_id: str) -> None:
        with self._cv:
            if (job := self._jobs.get(job_id)) is not None:
                job.heard = time.monotonic()

    def cancel(self, job_id: str) -> None:
        with self._cv:
            self._cancel(job_id)

    # --- a pool's side (rank 0)
    def up(self, pool_id: int) -> None:
        """The pool's workers are up and warm (rank 0 says so)."""
        with self._cv:
            self._pools[pool_id].up = True
            self._cv.notify_all()

    def take(self, pool_id: int, timeout: float) -> dict | str | None:
        """The next job for this pool, STOP, or None when there was none for `timeout` s
        (rank 0 then says so to the other ranks, keeping their collectives alive)."""
        end = time.monotonic() + timeout
        with self._cv:
            pool = self._pools[pool_id]
            pool.running, pool.up = None, True
            self._cv.notify_all()
            queue = self._queues[pool.key]
            while True:
                if pool.stopping:
                    return STOP
                if queue:
                    pool.running, pool.served, pool.given_up = queue.popleft(), True, None
                    self._fruitless[pool.key] = 0
                    job = self._jobs[pool.running]
                    job.heard = time.monotonic()
                    return job.spec
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

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
                if epoch in job.answered:
                    return True
                self._cv.wait(1.0)

    def finish(self, job_id: str, error: BaseException | None) -> None:
        with self._cv:
            if error is not None:
                self._fail(job_id, error)
            elif (job := self._jobs.get(job_id)) is not None and not job.cancelled:
                job.events.append(("done",))
                self._cv.notify_all()

    def group_failed(self, pool_id: int, error: str) -> None:
        """Train is restarting the pool's workers: the job they served fails with
        `error`, and its trial goes to Tune's FailureConfig like any failed trial."""
        with self._cv:
            pool = self._pools.get(pool_id)
            if pool is not None and pool.running is not None:
                self._fail(pool.running, RuntimeError(error))
                pool.running = None

    # --- the driver's side
    def start(self, key: PoolKey) -> None:
        """Start a pool ahead of its first trial, unless one for `key` is there."""
        with self._cv:
            if not self._closed and not self._live(key):
                self._new_pool(key, ahead=True)

    def wait_up(self, timeout: float) -> bool:
        """Wait until every pool started ahead is up; False if one was not by `timeout`."""
        end = time.monotonic() + timeout
        with self._cv:
            while not all(p.up for p in self._pools.values() if p.ahead and not p.stopping):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def retire(self, needed: dict[tuple[int, float], int], search_done: bool) -> None:
        """Stop idle pools beyond what live trials need, `needed`: (world size, GPU
        share) -> live trials. GPU pools go at once (they hold GPUs); the last CPU
        pool of a size only once the searcher can make no more trials."""
        with self._cv:
            by_size = collections.defaultdict(list)
            for pool in self._pools.values():
                if not pool.stopping:
                    by_size[(pool.key.world, pool.key.gpus_per_worker)].append(pool)
            for size, pools in by_size.items():
                keep = max(needed.get(size, 0), 0 if size[1] or search_done else 1)
                busy = sum(p.running is not None or not p.up for p in pools)
                idle = [p for p in pools if p.running is None and p.up]
                for pool in idle[max(0, keep - busy):]:
                    if not self._queues[pool.key]:
                        pool.stopping = True
            self._cv.notify_all()

    def shutdown(self, timeout: float = 120.0, wait_starting: bool = True) -> None:
        """Stop every pool and wait for Train to tear its workers down; not for pools
        still starting unless `wait_starting` (a pool stops once it is up)."""
        with self._cv:
            self._closed = True
            for job_id in list(self._jobs):
                self._cancel(job_id)
            for pool in self._pools.values():
                pool.stopping = True
            self._cv.notify_all()
            threads = [p.thread for p in self._pools.values()
                       if p.thread is not None and (p.up or wait_starting)]
        end = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        if self._reserved is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._reserved)
            self._reserved = None

    def pools(self) -> list[str]:
        with self._cv:
            return [str(p.key) for p in self._pools.values() if not p.stopping]

    # --- inside (all with self._cv held)
    def _live(self, key: PoolKey) -> list[_Pool]:
        return [p for p in self._pools.values() if p.key == key and not p.stopping]

    def _grow(self, key: PoolKey) -> None:
        """One pool per job waiting or served at once: start one if they are short.
        A pool ending a job whose trial is done or stopped counts as free for
        FREE_SOON_S: the next trial of its size often asks before the pool has left
        the job (5 needless pool starts in a 200-trial sweep); `_watch` grows again
        once that has passed."""
        now = time.monotonic()
        free = sum(p.running is None or (p.given_up is not None and now - p.given_up < FREE_SOON_S)
                   for p in self._live(key))
        if len(self._queues[key]) > free:
            self._new_pool(key)

    def _new_pool(self, key: PoolKey, ahead: bool = False) -> None:
        pool = _Pool(next(self._ids), key, ahead=ahead)
        self._pools[pool.id] = pool
        pool.thread = threading.Thread(target=self._run, args=(pool,), daemon=True)
        pool.thread.start()

    def _drop(self, job_id: str) -> _Job | None:
        """Forget a job; a pool still serving it is told when (`_grow`)."""
        job = self._jobs.pop(job_id, None)
        for pool in self._pools.values():
            if pool.running == job_id:
                pool.given_up = time.monotonic()
        return job

    def _cancel(self, job_id: str) -> None:
        job = self._drop(job_id)
        if job is None:
            return
        job.cancelled = True
        if job_id in self._queues[job.key]:
            self._queues[job.key].remove(job_id)
        self._cv.notify_all()

    def _fail(self, job_id: str, error: BaseException) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.cancelled:
            return
        if job_id in self._queues[job.key]:
            self._queues[job.key].remove(job_id)
        job.events.append(("error", error))
        self._cv.notify_all()

    def _run(self, pool: _Pool) -> None:
        """One pool's life: a TorchTrainer whose workers serve jobs until told to stop."""
        error = None
        try:
            from ray.train import FailureConfig, RunConfig, ScalingConfig
            from ray.train.torch import TorchTrainer

            from raytune_ctr import storage, trace

            key = pool.key
            trace.mark("pool_start", pool=str(key))
            # Ray rejects an empty bundle: a CPU pool's token is a sliver of its node.
            per_worker = {"CPU": 0} | ({"GPU": key.gpus_per_worker} if key.gpus_per_worker
                                       else {f"node:{key.node_ip}": 0.001})
            me = ray.get_runtime_context().current_actor
            TorchTrainer(
                serve, train_loop_config={"coordinator": me, "pool": pool.id},
                scaling_config=ScalingConfig(num_workers=key.world,
                                             use_gpu=bool(key.gpus_per_worker),
                                             resources_per_worker=per_worker),
                run_config=RunConfig(
                    name=f"pool-{key}-{pool.id}", storage_path=storage.join(self._storage, "pools"),
                    callbacks=[_group_failures(me, pool.id)],
                    # Bounds, so a pool whose workers cannot start or keep dying ends.
                    # ray.train gives Train v2's FailureConfig; mypy sees v1's, without the limit.
                    failure_config=FailureConfig(  # type: ignore[call-arg]
                        max_failures=8, controller_failure_limit=10)),
            ).fit()
        except BaseException as err:  # noqa: BLE001 - the pool's jobs get the reason
            error = RuntimeError(f"the {pool.key} worker pool gave up: {one_line(err)}")
        finally:
            self._ended(pool, error)

    def _ended(self, pool: _Pool, error: BaseException | None) -> None:
        from raytune_ctr import trace

        with self._cv:
            del self._pools[pool.id]
            if pool.running is not None and error is not None:
                self._fail(pool.running, error)
            queue = self._queues[pool.key]
            if not pool.served and error is not None:
                self._fruitless[pool.key] += 1
            if queue and (self._closed or self._fruitless[pool.key] >= GIVE_UP_AFTER):
                for job_id in list(queue):
                    self._fail(job_id, error or RuntimeError(f"no {pool.key} worker pool "
                                                             "could start"))
            elif queue:
                self._grow(pool.key)  # its queued jobs go to a fresh pool
            self._cv.notify_all()
        trace.mark("pool_end", pool=str(pool.key))

    def _watch(self) -> None:
        while True:
            time.sleep(2.0)
            with self._cv:
                now = time.monotonic()
                for job_id, job in list(self._jobs.items()):
                    if now - job.heard > SILENT_S:
                        self._cancel(job_id)
                for pool in list(self._pools.values()):
                    if not pool.up and not pool.stopping and now - pool.started > POOL_START_S:
                        pool.stopping = True  # its thread ends once Train gives up or it is up
                        for job_id in list(self._queues[pool.key]):
                            self._fail(job_id, RuntimeError(
                                f"the {pool.key} worker pool did not start within "
                                f"{POOL_START_S:g} s (are its resources free on that node?)"))
                        self._cv.notify_all()  # trials in wait_up see it now
                for key, queue in list(self._queues.items()):
                    if queue and not self._closed:
                        self._grow(key)  # a pool counted free soon that was not
                if self._gate is not None:
                    self._gate.expire()


def _group_failures(coordinator, pool_id: int):
    """A Train callback, in the pool's controller, that tells the coordinator when
    the pool's workers fail (Train then restarts them)."""
    from ray.train.v2.api.callback import UserCallback

    class GroupFailures(UserCallback):
        def after_exception(self, run_context, worker_exceptions: dict[int, Exception]):
            err = next(iter(worker_exceptions.values()))
            ray.get(coordinator.group_failed.remote(pool_id, f"{type(err).__name__}: "
                                                    f"{one_line(err)}"))

    return GroupFailures()


class _Stopped(Exception):
    """Tune stopped the job's trial (ASHA, or the sweep ending)."""


class _SetupFailed(Exception):
    """A job's set-up failed on some rank; raised on every rank alike."""

    def __init__(self, error: BaseException):
        super().__init__(one_line(error))
        self.error = error


def serve(config: dict) -> None:
    """A pool worker's whole life: take jobs and train them until told to stop."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from raytune_ctr import trace, train

    coordinator, pool = config["coordinator"], config["pool"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    trace.mark("pool_worker_ready", pool=pool, rank=rank)
    # A rank failing here (its DDP wrap makes collective calls) fails the group, and
    # Train restarts it as after any worker error.
    train.first_imports(device, wrap=ray.train.torch.prepare_model)
    trace.mark("pool_worker_warm", pool=pool, rank=rank)
    dist.barrier()  # every rank is warm
    if rank == 0:  # trials may train: the warm-up's imports would have skewed their epochs
        ray.get(coordinator.up.remote(pool))
    while True:
        job = ray.get(coordinator.take.remote(pool, 5.0)) if rank == 0 else None
        job = _broadcast(job)
        if job == STOP:
            return
        if job is not None:
            torch.set_num_threads(job["resources"].threads)
            _serve_job(job, coordinator, rank, world, device)


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(err: BaseException | None, world: int) -> None:
    """Every rank, after the set-up that makes no collective call: raise on every
    rank the first rank's error, if any, so all of them leave the job together."""
    import pickle

    import torch.distributed as dist

    try:
        pickle.dumps(err)
    except Exception:  # noqa: BLE001 - an error that does not pickle travels as text
        assert err is not None  # None pickles
        err = RuntimeError(f"{type(err).__name__}: {one_line(err)}")
    errors: list = [None] * world
    dist.all_gather_object(errors, err)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise _SetupFailed(first)


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

    state, early = None, None
    try:
        state = train.load_state(job["state"]) if job["state"] else None
    except Exception as err:  # noqa: BLE001 - alike on every rank: the job fails
        early = err
    error = None
    try:
        ctx = train.Context(device=device, rank=rank, world=world,
                            wrap=ray.train.torch.prepare_model, report=report,
                            ready=lambda err: _agree(early or err, world),
                            load=data.load_cached, flops=job["flops"])
        train.fit(job["data"], job["train"], res, ctx=ctx, state=state,
                  require=tuple(job["objectives"]), hour_usd=job["hour_usd"],
                  extra=job.get("extra"))
        if waiting:  # the trial has said what it will of the last epoch
            verdict(waiting.pop())
    except _Stopped:
        pass
    # Raised alike on every rank, so the group stays in step and serves on: set-up
    # (through _agree), and a diverged loss (checked on reduced metrics). Any other
    # error is one rank's and ends this worker: Train restarts the group.
    except _SetupFailed as err:
        error = err.error
    except FloatingPointError as err:
        error = err
    if rank == 0:
        ray.get(coordinator.finish.remote(job["id"], error))
    trace.mark("job_end", rank=rank)
    trace.set_trial(None)
