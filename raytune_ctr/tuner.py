"""The sweep: Ray Tune, driven by grid, random or Optuna search, runs every trial of
a spec and collects every epoch of every trial into one table.

A trial trains in its own Tune trial process when it has one worker, or on a
long-lived Ray Train worker group (DDP) when it has more (trial.py, pool.py).
Tune reuses trial processes, so a trial costs its training, not a process start.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import posixpath
import time
from pathlib import Path

import pandas as pd
from ray.tune.search.optuna import OptunaSearch

from raytune_ctr import data, plan, trial
from raytune_ctr import spec as spec_lib
from raytune_ctr.errors import one_line
from raytune_ctr.metrics import FACTS, METRICS
from raytune_ctr.spec import Spec, SpecError
from raytune_ctr.train import HISTORY_FILE

# Train V2 polls its workers every 2 s by default; a pool's controller polls them so
# a dead worker is seen at once. On one node the preemption watcher is an idle process.
# cuBLAS reads its workspace setting once per process, and a reused trial process
# may have started cuBLAS for an earlier trial: set the deterministic one for all.
TRIAL_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"} | TRIAL_ENV
CLUSTER_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"} | TRIAL_ENV


def smoke(spec: Spec) -> Spec:
    """A tiny subset for 1 epoch: the first two configurations, 512 training samples."""
    s = spec.search
    drop = {"epochs"}
    points = tuple({k: v for k, v in p.items() if k not in drop} for p in spec.grid_points()[:2])
    if s.method == "grid":
        search = dataclasses.replace(s, grid={}, points=points, num_samples=1)
    else:
        search = dataclasses.replace(
            s, num_samples=min(2, s.num_samples),
            space={k: v for k, v in s.space.items() if k not in drop},
            points=tuple({k: v for k, v in p.items() if k not in drop} for p in s.points[:2]))
    if search.scheduler == "asha" and search.asha.time_attr == "epoch":
        search = dataclasses.replace(search, asha=dataclasses.replace(search.asha, max_t=1.0))
    d = dataclasses.replace(spec.data, subset=min(spec.data.subset or 512, 512),
                            num_samples=min(spec.data.num_samples, 512))
    return dataclasses.replace(spec, name=f"{spec.name}-smoke", data=d, search=search,
                               train=dataclasses.replace(spec.train, epochs=1))


def _coordinator_name(storage: str) -> str:
    """The sweep's coordinator is named after its results folder, so the callback of
    a resumed sweep (pickled with Tune's state) finds the new one."""
    return "raytune_ctr-" + posixpath.basename(storage.rstrip("/"))


NAMESPACE = "raytune_ctr"
log = logging.getLogger(__name__)


def _coordination(spec: Spec, coordinator_name: str):
    """A Tune callback in the driver that keeps the coordinator (pool.py) informed:
    Tune's failure count per trial (so a restarted trial reports `retries` and
    `retry_error`), and the live trials of each size, so that pools no trial needs
    any more stop."""
    import ray
    from ray import tune

    total = len(spec.grid_points()) * spec.search.num_samples \
        if spec.search.method == "grid" else spec.search.num_samples

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


def _trial_error(t) -> str:
    """A trial's last error, from the files Tune has just written in the driver's
    staging folder (its copy in storage comes later)."""
    import cloudpickle

    try:
        if t.pickled_error_file and os.path.exists(t.pickled_error_file):
            with open(t.pickled_error_file, "rb") as f:
                return one_line(cloudpickle.load(f))
        if t.error_file and os.path.exists(t.error_file):
            last = Path(t.error_file).read_text().split("Failure # ")[-1]
            return one_line(RuntimeError(last.split("\n", 1)[-1]))
    except Exception:  # noqa: BLE001 - the count matters more than the text
        pass
    return ""


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


def optuna_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'optuna.db'}"


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


