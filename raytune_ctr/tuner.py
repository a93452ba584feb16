"""The Tune side of a sweep: the spec's search space, searcher and scheduler, and the
Tuner that runs its trials (trial.py) beside the sweep's coordinator (pool.py).

A trial trains in its own Tune trial process when it has one worker, or on a
long-lived Ray Train worker group (DDP) when it has more. Tune reuses trial
processes, so a trial costs its training, not a process start.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from raytune_ctr import checkpoints, gate, packing, plan, pool, results, script, train, trial
from raytune_ctr import spec as spec_lib
from raytune_ctr.errors import SpecError, StorageError, one_line
from raytune_ctr.live import Live
from raytune_ctr.live import total as total_trials
from raytune_ctr.results import Results
from raytune_ctr.searchers import ResumableOptunaSearch  # also: old tuner.pkl files name it here
from raytune_ctr.spec import Spec

NAMESPACE = "raytune_ctr"
log = logging.getLogger(__name__)


class Stop:
    """SIGINT (Ctrl-C) and SIGTERM during a sweep. The first, while Tune runs, stops it
    the way Tune's own Ctrl-C does: it saves its experiment state and returns, so
    finished trials stay finished and the rest resume. A second, or one while Tune is
    not running, aborts at once (`Aborted`); Tune's last saved state still resumes.

    Tune's SIGINT handler is off (TUNE_DISABLE_SIGINT_HANDLER): it knows no SIGTERM,
    and it would not tell us it fired. Its SIGUSR1 handler, which it always installs,
    is the same stop, and is what this calls.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._tuning = False
        self._old: dict = {}

    def __enter__(self) -> Stop:
        import signal

        if threading.current_thread() is threading.main_thread():  # signal's own rule
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on)
            self._hook, sys.unraisablehook = sys.unraisablehook, self._dropped
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self._old:
            sys.unraisablehook = self._hook

    def _dropped(self, unraisable) -> None:
        """Python drops an exception out of a finalizer (__del__, a weakref callback),
        which the garbage collector runs anywhere: an Aborted that landed in one is
        raised again, from a bare thread (threading's locks may be held here) once
        the main thread has left the finalizer."""
        if isinstance(unraisable.exc_value, Aborted):
            _thread.start_new_thread(self._again, (unraisable.exc_value.signum,))
        else:
            self._hook(unraisable)

    def _again(self, signum: int) -> None:
        import signal

        time.sleep(0.01)
        if signal.getsignal(signum) == self._on:  # not once the sweep's handlers are gone
            # A real signal, to the main thread: it also ends a blocking call there.
            signal.pthread_kill(threading.main_thread().ident or 0, signum)

    @contextlib.contextmanager
    def tuning(self):
        import signal

        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._tuning = True
        try:
            yield
        finally:
            self._tuning = False
            if self._old:  # Tune leaves its handler, whose run is over
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def _on(self, signum: int, frame) -> None:
        import signal

        first, self.signum = self.signum is None, self.signum or signum
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self._tuning and callable(tune_stop):
            log.warning("%s: stopping the sweep once Tune has saved its state; finished "
                        "trials are kept. Press Ctrl-C again to stop at once.",
                        signal.Signals(signum).name)
            tune_stop(signal.SIGUSR1, frame)
            return
        raise Aborted(signum)


