"""The sweep: Ray Tune, driven by grid, random or Optuna search, runs one Ray Train
job per trial and collects every epoch of every trial into one table.

Train V2 nesting: each Tune trial is a function that builds a `TorchTrainer` and
calls `fit()`; `TuneReportCallback` forwards each epoch's metrics to Tune.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from pathlib import Path

import pandas as pd
from ray.tune.search.optuna import OptunaSearch

from raytune_ctr import data
from raytune_ctr import spec as spec_lib
from raytune_ctr import storage as storage_lib
from raytune_ctr.spec import Spec, SpecError
from raytune_ctr.train import FACTS, HISTORY_FILE, METRICS, train_func

# Train V2 polls its workers every 2 s by default, which adds seconds to every
# trial's start and end; on one node the preemption watcher is an idle process.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
CLUSTER_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# A trial's driver does no training; it reserves a token of memory, not a CPU,
# so a 2-core machine can run a trial with two whole-CPU workers (Tune rejects
# an empty reservation).
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}
# Local Ray starts its worker processes with these already imported, so a trial's
# Train controller and workers take a warm process instead of paying torch's import.
PRELOAD = ("torch",)


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


def _report_to_tune():
    """Tune's callback for Train, adding `retries`, the worker-group failures this
    Train run has recovered from so far, and `retry_error`, the last one's error.
    It lives in Train's controller, which outlives the worker groups it restarts."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportToTune(TuneReportCallback):
        def __init__(self):
            super().__init__()
            self.failures, self.error, self.failing = 0, "", False

        def after_exception(self, run_context, worker_exceptions):
            # Called on every poll that sees the errors: count a failure once, until
            # the restarted group reports again.
            if not self.failing:
                self.failures += 1
                self.error = _error_line(next(iter(worker_exceptions.values())))
            self.failing = True

        def after_report(self, run_context, metrics, checkpoint):
            self.failing = False
            extra = {"retries": self.failures} | ({"retry_error": self.error} if self.error else {})
            super().after_report(run_context, [m | extra for m in metrics], checkpoint)

    return ReportToTune()


def run_trial(config: dict, spec: Spec, storage: str) -> None:
    """One Tune trial: build a TorchTrainer for this configuration and fit it.

    The Train run is named after the trial, so a trial restarted by a resumed
    sweep finds its own checkpoints and continues from the last epoch.
    """
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train, res = spec.resolve(config)
    per_worker = {"CPU": res.cpus_per_worker} | ({"GPU": res.gpus_per_worker} if res.use_gpu else {})
    if res.max_memory_gb:
        per_worker["memory"] = res.max_memory_gb * 2**30  # Ray counts memory in bytes
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"data": dataclasses.asdict(spec.data),
                           "train": dataclasses.asdict(train),
                           "resources": dataclasses.asdict(res),
                           "objectives": list(spec.search.objectives)},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=ray.tune.get_context().get_trial_id(),
                             storage_path=posixpath.join(storage, "train"),
                             callbacks=[_report_to_tune()],
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=spec.search.max_failures)),
    )
    trainer.fit()


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


def _search(spec: Spec, run_dir: Path, concurrency: int):
    """(param_space, search_alg, num_samples) for the spec's method.

    The concurrency limit goes to the searcher itself: Tune ignores
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


def _local_system_config() -> dict:
    if "RAY_preload_python_modules" in os.environ or not PRELOAD:  # the user's choice wins
        return {}
    return {"preload_python_modules": list(PRELOAD)}


def init_ray(address: str | None, verbose: bool = False) -> None:
    import ray

    if address is not None:
        _probe(address)
    defaults = LOCAL_TRAIN_ENV if address is None else CLUSTER_TRAIN_ENV
    env = {k: os.environ.get(k, v) for k, v in defaults.items()}  # the user's setting wins
    try:
        # The dashboard stays on: Train's PlacementGroupCleaner asks its state API
        # whether a controller is gone, and without it a trial stopped by ASHA
        # leaks its workers' placement group, so later trials wait forever.
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose,
                 _system_config=_local_system_config() if address is None else None)
    except (ConnectionError, RuntimeError, ValueError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError("--address", f"cannot reach a Ray cluster there ({msg})", address) from None


def plan(spec: Spec) -> int:
    """Check the spec against the running cluster; return how many trials may run at once."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return spec_lib.plan_concurrency(spec, ray.cluster_resources(), nodes)


def _trainable(spec: Spec, storage: str):
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, spec=spec, storage=storage),
                               TRIAL_DRIVER_RESOURCES)