def _search(spec: Spec, run_dir: Path, concurrency: int):
    """(param_space, search_alg, num_samples) for the spec's method.

    The limit on live trials goes to the searcher itself: Tune ignores
    TuneConfig.max_concurrent_trials for a BasicVariantGenerator.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = spec.search
    if s.method == "grid":
        points = [p for p in spec.grid_points() for _ in range(s.num_samples)]
        # Tune requires every key of a preset point in the space; the spec's value is
        # the stand-in, and each point overrides it.
        train, res = spec.resolve({})
        fixed = dataclasses.asdict(train) | dataclasses.asdict(res)
        space = {k: fixed[k] for k in spec.searched_keys()}
        return (space, BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency),
                len(points))
    space = {k: _domain(d) for k, d in s.space.items()}
    points = [dict(p) for p in s.points] or None
    if s.method == "random":
        gen = BasicVariantGenerator(points_to_evaluate=points, random_state=s.seed,
                                    max_concurrent=concurrency)
        return space, gen, s.num_samples
    import optuna

    metrics, modes = list(s.objectives), list(s.objectives.values())
    sampler = (optuna.samplers.NSGAIISampler(seed=s.seed) if len(metrics) > 1
               else optuna.samplers.TPESampler(seed=s.seed))
    searcher = ResumableOptunaSearch(
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler, points_to_evaluate=points, study_name=run_dir.name,
        storage=optuna.storages.RDBStorage(optuna_storage_url(run_dir)))
    return space, searcher, s.num_samples


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that survives a resume: a trial which finished after Tune's last
    experiment checkpoint is already told in the study, so Tune's restarted copy of it
    must not report to it again (Optuna refuses, and Tune would crash)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)


def _scheduler(spec: Spec):
    s = spec.search
    if s.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = next(iter(s.objectives.items()))
    max_t = s.asha.max_t or max(t.epochs for t, _ in spec_lib.all_trials(spec))
    return ASHAScheduler(time_attr=s.asha.time_attr, metric=metric, mode=mode, max_t=max_t,
                         grace_period=s.asha.grace_period, reduction_factor=s.asha.reduction_factor)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a host:port nothing listens on: ray.init would wait minutes for its GCS."""
    import socket

    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" and the like: Ray resolves and reports those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise SpecError("--address", f"cannot reach a Ray cluster there ({err.strerror or err})",
                        address) from None


_OWN_CLUSTER = False  # whether init_ray started the Ray this process uses


def init_ray(address: str | None, verbose: bool = False) -> None:
    global _OWN_CLUSTER
    import ray

    if address is not None:
        _probe(address)
    runtime_env = None
    if address is None:
        # A local Ray's processes inherit this environment. A job runtime_env would
        # keep trials off the worker processes ray.init prestarts (theirs differs).
        for k, v in LOCAL_TRAIN_ENV.items():
            os.environ.setdefault(k, v)  # the user's setting wins
    else:
        runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in CLUSTER_TRAIN_ENV.items()}}
    try:
        # The dashboard stays on: Train's PlacementGroupCleaner asks its state API
        # whether a pool's controller is gone, and without it a pool whose driver
        # died leaks its workers' placement group.
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=verbose)
        _OWN_CLUSTER = address is None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SpecError("--address", f"cannot reach a Ray cluster there ({one_line(err)})",
                        address) from None


def _trainable(spec: Spec, coordinator, flops: dict[str, float]):
    from ray import tune

    def resources(config: dict):
        _, res = spec.resolve(config)
        return tune.PlacementGroupFactory([plan.trial_resources(res)])

    return tune.with_resources(tune.with_parameters(trial.run_trial, spec=spec,
                                                    coordinator=coordinator, flops=flops),
                               resources)


def _dirname(t) -> str:
    return f"{trial.DIR_PREFIX}{t.trial_id}"


