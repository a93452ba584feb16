"""Run or resume one study end to end: check the data, start or join Ray, plan what
fits, make the results folder, run the trials (tuner.py), then write the tables and
the report. The CLI and the benchmarks both come here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from raytune_ctr import data, plan, results, tuner, writeup
from raytune_ctr.errors import SpecError, StorageError, one_line
from raytune_ctr.results import Results
from raytune_ctr.spec import Spec, candidates

log = logging.getLogger("raytune_ctr")

# cuBLAS reads its workspace setting once per process, and a reused trial process
# may have started cuBLAS for an earlier trial: set the deterministic one for all.
TRIAL_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
# Train V2 polls its workers every 2 s by default; a pool's controller polls them so
# a dead worker is seen at once. On one node the preemption watcher is an idle process.
LOCAL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
             "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"} | TRIAL_ENV
CLUSTER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"} | TRIAL_ENV


@dataclass(frozen=True)
class Outcome:
    spec: Spec  # as it ran
    trials: pd.DataFrame  # one row per trial per epoch (results.collect)
    report: Path  # report.md
    interrupted: int | None = None  # the signal that stopped the sweep early, if one did


def run(spec: Spec, where: Results, *, address: str | None = None,
        verbose: bool = False, started: float | None = None) -> Outcome:
    """Run every trial of `spec` into the new results folder `where`. Raises SpecError
    or DataError, with nothing written, when the study cannot run here.

    A first SIGINT or SIGTERM stops it gracefully (`tuner.Stop`): finished trials are
    written, the rest INTERRUPTED, and `resume` goes on; a second raises tuner.Aborted.
    `started`: when the command began (the report's timeline starts there); else now.
    """
    started = time.time() if started is None else started
    from raytune_ctr import usercode

    if spec.code is not None:  # saved absolute: --resume works from any folder
        spec = dataclasses.replace(spec, code=str(usercode.folder(spec.code)))
    if spec.script is not None and spec.script.folder is not None:
        spec = dataclasses.replace(spec, script=dataclasses.replace(
            spec.script, folder=str(Path(spec.script.folder).resolve())))
    from raytune_ctr import trace

    source = prepare_data(spec)
    trace.mark("data_ready")
    own = connect(address, verbose, code=spec.code)
    trace.mark("ray_up")
    concurrency = plan.plan(spec)
    log.info("data: %s; running up to %d trials at once", source, concurrency)
    where.create(spec)
    with tuner.Stop() as stop, _storage_errors(where):
        return tuner.run(spec, where, concurrency=concurrency, own_cluster=own, stop=stop,
                         verbose=verbose,
                         then=lambda grid: _finish(grid, spec, where, stop.signum, started))


def resume(where: Results, *, address: str | None = None, verbose: bool = False,
           started: float | None = None) -> Outcome:
    """Go on with an interrupted sweep (`Results.interrupted`) with its saved spec."""
    started = time.time() if started is None else started
    from raytune_ctr import usercode

    spec = results.load_spec(where.local)
    usercode.importable(spec.code)  # its driver builds the user's models again
    if spec.search.method == "optuna" and not where.optuna_file.is_file():
        # The searcher's trials live there; without them TPE would start over.
        raise SpecError("--resume", f"the Optuna study {where.optuna_file} is "
                        "missing; resume on the machine and folder the sweep started in",
                        where.name)
    where.mend_optuna_journal()
    source = prepare_data(spec)
    own = connect(address, verbose, code=spec.code)
    plan.plan(spec)
    log.info("data: %s; resuming %s", source, where.where)
    with tuner.Stop() as stop, _storage_errors(where):
        grid = tuner.restore(spec, where, own_cluster=own, stop=stop)
        outcome = _finish(grid, spec, where, stop.signum, started)
    if spec.search.method == "optuna" and not outcome.interrupted:
        results.close_orphans(where)
    return outcome


@contextlib.contextmanager
def _storage_errors(where: Results):
    """An OSError out of Tune is its own write to the results folder failing."""
    try:
        yield
    except Exception as err:
        if (cause := tuner.write_error(where)) is not None:  # under Tune's TuneError
            raise cause from None
        from ray.exceptions import RayError

        # Ray's own errors (a get timeout is an OSError) are not the results' disk.
        if isinstance(err, OSError) and not isinstance(err, RayError):
            raise where.cannot_write(err, "to it") from None
        raise


def _finish(grid, spec: Spec, where: Results, interrupted: int | None,
            started: float) -> Outcome:
    import ray

    from raytune_ctr import trace

    ended = time.time()  # the trials' end, before collect reads their checkpoints
    df = results.collect(grid, spec, tuner.ended_trials(where) if interrupted else None,
                         tuner.tabled(where))
    try:
        where.record_command(started, ended, ray.cluster_resources().get("CPU")
                             if ray.is_initialized() else None)
        where.write_tables(df, spec, interrupted=interrupted)
    except OSError as err:
        raise where.cannot_write(err) from None
    trace.mark("tables_written")
    try:
        path = writeup.build(where.local)
        trace.mark("report_written")
    except OSError as err:
        raise StorageError(f"{where.local}: cannot write the report ({err.strerror or err}); "
                           "the tables are written: rebuild it with raytune-ctr report "
                           f"{where.local}") from None
    finally:  # the tables are worth keeping even if the report fails
        where.upload()
        if where.remote:
            log.info("results copied to %s", where.remote)
    return Outcome(spec, df, path, interrupted)


def prepare_data(spec: Spec) -> str:
    """Fetch/verify the dataset on this node before any trial starts; return its source.

    A text dataset is tokenized here for every model and length the trials can ask
    for (cached for the workers), and each model's weights are fetched once.
    """
    from raytune_ctr import models, train, usercode

    if spec.runner != "loop":
        return f"the user's own {spec.runner} (not loaded here)"
    cand = candidates(spec)
    if not data.entry(spec.data.dataset).text:
        ds = data.load(spec.data)
        # The user's model factories, built once here: one that raises is bad input,
        # found before Ray starts, not a FAILED trial for every configuration.
        for name in filter(usercode.is_path, cand["model"]):
            t = dataclasses.replace(spec.train, model=name)
            models.build(name, ds.input_shape, ds.num_classes,
                         config=train.trial_config(t, spec.resources))
        return ds.source
    for name in cand["model"]:
        source = models.hf_source(name)
        assert source is not None  # the spec gives a text dataset text models only
        for length in cand["max_seq_length"]:
            ds = data.load(spec.data, data.Tokenize(source, length))
        models.build(name, ds.input_shape, ds.num_classes)
    return ds.source


def connect(address: str | None, verbose: bool = False, code: str | None = None) -> bool:
    """Start a Ray here or join one, where ray.init would (`ray_address`); True when
    this process started it. Joining a Ray already connected in this process is a
    no-op. `code`, the spec's folder of the user's own code, reaches every worker: on
    a Ray started here through PYTHONPATH, on a joined one through the job's
    runtime_env (uploaded once)."""
    import ray

    from raytune_ctr import usercode

    if ray.is_initialized():
        return False
    joined, key, named = ray_address(address)
    if joined is not None:
        _probe(joined, key, named)
    runtime_env = None
    if joined is None:
        # A local Ray's processes inherit this environment. A job runtime_env would
        # keep trials off the worker processes ray.init prestarts (theirs differs).
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)  # the user's setting wins
        usercode.local_env(code)
    else:
        # Under `ray job submit` the job's env_vars are in this environment already, and
        # Ray refuses to merge a key set twice: those are left to the job.
        job = _job_runtime_env()
        runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in CLUSTER_ENV.items()
                                    if k not in (job.get("env_vars") or {})}}
        runtime_env |= usercode.runtime_env(code)
    try:
        # The dashboard stays on: Train's PlacementGroupCleaner asks its state API
        # whether a pool's controller is gone, and without it a pool whose driver
        # died leaks its workers' placement group. The address goes as given, not
        # resolved: Ray turns on token auth for a cluster it finds ("auto") only.
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=verbose)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if "Failed to merge the Job's runtime env" in str(err):
            # `ray job submit --working-dir` beside the code: folder, which ships as one.
            raise SpecError("code" if code else key, "this Ray job has a working_dir of its "
                            "own (ray job submit --working-dir) and Ray takes one per job, "
                            "while the sweep ships the code: folder as it; submit without "
                            "--working-dir, or set RAY_OVERRIDE_JOB_RUNTIME_ENV=1 for code: "
                            "to win", code if code else named) from None
        raise SpecError(key, f"cannot reach a Ray cluster there ({one_line(err)})",
                        named) from None
    return joined is None


def _job_runtime_env() -> dict:
    """The runtime_env `ray job submit` gave this driver's job (Ray hands it over in
    the environment, and ray.init merges it with the driver's); {} outside a job."""
    from ray.job_config import JobConfig

    found = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # ray_constants' name for it
    try:
        return dict(JobConfig.from_json(json.loads(found)).runtime_env or {}) if found else {}
    except (ValueError, TypeError, AttributeError):  # not ours to judge: ray.init will
        return {}


def ray_address(address: str | None) -> tuple[str | None, str, str | None]:
    """The cluster ray.init(address) joins, by Ray's own rule; None when it starts a
    Ray here (no address, or "local"). With the setting that names it and its value
    as the user gave it: `--address`; else RAY_ADDRESS (a `ray job submit` driver
    has it set); else the cluster `ray start` last started on this machine."""
    from ray._private import services  # ray.init's own resolution, not a copy of it

    env = os.environ.get("RAY_ADDRESS")
    key = "RAY_ADDRESS" if env and address in (None, "auto") else "--address"
    given = env if key == "RAY_ADDRESS" else address
    if given is not None and "://" in given:
        # ray.init takes any scheme for Ray client. With it, Tune's loop and its
        # callbacks run on the head, where this folder and these signal handlers are not.
        raise SpecError(key, "a Ray client address (ray://) is not supported, nor the "
                        "Jobs API's (http://); run the sweep on the cluster (ray submit, "
                        "ray job submit) with --address auto, or give the head's host:port",
                        given)
    getattr(services.find_gcs_addresses, "cache_clear", lambda: None)()  # as ray.init does
    try:
        joined = services.canonicalize_bootstrap_address(address)  # type: ignore[arg-type]
    except (ConnectionError, ValueError) as err:  # "auto" with no cluster; a bad address
        raise SpecError(key, f"cannot reach a Ray cluster there ({one_line(err)})",
                        given) from None
    if joined is not None and given in (None, "auto"):
        from ray._common.utils import get_ray_address_file

        # No setting named it: the file `ray start` leaves for ray.init to find.
        log.info("joining the Ray cluster `ray start` left at %s (--address local starts "
                 "one here instead)", joined)
        return joined, f"{get_ray_address_file(None)} (left by `ray start`)", joined
    return joined, key, given


def _probe(address: str, key: str, named: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a host:port nothing listens on: ray.init would wait minutes for its
    GCS. `named`: the address as the user gave it (Ray's is the node's own IP)."""
    from ray._private.services import parse_address

    host, port = parse_address(address) or (address, "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(key, "expected host:port (the head's GCS port, 6379 by default)",
                        named)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        hint = ("; `ray stop` forgets it, or --address local starts a Ray here"
                if "ray start" in key else "")
        raise SpecError(key, f"cannot reach a Ray cluster there ({err.strerror or err}){hint}",
                        named) from None