class Aborted(KeyboardInterrupt):
    """A sweep stopped at once by a signal (`signum`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(spec: Spec, where: Results, *, concurrency: int, own_cluster: bool,
        stop: Stop | None = None, verbose: bool = False, then: Callable | None = None):
    """Run every trial of `spec` on the connected Ray cluster; return Tune's ResultGrid,
    or `then(grid)`.

    Tune and the trials write to `where` (a URI such as gs://bucket/prefix/<name>,
    which every node can reach, or the local folder). `own_cluster`: this process
    started the Ray it uses. `then` (the tables and the report) runs while the pools
    stop: Train's teardown of their workers takes seconds, mostly waiting.
    """
    from ray import tune

    from raytune_ctr import trace

    trace.mark("sweep_start")
    _quiet(verbose)
    coordinator, gated = _start_coordinator(spec, where, concurrency)
    stopping = None  # the coordinator's shutdown, once asked for
    hurry = False
    live = concurrency if gated else _live_trials(spec, concurrency)
    param_space, search_alg, num_samples = _search(spec, where, live)
    trace.mark("coordinator_started")
    flops = _flops(spec)  # while the coordinator's pools start
    trace.mark("flops_counted")
    try:
        tuner = tune.Tuner(
            _trainable(spec, where, coordinator, flops, gated),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples, search_alg=search_alg, scheduler=_scheduler(spec),
                # (Grid and random: the variant generator holds `live`, from _search.)
                max_concurrent_trials=None if spec.search.method != "optuna" else live,
                reuse_actors=True, trial_dirname_creator=_dirname),
            run_config=_run_config(spec, where, verbose),
        )
        trace.mark("tuner_fit")
        with stop.tuning() if stop else contextlib.nullcontext():
            grid = tuner.fit()
        trace.mark("tuner_done")
        stopping = coordinator.shutdown.remote(wait_starting=not own_cluster)
        return then(grid) if then else grid
    except Aborted:
        hurry = own_cluster
        raise
    finally:
        _stop_coordinator(coordinator, own_cluster, stopping, hurry)
        script.kill_containers(spec)
        trace.mark("coordinator_stopped")


def _quiet(verbose: bool) -> None:
    # Tune keeps every checkpoint of a trial in its record (checkpoints.py): without
    # this, each with all the metrics of its epoch, so the record would grow by epochs.
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    if not verbose:  # Tune's older reporter prints nothing at verbose 0; the live view does
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def restore(spec: Spec, where: Results, *, own_cluster: bool, stop: Stop | None = None):
    """Continue an interrupted sweep where Tune's last experiment checkpoint left it.

    Tune restores its trials, the scheduler and the searcher's own state (Optuna's
    study and sampler, not a fresh random one). Finished trials are kept; unfinished
    ones restart from their last epoch checkpoint; errored ones stay FAILED, as they
    would have.
    """
    from ray import tune

    _quiet(verbose=False)
    coordinator, gated = _start_coordinator(spec, where, plan.plan(spec))
    flops = _flops(spec)
    stand_ins: list[str] = []
    hurry = False
    try:
        try:
            stand_ins = results.stand_in_for_replaced(where.where)
            # The run config (and its callback, which finds this coordinator by name)
            # comes back from the interrupted run.
            tuner = tune.Tuner.restore(where.where,
                                       trainable=_trainable(spec, where, coordinator, flops, gated),
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False,
                                       storage_filesystem=where.tune_filesystem)
        except Exception as err:  # noqa: BLE001 - any reason Tune gives is the user's answer
            raise SpecError("--resume", f"Tune cannot restore {where.where} ({one_line(err)})",
                            where.name) from None
        with stop.tuning() if stop else contextlib.nullcontext():
            return tuner.fit()
    except Aborted:
        hurry = own_cluster
        raise
    finally:
        _stop_coordinator(coordinator, own_cluster, hurry=hurry)
        script.kill_containers(spec)
        results.remove_stand_ins(stand_ins)


# --- the search -----------------------------------------------------------------


def _live_trials(spec: Spec, concurrency: int) -> int:
    """Trials live at once: those that fit, plus one waiting. A waiting trial is one
    Tune has staged, so it takes over the process of the first trial that ends and
    asks for the same resources, instead of starting one. Not when the limit is the
    user's (search.max_concurrent), which the waiting one could break, nor for a
    deterministic Optuna search: each suggestion must see every result before it."""
    s = spec.search
    if (s.max_concurrent is not None and s.max_concurrent <= concurrency) \
            or (spec.train.deterministic and s.method == "optuna"):
        return concurrency
    return concurrency + 1


def _domain(dim: spec_lib.Dimension):
    from ray import tune

    a = dim.args
    if dim.kind == "choice":
        return tune.choice(list(a))
    if dim.kind == "uniform":
        return tune.uniform(*a)
    if dim.kind == "loguniform":
        return tune.loguniform(*a)
    return tune.randint(a[0], a[1] + 1)  # ours is inclusive, Tune's high is exclusive


def _search(spec: Spec, where: Results, concurrency: int):
    """(param_space, search_alg, num_samples) for the spec's method.

    The limit on live trials goes to the searcher itself: Tune ignores
    TuneConfig.max_concurrent_trials for a BasicVariantGenerator.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = spec.search
    if s.method == "grid":
        grid = [p for p in spec.grid_points() for _ in range(s.num_samples)]
        # Tune requires every key of a preset point in the space; the spec's value is
        # the stand-in, and each point overrides it.
        train_spec, res = spec.resolve({})
        fixed = dataclasses.asdict(train_spec) | dataclasses.asdict(res)
        space = {k: fixed[k] for k in spec.searched_keys()}
        return (space, BasicVariantGenerator(points_to_evaluate=grid, max_concurrent=concurrency),
                len(grid))
    space = {k: _domain(d) for k, d in s.space.items()}
    points = [dict(p) for p in s.points] or None
    num_samples = s.num_samples
    if s.goal is not None:
        from raytune_ctr import searchers

        # The fast corners first: an early time to target caps every slower trial.
        seeded = [*(points or []), *searchers.corners(spec)]
        points = [p for i, p in enumerate(seeded) if p not in seeded[:i]] or None
        num_samples = s.goal.budget.trials or num_samples
    if s.method == "random":
        gen = BasicVariantGenerator(points_to_evaluate=points, random_state=s.seed,
                                    max_concurrent=concurrency)
        return space, gen, num_samples
    from raytune_ctr import samplers

    if s.goal is not None:
        from raytune_ctr import target

        race = s.goal.finalists
        return space, searchers.GoalOptunaSearch(
            target.rule(spec), num_samples, race, spec.train.seed, str(where.local),
            sampler=samplers.for_objectives(1, s.seed), points_to_evaluate=points,
            study_name=where.name, storage=where.optuna_storage()), \
            num_samples * (max(race.seeds) if race else 1)  # the race's trials at most
    names: list[str] = list(s.objectives)
    modes: list[str] = list(s.objectives.values())
    sampler = samplers.for_objectives(len(names), s.seed)
    searcher = ResumableOptunaSearch(
        metric=names if len(names) > 1 else names[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler, points_to_evaluate=points, study_name=where.name,
        storage=where.optuna_storage())
    return space, searcher, s.num_samples


def _scheduler(spec: Spec):
    s = spec.search
    if s.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = next(iter(s.objectives.items()))
    max_t = s.asha.max_t or max(t.epochs for t, _ in spec_lib.all_trials(spec))
    # Ray annotates max_t and grace_period int; it compares them, so seconds may be floats.
    return ASHAScheduler(time_attr=s.asha.time_attr, metric=metric, mode=mode,
                         max_t=max_t, grace_period=s.asha.grace_period,  # type: ignore[arg-type]
                         reduction_factor=s.asha.reduction_factor)


# --- the trials and their coordinator ----------------------------------------------


def _flops(spec: Spec) -> dict[str, float]:
    """Our loop's models' FLOPs; a user's function or script has no model we know."""
    return train.count_flops(spec) if spec.runner == "loop" else {}


def _gated(spec: Spec) -> bool:
    """Whether every trial's process asks Ray for the same sliver of a CPU and holds
    its workers' CPUs in the coordinator's gate (gate.py), so that Tune reuses one
    process for trials of any worker count: on a one-node cluster (the coordinator
    then holds the node's CPUs from Ray, if Ray can give them), for our loop on CPUs, when
    trials differ in CPUs (else they all ask the same already) and none reserves
    memory."""
    import ray

    every = spec_lib.all_resources(spec)
    return (spec.runner == "loop"
            and len([n for n in ray.nodes() if n.get("Alive")]) == 1
            and len({r.num_workers * r.worker_cpus for r in every}) > 1
            and not any(r.use_gpu or r.max_memory_gb for r in every))


def _trainable(spec: Spec, where: Results, coordinator, flops: dict[str, float],
               gated: bool):
    from ray import tune

    def resources(config: dict):
        _, res = spec.resolve(config)
        return tune.PlacementGroupFactory([gate.TOKEN if gated else
                                           plan.trial_resources(res, spec.runner != "loop")])

    return tune.with_resources(tune.with_parameters(trial.run_trial, spec=spec,
                                                    coordinator=coordinator, flops=flops,
                                                    gated=gated, folder=where.where),
                               resources)


def _dirname(t) -> str:
    return f"{results.TRIAL_PREFIX}{t.trial_id}"


def _run_config(spec: Spec, where: Results, verbose: bool = False):
    from ray import tune

    # Tune's own output (a box per trial start and result) only with -v; else the
    # compact live table.
    callbacks = [_coordination(spec, _coordinator_name(where)), _Tables(spec, where),
                 checkpoints.Replaced()]
    try:
        callbacks.append(_Board())
    except ImportError:  # no tensorboardX: Tune goes without its own too
        pass
    return tune.RunConfig(
        name=where.name, storage_path=where.tune_storage,
        storage_filesystem=where.tune_filesystem, verbose=1 if verbose else 0,
        callbacks=callbacks if verbose else [*callbacks, Live(spec)],
        # A trial that fails restarts from its last epoch checkpoint (max_failures
        # times; any error counts, so a diverged trial is tried again, then FAILED).
        failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
        stop=_capping(spec, where),
        # Every checkpoint kept in Tune's record, old ones emptied (checkpoints.py).
        checkpoint_config=tune.CheckpointConfig())


def _capping(spec: Spec, where: Results):
    """Target mode's stopper (searchers.py); None otherwise."""
    if spec.search.goal is None:
        return None
    from raytune_ctr import searchers, target

    return searchers.CappingStopper(target.rule(spec), searchers.budget(spec),
                                      spec.train.epochs, str(where.local))


def _coordinator_name(where: Results) -> str:
    """The sweep's coordinator is named after its results folder, so the callback of
    a resumed sweep (pickled with Tune's state) finds the new one."""
    return f"raytune_ctr-{where.name}"


def _start_coordinator(spec: Spec, where: Results, concurrency: int):
    """The sweep's coordinator (pool.py), owned by this driver, and whether its gate
    is open (`_gated`). On a one-node cluster the CPU pools the spec's trials can ask
    for start now, beside Tune's own start and the first trial process's: a pool
    takes seconds to start, longer than a small trial trains. A one-worker trial
    trains once they are up (trial.py)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        # ray.remote made it an ActorClass; mypy keeps a decorated class's own type.
        # On the driver's node: a worker node lost mid-sweep must not take it along.
        coordinator = pool.Coordinator.options(  # type: ignore[attr-defined]
            name=_coordinator_name(where), namespace=NAMESPACE,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)).remote(where.where)
    except ValueError:  # the name is taken
        raise SpecError("--name", "a sweep of that name is running on this Ray cluster",
                        where.name) from None
    gated = False
    if _gated(spec):
        cpus = ray.cluster_resources()["CPU"]
        # All but the slivers the trial processes (and one more) ask Ray for.
        reserve = round(cpus - (concurrency + 1) * gate.TOKEN["CPU"], 4)
        gated = ray.get(coordinator.open_gate.remote(cpus, reserve, 10.0))
        if not gated:
            log.info("the node's CPUs are not all free: each trial asks Ray for its own")
    # A user's function or script runs its ranks itself (torchrun): no pool serves it.
    if spec.runner == "loop" and len([n for n in ray.nodes() if n.get("Alive")]) == 1:
        ip = ray.util.get_node_ip_address()
        worlds = {r.num_workers for r in spec_lib.all_resources(spec)
                  if r.num_workers > 1 and not r.use_gpu}
        # Waited on: a threaded actor runs calls in any order, and wait_up follows.
        ray.get([coordinator.start.remote(pool.PoolKey(w, 0.0, ip)) for w in sorted(worlds)])
    return coordinator, gated


def _stop_coordinator(coordinator, own_cluster: bool, stopping=None,
                      hurry: bool = False) -> None:
    """Stop the pools (Train tears their workers down), then the coordinator. On a
    cluster of its own a pool still starting is not waited for: that Ray ends with
    this process. `stopping`: the shutdown already asked for, to wait on. `hurry`:
    a sweep stopped at once on a Ray of its own, whose end at exit takes the pools
    with it; Train's teardown of workers that a Ctrl-C reached took 8.5 s."""
    import ray

    if hurry:
        ray.kill(coordinator)
        return
    if stopping is None:
        stopping = coordinator.shutdown.remote(wait_starting=not own_cluster)
    try:
        ray.get(stopping, timeout=180)
    except ray.exceptions.GetTimeoutError:  # an OSError, but not the results' disk
        log.warning("the coordinator did not stop its pools in 180 s; killing it")
    finally:
        ray.kill(coordinator)


def _coordination(spec: Spec, coordinator_name: str):
    """A Tune callback in the driver that keeps the coordinator (pool.py) informed:
    Tune's failure count per trial (so a restarted trial reports `retries` and
    `retry_error`), and the live trials of each size, so that pools no trial needs
    any more stop."""
    import ray
    from ray import tune

    goal = spec.search.goal
    # Target mode's race asks for more trials, of any size, after the search's own.
    total = total_trials(spec) * (max(goal.finalists.seeds) if goal and goal.finalists else 1)

    class Coordination(tune.Callback):
        def __init__(self):
            self._seeded, self._last, self._handle = False, 0.0, None

        def __getstate__(self):  # saved with the run config; the handle is this run's
            return self.__dict__ | {"_handle": None}

        def _coordinator(self):
            if self._handle is None:
                try:
                    self._handle = ray.get_actor(coordinator_name, namespace=NAMESPACE)
                except ValueError:
                    log.warning("no coordinator %s: retries and pool stops go unrecorded",
                                coordinator_name)
            return self._handle

        def on_trial_recover(self, iteration, trials, trial, **info):
            if (c := self._coordinator()) is not None:
                ray.get(c.record_failure.remote(trial.trial_id, trial.num_failures,
                                                _trial_error(trial)))

        def on_step_begin(self, iteration, trials, **info):
            if not self._seeded:  # a resumed sweep: failures from before the interruption
                self._seeded = True
                for t in trials:
                    if t.num_failures:
                        self.on_trial_recover(iteration, trials, t)
            if time.monotonic() - self._last < 1.0 or (c := self._coordinator()) is None:
                return
            self._last = time.monotonic()
            needed = collections.Counter()
            for t in trials:
                if t.status in ("PENDING", "RUNNING", "PAUSED"):
                    _, res = spec.resolve(t.config)
                    needed[(res.num_workers, res.gpus_per_worker if res.use_gpu else 0.0)] += 1
            c.retire.remote(dict(needed), len(trials) >= total)

    return Coordination()


class _Tables(Callback):
    """A Tune callback in the driver that rewrites the trials table as trials end, so
    a sweep that dies (a full disk, a killed driver) leaves the trials that finished
    readable by `raytune-ctr report`. A write that fails stops the sweep.

    The table is written whole, so a write costs more as trials add up: it waits
    until the one before it is 19 of its own durations old (at most 5% of the
    driver's time, the rule Tune's own record follows). That is at each trial's end
    for a small sweep, and a second or so apart at a thousand trials."""

    # The callback of each sweep this driver runs (restored with a resumed one), so the
    # sweep can ask which trials ended of themselves: Tune's stop on a signal marks the
    # running ones TERMINATED too.
    live: dict[str, _Tables] = {}

    def __init__(self, spec: Spec, where: Results):
        self.spec, self.where = spec, where
        self._reported: dict[str, list[dict]] = collections.defaultdict(list)
        self._tabled: set[str] = set()  # trials whose rows are in the table
        self._df = None  # the table so far: each ended trial's rows, appended
        self._new: list = []  # rows of trials ended since the last write
        self._whole: set[str] = set()  # trials the driver saw report every epoch
        self._written, self._write_s = float("-inf"), 0.0
        self.ended: set[str] | None = None  # trials that ended of themselves
        self.write_error: StorageError | None = None
        self._uploaded = 0.0
        _Tables.live[where.name] = self

    def __getstate__(self):  # saved with the run config: the spec and the folder only
        return {"spec": self.spec, "where": self.where}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["where"])

    def on_step_begin(self, iteration, trials, **info):
        if self.ended is None:  # those a resumed sweep's earlier run finished
            self.ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._reported[trial.trial_id].append(packing.unpack(result))

    # Tune calls on_trial_complete before it sets the trial's status.
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, trials, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, trials, "ERROR")

    def _end(self, trial, trials, status: str) -> None:
        self.ended = (self.ended or set()) | {trial.trial_id}
        self._write(trials, {trial.trial_id: status})

    def _write(self, trials, now: dict[str, str]) -> None:
        import pandas as pd
        from ray.tune import Result

        for i, j in enumerate(results.made_order(trials)):
            t = trials[j]
            if t.trial_id in (self.ended or ()) and t.trial_id not in self._tabled:
                # Its reports are in its rows now: the driver keeps no more of it.
                reported = self._reported.pop(t.trial_id, None)
                seen = sorted({e["epoch"] for e in reported or () if "epoch" in e})
                if seen and seen == list(range(1, len(seen) + 1)):
                    self._whole.add(t.trial_id)
                status = now.get(t.trial_id, t.status)
                r = Result(metrics=dict(t.last_result or {}), checkpoint=None, path=t.path,
                           error=_staged_error(t) if status == "ERROR" else None,
                           metrics_dataframe=pd.DataFrame(reported) if reported else None,
                           _storage_filesystem=t.storage.storage_filesystem if t.storage
                           else None)
                self._new.append(results.table([(i, r)], [status], self.spec, live=True))
                self._tabled.add(t.trial_id)
        self._flush()

    def _flush(self, force: bool = False) -> None:
        import pandas as pd

        started = time.monotonic()
        if not self._new or (not force and started - self._written < 19 * self._write_s):
            return
        # Appended, not rebuilt from every trial's rows.
        new, self._new = self._new, []
        self._df = results.one_type_per_column(
            pd.concat(new if self._df is None else [self._df, *new], ignore_index=True))
        try:
            self.where.write_tables(self._df, self.spec, final=False)
            self._write_s = time.monotonic() - started  # not the upload's time below
            # At a URI the head's disk may go with its pod: the tables go there too,
            # at most once a minute (the folder is copied whole).
            if self.where.remote and time.monotonic() - self._uploaded > 60:
                self._uploaded = time.monotonic()
                try:
                    self.where.upload()
                except (OSError, ValueError) as err:
                    log.warning("could not copy the tables to %s yet (%s)", self.where.remote,
                                one_line(err))
        except OSError as err:
            # Raised from on_step_end: Tune takes what on_trial_complete raises for the
            # trial's own failure (and would restart a finished trial). The sweep finds
            # the one line here, under the TuneError Tune wraps it in.
            self.write_error = self.where.cannot_write(err)
        self._written = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if self.write_error is None:
            self._flush()
        if self.write_error is not None:  # outside any try of Tune's: the sweep stops
            raise self.write_error

    def on_experiment_end(self, trials, **info):
        if self.write_error is None:
            self._flush(force=True)