def _start_coordinator(spec: Spec, storage: str):
    """The sweep's coordinator (pool.py), owned by this driver. On a one-node cluster
    the CPU pools the spec's trials can ask for start now: a pool takes seconds to
    start, longer than a small trial trains (`run_sweep` waits for them)."""
    import ray

    from raytune_ctr import pool

    name = _coordinator_name(storage)
    try:
        coordinator = pool.Coordinator.options(name=name, namespace=NAMESPACE).remote(storage)
    except ValueError:  # the name is taken
        raise SpecError("--name", "a sweep of that name is running on this Ray cluster",
                        posixpath.basename(storage.rstrip("/"))) from None
    if len([n for n in ray.nodes() if n.get("Alive")]) == 1:
        ip = ray.util.get_node_ip_address()
        worlds = {r.num_workers for r in spec_lib.all_resources(spec)
                  if r.num_workers > 1 and not r.use_gpu}
        # Waited on: a threaded actor runs calls in any order, and wait_up follows.
        ray.get([coordinator.start.remote(pool.PoolKey(w, 0.0, ip)) for w in sorted(worlds)])
    return coordinator


def _wait_for_pools(coordinator) -> None:
    """Start training once the pools are up: a pool's start-up is a burst of CPU
    that would slow the trials training beside it, and skew their timings."""
    import ray

    from raytune_ctr import pool

    if not ray.get(coordinator.wait_up.remote(pool.POOL_START_S)):
        log.warning("worker pools not up after %d s; starting the trials anyway",
                    pool.POOL_START_S)


def _stop_coordinator(coordinator) -> None:
    """Stop the pools (Train tears their workers down), then the coordinator. On a
    cluster of its own (started by init_ray) a pool still starting is not waited
    for: that Ray ends with this process."""
    import ray

    try:
        ray.get(coordinator.shutdown.remote(wait_starting=not _OWN_CLUSTER), timeout=180)
    finally:
        ray.kill(coordinator)