def run_sweep(spec: Spec, run_dir: Path, *, concurrency: int,
              storage: str | None = None) -> pd.DataFrame:
    """Run every trial of `spec` on the connected Ray cluster; write trials.parquet/csv.

    Tune and Train write to `storage` (a URI such as gs://bucket/prefix/<name>,
    which every node can reach) or else to run_dir; the tables go to run_dir.
    """
    from ray import tune

    run_dir = Path(run_dir).resolve()
    storage = storage or str(run_dir)
    param_space, search_alg, num_samples = _search(spec, run_dir, concurrency)
    tuner = tune.Tuner(
        _trainable(spec, storage),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples, search_alg=search_alg, scheduler=_scheduler(spec),
            max_concurrent_trials=None if spec.search.method != "optuna" else concurrency),
        run_config=tune.RunConfig(name=run_dir.name, storage_path=posixpath.dirname(storage),
                                  verbose=1),
    )
    return _tables(tuner.fit(), spec, run_dir, storage)


def can_resume(storage: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(storage)


def resume_sweep(spec: Spec, run_dir: Path, *, storage: str | None = None) -> pd.DataFrame:
    """Continue an interrupted sweep where Tune's last experiment checkpoint left it.

    Tune restores its trials, the scheduler and the searcher's own state
    (Optuna's study and sampler, not a fresh random one). Finished trials are
    kept; unfinished ones restart, and their Train runs go on from their last
    epoch checkpoint; errored ones stay FAILED, as they would have.
    """
    from ray import tune

    run_dir = Path(run_dir).resolve()
    storage = storage or str(run_dir)
    try:
        tuner = tune.Tuner.restore(storage, trainable=_trainable(spec, storage),
                                   resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    except Exception as err:  # noqa: BLE001 - any reason Tune gives is the user's answer
        raise SpecError("--resume", f"Tune cannot restore {storage} ({_error_line(err)})",
                        run_dir.name) from None
    df = _tables(tuner.fit(), spec, run_dir, storage)
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


def _tables(grid, spec: Spec, run_dir: Path, storage: str) -> pd.DataFrame:
    df = collect(grid, spec, storage)
    df.to_parquet(run_dir / "trials.parquet", index=False)
    df.to_csv(run_dir / "trials.csv", index=False)
    if spec.search.method != "optuna":
        record_optuna_study(df, spec, run_dir)
    return df


def _error_line(err: BaseException) -> str:
    """The most specific line of a (possibly wrapped, multi-line) trial error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return ln
    return lines[-1] if lines else type(err).__name__


def checkpointed_epochs(storage: str, trial_id: str) -> list[dict]:
    """The epochs a trial's Train run saved with its latest checkpoint, in order."""
    import json

    run = posixpath.join(storage, "train", trial_id)
    saved = [d for d in storage_lib.subfolders(run) if d.startswith("epoch_")]
    for name in reversed(saved):  # the newest that reads whole (a kill can cut one short)
        try:
            return json.loads(storage_lib.read_text(posixpath.join(run, name, HISTORY_FILE)))
        except (OSError, ValueError):
            continue
    return []


def collect(grid, spec: Spec, storage: str | None = None) -> pd.DataFrame:
    """One row per trial per epoch: status, error, resolved config, metrics, fingerprint.

    A trial that crashed keeps its epochs so far and is FAILED; one that never
    reported gets a single row with no metrics. Never a made-up score. Epochs
    come from Tune's record and, where a killed driver lost some of it, from
    the trial's last checkpoint in `storage`.
    """
    rows = []
    runs = storage_lib.subfolders(posixpath.join(storage, "train")) if storage else []
    for i, r in enumerate(grid):
        config = dict(r.config or {})
        train, res = spec.resolve(config)
        # A trial that never reported to Tune still has its id in its folder's name.
        trial_dir = Path(r.path).name + "_"
        tid = (r.metrics or {}).get("trial_id") or next(
            (t for t in runs if f"_{t}_" in trial_dir), Path(r.path).name)
        base = {"trial_id": tid, "trial_index": i}
        base |= dataclasses.asdict(train) | {k: v for k, v in dataclasses.asdict(res).items()
                                             if k not in spec_lib.PRICE_FIELDS}  # in spec.yaml
        base["hidden"] = "-".join(map(str, train.hidden))
        base["threads_per_worker"] = res.threads
        mdf = r.metrics_dataframe
        reported = [] if mdf is None or "epoch" not in mdf else mdf.to_dict("records")
        saved = checkpointed_epochs(storage, base["trial_id"]) if storage else []
        # Later wins: Tune's rows (they carry `retries`) over saved ones, and the last
        # report of an epoch a restarted run repeated.
        by_epoch = {e["epoch"]: e for e in saved + reported if pd.notna(e.get("epoch"))}
        epochs = [by_epoch[k] for k in sorted(by_epoch)]
        last = max((e["epoch"] for e in epochs), default=0)
        if r.error is not None:
            status, error = "FAILED", _error_line(r.error)
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
    for _, trial in df.groupby("trial_index", sort=True):
        last = trial.sort_values("epoch").iloc[-1]
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