class _Board(TBXLoggerCallback):
    """Tune's TensorBoard logger, given each result unpacked (packing.py): it logs
    numbers only, so it would miss every packed metric. Given one, Tune adds none."""

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, packing.unpack(result))


_Live = Live  # the live view's name in the Tune state of sweeps saved before live.py


def write_error(where: Results) -> StorageError | None:
    """Why the sweep at `where` could not write its trials table, if it could not."""
    tables = _Tables.live.get(where.name)
    return tables.write_error if tables else None


def tabled(where: Results):
    """The rows of the trials the sweep at `where` tabled as they ended, from every
    report the driver saw, if any."""
    import pandas as pd

    tables = _Tables.live.get(where.name)
    if tables is None:
        return None
    parts = ([] if tables._df is None else [tables._df]) + tables._new
    if not parts:
        return None
    rows = pd.concat(parts, ignore_index=True)
    # Only the trials whose every epoch it saw: those a resumed sweep's earlier run
    # finished, or that ran across a kill, come from Tune's record and checkpoints.
    return rows[rows["trial_id"].isin(tables._whole)]


def ended_trials(where: Results) -> set[str] | None:
    """The trials of the sweep at `where` that ended of themselves (not stopped with it)."""
    tables = _Tables.live.get(where.name)
    return tables.ended if tables else None


def _trial_error(t) -> str:
    """A trial's last error in one line ("" if Tune kept none)."""
    err = _staged_error(t)
    return one_line(err) if err is not None else ""


def _staged_error(t) -> Exception | None:
    """A trial's last error, from the files Tune has just written in the driver's
    staging folder (its copy in storage comes with Tune's next record save)."""
    import cloudpickle

    try:
        if t.pickled_error_file and os.path.exists(t.pickled_error_file):
            with open(t.pickled_error_file, "rb") as f:
                return cloudpickle.load(f)
        if t.error_file and os.path.exists(t.error_file):
            last = Path(t.error_file).read_text().split("Failure # ")[-1]
            return RuntimeError(last.split("\n", 1)[-1])
    except Exception:  # noqa: BLE001 - then what storage has, if anything
        pass
    return t.get_pickled_error() or t.get_error()