def _run_config(spec: Spec, name: str, parent: str, storage: str):
    from ray import tune

    return tune.RunConfig(
        name=name, storage_path=parent, verbose=1,
        callbacks=[_coordination(spec, _coordinator_name(storage))],
        # A trial that fails restarts from its last epoch checkpoint (max_failures
        # times; any error counts, so a diverged trial is tried again, then FAILED).
        failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def run_sweep(spec: Spec, run_dir: Path, *, concurrency: int, storage: str | None = None,
              flops: dict[str, float] | None = None) -> pd.DataFrame:
    """Run every trial of `spec` on the connected Ray cluster; write trials.parquet/csv.

    Tune writes to `storage` (a URI such as gs://bucket/prefix/<name>, which every
    node can reach) or else to run_dir; the tables go to run_dir. `flops`: the
    models' FLOP counts (`count_flops`), counted here when not given.
    """
    from ray import tune

    from raytune_ctr import trace

    trace.mark("sweep_start")
    run_dir = Path(run_dir).resolve()
    storage = storage or str(run_dir)
    live = _live_trials(spec, concurrency)
    param_space, search_alg, num_samples = _search(spec, run_dir, live)
    coordinator = _start_coordinator(spec, storage)
    trace.mark("coordinator_started")
    if flops is None:  # while the coordinator's pools start
        flops = count_flops(spec)
        trace.mark("flops_counted")
    try:
        tuner = tune.Tuner(
            _trainable(spec, coordinator, flops or {}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples, search_alg=search_alg, scheduler=_scheduler(spec),
                max_concurrent_trials=None if spec.search.method != "optuna" else live,
                reuse_actors=True, trial_dirname_creator=_dirname),
            run_config=_run_config(spec, run_dir.name, posixpath.dirname(storage), storage),
        )
        _wait_for_pools(coordinator)
        trace.mark("tuner_fit")
        grid = tuner.fit()
        trace.mark("tuner_done")
    finally:
        _stop_coordinator(coordinator)
    trace.mark("coordinator_stopped")
    return _tables(grid, spec, run_dir)


def can_resume(storage: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(storage)


def resume_sweep(spec: Spec, run_dir: Path, *, storage: str | None = None,
                 flops: dict[str, float] | None = None) -> pd.DataFrame:
    """Continue an interrupted sweep where Tune's last experiment checkpoint left it.

    Tune restores its trials, the scheduler and the searcher's own state
    (Optuna's study and sampler, not a fresh random one). Finished trials are
    kept; unfinished ones restart, and their Train runs go on from their last
    epoch checkpoint; errored ones stay FAILED, as they would have.
    """
    from ray import tune

    run_dir = Path(run_dir).resolve()
    storage = storage or str(run_dir)
    coordinator = _start_coordinator(spec, storage)
    flops = flops if flops is not None else count_flops(spec)
    try:
        try:
            # The run config (and its callback, which finds this coordinator by name)
            # comes back from the interrupted run.
            tuner = tune.Tuner.restore(storage, trainable=_trainable(spec, coordinator, flops or {}),
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        except Exception as err:  # noqa: BLE001 - any reason Tune gives is the user's answer
            raise SpecError("--resume", f"Tune cannot restore {storage} ({one_line(err)})",
                            run_dir.name) from None
        _wait_for_pools(coordinator)
        grid = tuner.fit()
    finally:
        _stop_coordinator(coordinator)
    df = _tables(grid, spec, run_dir)
    if spec.search.method == "optuna":
        _close_orphans(run_dir)
    return df


def _close_orphans(run_dir: Path) -> None:
    """Optuna trials asked for just before the kill, after Tune's last checkpoint, stay
    RUNNING in the study for ever: Tune asked again on resume. Mark them FAIL."""
    import optuna

    storage = optuna.storages.RDBStorage(optuna_storage_url(run_dir))
    study = optuna.load_study(study_name=run_dir.name, storage=storage)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "interrupted",
                                    "asked before the sweep was killed; never run")
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def _tables(grid, spec: Spec, run_dir: Path) -> pd.DataFrame:
    df = collect(grid, spec)
    df.to_parquet(run_dir / "trials.parquet", index=False)
    df.to_csv(run_dir / "trials.csv", index=False)
    if spec.search.method != "optuna":
        record_optuna_study(df, spec, run_dir)
    return df


def checkpointed_epochs(result) -> list[dict]:
    """The epochs a trial saved with its newest whole checkpoint, in order."""
    import json

    if result.filesystem is None or not result.path:
        return []
    found = trial.newest_checkpoint(result.filesystem, result.path)
    return json.loads(found[HISTORY_FILE]) if found else []


def collect(grid, spec: Spec) -> pd.DataFrame:
    """One row per trial per epoch: status, error, resolved config, metrics, fingerprint.

    A trial that crashed keeps its epochs so far and is FAILED; one that never
    reported gets a single row with no metrics. Never a made-up score. Epochs
    come from Tune's record and, where a killed driver lost some of it, from
    the trial's last checkpoint.
    """
    rows = []
    for i, r in enumerate(grid):
        config = dict(r.config or {})
        train, res = spec.resolve(config)
        tid = (r.metrics or {}).get("trial_id") or \
            posixpath.basename(r.path or "").removeprefix(trial.DIR_PREFIX)
        base = {"trial_id": tid, "trial_index": i}
        base |= dataclasses.asdict(train) | {k: v for k, v in dataclasses.asdict(res).items()
                                             if k not in spec_lib.PRICE_FIELDS}  # in spec.yaml
        base["hidden"] = "-".join(map(str, train.hidden))
        base["cpus_per_worker"], base["threads_per_worker"] = res.worker_cpus, res.threads
        mdf = r.metrics_dataframe
        reported = [] if mdf is None or "epoch" not in mdf else mdf.to_dict("records")
        saved = checkpointed_epochs(r)
        # Later wins: Tune's rows (they carry `retries`) over saved ones, and the last
        # report of an epoch a restarted run repeated.
        by_epoch = {e["epoch"]: e for e in saved + reported if pd.notna(e.get("epoch"))}
        epochs = [by_epoch[k] for k in sorted(by_epoch)]
        last = max((e["epoch"] for e in epochs), default=0)
        if r.error is not None:
            status, error = "FAILED", one_line(r.error)
        else:
            status, error = ("COMPLETED" if last >= train.epochs else "STOPPED"), ""
        base |= {"status": status, "error": error}
        keep = lambda k: k in METRICS or k in FACTS or k.startswith("env_")  # noqa: E731
        for e in epochs or [{}]:
            rows.append(base | {k: v for k, v in e.items() if keep(k)})
    df = pd.DataFrame(rows)
    for col in METRICS:
        if col not in df:
            df[col] = float("nan")
    return one_type_per_column(df)


def one_type_per_column(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a searched `"auto" | true | false` becomes text."""
    for col in df.columns:
        if pd.api.types.is_object_dtype(df[col]) and len({type(v) for v in df[col].dropna()}) > 1:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v))
    return df


def record_optuna_study(df: pd.DataFrame, spec: Spec, run_dir: Path) -> None:
    """Save a grid or random sweep as an Optuna study too, for optuna-dashboard."""
    import optuna

    keys = spec.searched_keys()
    objectives = spec.search.objectives
    study = optuna.create_study(storage=optuna_storage_url(run_dir), study_name=run_dir.name,
                                directions=["maximize" if m == "max" else "minimize"
                                            for m in objectives.values()])
    dists = {k: optuna.distributions.CategoricalDistribution(
        sorted(df[k].dropna().unique().tolist(), key=str)) for k in keys}
    for _, rows in df.groupby("trial_index", sort=True):
        last = rows.sort_values("epoch").iloc[-1]
        params = {k: last[k].item() if hasattr(last[k], "item") else last[k] for k in keys}
        values = [float(last[m]) for m in objectives]
        ok = last["status"] != "FAILED" and all(pd.notna(v) for v in values)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, values=values if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            user_attrs={"status": str(last["status"]), "error": str(last["error"])}))


def prepare_data(spec: Spec) -> str:
    """Fetch/verify the dataset on this node before any trial starts; return its source.

    A text dataset is tokenized here for every model and length the trials can ask
    for (cached for the workers), and each model's weights are fetched once.
    """
    if spec.data.dataset not in data.TEXT:
        return data.load(spec.data).source
    from raytune_ctr import models

    cand = spec_lib.candidates(spec)
    for name in cand["model"]:
        source = models.hf_source(name)
        for length in cand["max_seq_length"]:
            ds = data.load(spec.data, data.Tokenize(source, length))
        models.build(name, ds.input_shape, ds.num_classes)
    return ds.source


def count_flops(spec: Spec) -> dict[str, float]:
    """Every model's training FLOPs per sample, counted once for the sweep (keys:
    `train.flops_key`). Counting imports torch._dynamo, seconds of CPU that no
    trial process should pay; a trial whose shape is not here counts its own."""
    import torch

    from raytune_ctr import hardware, models, train

    cand = spec_lib.candidates(spec)
    flops = {}
    for name in cand["model"]:
        source = models.hf_source(name)
        for length in cand["max_seq_length"] if source else [None]:
            ds = data.load(spec.data, data.Tokenize(source, length) if source else None)
            dtype = ds.train.x.dtype if ds.in_memory else torch.float32
            for hidden in cand["hidden"] if name == "mlp" else [spec.train.hidden]:
                t = dataclasses.replace(spec.train, model=name, hidden=hidden)
                net = models.build(name, ds.input_shape, ds.num_classes, hidden=t.hidden)
                flops[train.flops_key(t, ds.input_shape, ds.num_classes, dtype)] = \
                    hardware.flops_per_sample(net, ds.input_shape, ds.num_classes,
                                              torch.device("cpu"), dtype=dtype)
    return flops
