"""One sweep's results folder: its layout, where it lives, and the tables made in it.

    spec.yaml                the study, as it ran
    commands.json            each command that ran its trials (a sweep, each resume):
                             when it started, when its trials ended, the cluster's CPUs
    trials.parquet, .csv     one row per trial per epoch (`collect`); mid-sweep only
                             the parquet is kept current, the CSV comes at the end
    optuna.journal           the Optuna study, for grid and random sweeps too: Optuna's
                             journal file (`optuna-dashboard <folder>/optuna.journal`);
                             a folder from before 2026-12-07 keeps its optuna.db (SQLite)
    report.md, *.png         the report (report.py)
    trial_<id>/checkpoint_NNNNNN/{state.pt, history.json}
                             each trial's newest epoch checkpoint (train.state_files)
    pools/                   the multi-worker trials' Ray Train runs (pool.py)
    experiment_state-*.json, tuner.pkl, ...   Tune's own state, for --resume

With a URI storage path (gs://bucket/prefix) Tune and the trials write there and the
tables are copied up; a local copy lives in results/<name>. Trial processes import
this module for the checkpoint layout, so pandas and optuna load only for tables.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import posixpath
import signal
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyarrow import fs

from raytune_ctr import packing, storage
from raytune_ctr.errors import SpecError, StorageError, one_line
from raytune_ctr.metrics import FACTS, METRICS

if TYPE_CHECKING:
    import pandas as pd

    from raytune_ctr.spec import Spec

log = logging.getLogger(__name__)

SPEC, TRIALS, TRIALS_CSV, OPTUNA_JOURNAL, REPORT = (
    "spec.yaml", "trials.parquet", "trials.csv", "optuna.journal", "report.md")
OPTUNA_DB = "optuna.db"  # the study of a folder made before the journal; kept there
COMMANDS = "commands.json"  # each command that ran trials: its start, its trials' end, CPUs
# In the folder from a sweep's start until its final tables: while it is there,
# --resume may go on (the driver was killed, or a signal stopped it).
UNFINISHED = "unfinished.json"
TRIAL_PREFIX = "trial_"  # a trial's folder is trial_<trial id>
STATE_FILE, HISTORY_FILE = "state.pt", "history.json"
LOCAL_RESULTS = "results"  # where a URI storage path's local copy goes, from the cwd


@dataclass(frozen=True)
class Results:
    """A results folder: `name` under `storage` (a local path, or a URI such as
    gs://bucket/prefix)."""

    storage: str
    name: str

    @property
    def remote(self) -> str | None:
        """The folder at the URI, when storage is one."""
        return storage.join(self.storage, self.name) if storage.is_uri(self.storage) else None

    @property
    def local(self) -> Path:
        """The folder on this machine: the tables, the report, the Optuna study."""
        parent = LOCAL_RESULTS if self.remote else self.storage
        return Path(parent).expanduser().resolve() / self.name

    @property
    def tune_storage(self) -> str:
        """Where Tune keeps its experiments (its storage_path): this folder's parent."""
        return self.storage if self.remote else str(self.local.parent)

    @property
    def tune_filesystem(self):
        """The filesystem Tune writes through: at a URI, the one it names; in a local
        or mounted folder, one whose files appear whole (storage.whole_files)."""
        return None if self.remote else storage.whole_files()

    @property
    def where(self) -> str:
        """This folder as Tune and the trials write it."""
        return self.remote or str(self.local)

    @property
    def optuna_file(self) -> Path:
        """The Optuna study's file: the journal, or an older folder's SQLite (this
        package writes no optuna.db any more)."""
        old = self.local / OPTUNA_DB
        return old if old.is_file() else self.local / OPTUNA_JOURNAL

    def mend_optuna_journal(self) -> None:
        """Before a resume writes to the journal: drop a last line cut short (the disk
        filled mid-write), which Optuna would glue the next line to and then fail
        every read on, and a write lock left by a killed driver (each write would
        wait 30 s for it)."""
        for lock in self.local.glob(OPTUNA_JOURNAL + ".lock*"):
            lock.unlink(missing_ok=True)
        path = self.local / OPTUNA_JOURNAL
        if not path.is_file():
            return
        raw = path.read_bytes()
        whole = raw.rfind(b"\n") + 1
        if whole < len(raw):
            log.warning("%s: its last line was cut short (%d bytes); dropped", path,
                        len(raw) - whole)
            os.truncate(path, whole)

    def optuna_storage(self):
        """The Optuna study's storage. A journal file: a write is one appended line
        (0.4 ms here), where SQLite's ORM took 7 ms a trial and imports SQLAlchemy."""
        import optuna

        path = self.optuna_file
        if path.name == OPTUNA_DB:
            return optuna.storages.RDBStorage(f"sqlite:///{path}")
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path)))

    @classmethod
    def new(cls, storage_path: str, name: str) -> Results:
        """A new results folder; SpecError when it exists (nothing is overwritten)."""
        results = cls._named(storage_path, name, "--name")
        try:
            taken = results.local if results.local.exists() else \
                results.remote if results.remote and storage.exists(results.remote) else None
        except (OSError, ValueError) as err:  # unknown scheme, no credentials, no network
            raise SpecError("--storage-path", f"cannot use it ({one_line(err)})",
                            storage_path) from None
        if taken:
            raise SpecError("--name", f"results folder {taken} already exists; "
                            "choose another --name (nothing was overwritten)", name)
        results._can_write(storage_path)
        return results

    def _can_write(self, storage_path: str) -> None:
        """Found before any training: a storage path that cannot be written (read-only,
        a file in the way, a full disk, no permission)."""
        import tempfile

        try:
            if self.remote:
                storage.can_write(self.storage)
            # The nearest folder that exists: nothing is made here if the sweep cannot run.
            folder = self.local.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not folder.is_dir():
                raise NotADirectoryError(20, "a file is in the way", str(folder))
            with tempfile.TemporaryFile(dir=folder) as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or one_line(err)
            raise SpecError("--storage-path", f"cannot write there ({reason})",
                            storage_path) from None

    @classmethod
    def interrupted(cls, storage_path: str, name: str) -> Results:
        """The results folder of a sweep that did not finish, with its spec here."""
        results = cls._named(storage_path, name, "--resume")
        try:
            if results.remote and storage.exists(results.remote):
                storage.download(results.remote, results.local)  # spec, the Optuna study
            resumable = can_resume(results.where)
            broken = cut_short(results.where) if resumable else None
        except (OSError, ValueError) as err:
            raise SpecError("--storage-path", f"cannot use it ({one_line(err)})",
                            storage_path) from None
        if not (results.local / SPEC).is_file() or not resumable:
            raise SpecError("--resume", f"no interrupted sweep at {results.where} "
                            "(nothing was changed)", name)
        if results.finished():
            raise SpecError("--resume", f"that sweep finished; its results are in "
                            f"{results.local}", name)
        if broken:
            # Tune would log it and start the whole sweep again in this folder.
            raise SpecError("--resume", f"Tune's record {broken} in {results.where} is cut "
                            "short (the sweep was stopped while Tune wrote it), so it cannot "
                            "go on; nothing was changed, and a new --name starts afresh", name)
        return results

    def finished(self) -> bool:
        """Its final tables are written: nothing is left to resume."""
        return (self.local / TRIALS).is_file() and not (self.local / UNFINISHED).is_file()

    @classmethod
    def _named(cls, storage_path: str, name: str, flag: str) -> Results:
        from raytune_ctr.spec import folder_name

        try:
            folder_name(name)
        except ValueError as err:
            raise SpecError(flag, str(err), name) from None
        if not storage.is_uri(storage_path):  # Tune pickles it: the same from any cwd
            storage_path = str(Path(storage_path).expanduser().resolve())
        return cls(storage_path, name)

    def create(self, spec: Spec) -> None:
        """Make the folder with the spec in it (and at the URI, so --resume finds it)."""
        from raytune_ctr import spec as spec_lib

        self.local.mkdir(parents=True)
        spec_lib.dump(spec, self.local / SPEC)
        self._mark("running")
        self.upload()

    def record_command(self, started: float, ended: float, cpus: float | None) -> None:
        """Add this command to commands.json: it started at `started` and its trials
        ended at `ended` (Unix seconds), on a cluster of `cpus` CPUs."""
        runs = commands(self.local) + [{"started": started, "ended": ended, "cpus": cpus}]
        part = self.local / f".{COMMANDS}.part"
        part.write_text(json.dumps(runs) + "\n")
        os.replace(part, self.local / COMMANDS)

    def _mark(self, state: str, signum: int | None = None) -> None:
        info = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if signum:
            info["signal"] = signal.Signals(signum).name
        (self.local / UNFINISHED).write_text(json.dumps(info) + "\n")

    def cannot_write(self, err: OSError, what: str = "the trials table") -> StorageError:
        """A write that failed mid-sweep, as one line: what is kept and how to go on."""
        return StorageError(f"{self.local}: cannot write {what} "
                            f"({err.strerror or one_line(err)}); the sweep stops. The trials "
                            "finished before are in its trials.parquet, and --resume goes on")

    def remove_if_unstarted(self) -> bool:
        """Remove a folder of a sweep stopped before Tune saved anything, if it holds
        only what this package made before the trials (so a rerun may take its name);
        True when it is gone."""
        import shutil

        ours = {SPEC, UNFINISHED, OPTUNA_JOURNAL, OPTUNA_DB, ".validate_storage_marker", "pools"}
        if self.remote or not self.local.is_dir() or \
                any(p.name not in ours for p in self.local.iterdir()):
            return False
        shutil.rmtree(self.local)
        return True

    def upload(self) -> None:
        if self.remote:
            storage.upload(self.local, self.remote)

    def write_tables(self, df: pd.DataFrame, spec: Spec, *, final: bool = True,
                     interrupted: int | None = None) -> None:
        """The trials tables, each replaced whole or not at all (written beside, then
        renamed), so a failed write leaves the last good one. `final=False`: the
        trials finished so far, mid-sweep; `interrupted`: the signal that stopped it."""
        if interrupted:
            self._mark("interrupted", interrupted)
        # Mid-sweep the parquet only: its write costs about the same at 2,000 rows as
        # at 400; the CSV's grows with them (80 ms at 2,000).
        writes = [(TRIALS, lambda p: df.to_parquet(p, index=False))]
        if final or interrupted:
            writes.append((TRIALS_CSV, lambda p: df.to_csv(p, index=False)))
        for name, write in writes:
            part = self.local / f".{name}.part"
            try:
                write(part)
                os.replace(part, self.local / name)
            finally:
                part.unlink(missing_ok=True)
        if not final or interrupted:
            return  # the Optuna record of a grid or random sweep is made once, at its end
        if spec.search.method != "optuna":
            record_optuna_study(df, spec, self)
        (self.local / UNFINISHED).unlink(missing_ok=True)
        if self.remote:  # upload copies files and deletes none: the mark goes there too
            storage.delete(storage.join(self.remote, UNFINISHED))


def commands(folder: Path) -> list[dict]:
    """The commands that ran the sweep's trials (commands.json); none before it existed."""
    try:
        runs = json.loads((Path(folder) / COMMANDS).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in runs if isinstance(r, dict) and r.get("started") and r.get("ended")]


def load(folder: Path) -> tuple[Spec, pd.DataFrame]:
    """The spec and the trials table of a results folder (for the report)."""
    import pandas as pd

    from raytune_ctr import spec as spec_lib

    folder = Path(folder)
    for f in (SPEC, TRIALS):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder}: no {f}; is this a raytune_ctr results folder?")
    return (spec_lib.load(folder / SPEC, key=str(folder / SPEC), saved=True),
            complete(pd.read_parquet(folder / TRIALS)))


def load_spec(folder: Path) -> Spec:
    """The spec a sweep ran with, to run on. Its user code is resolved when it runs
    (`sweep.prepare_data`), with the same one-line errors."""
    from raytune_ctr import spec as spec_lib

    return spec_lib.load(Path(folder) / SPEC, key=str(Path(folder) / SPEC), saved=True)


def can_resume(where: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(where)


def cut_short(where: str) -> str | None:
    """The name of the newest of a kind of Tune's record at `where` that is not whole
    (storage.readable), if one is not. Tune reads only that one. A sweep written before
    storage.whole_files left one empty or cut short when its driver was killed mid-copy."""
    import fnmatch

    filesystem, path = fs.FileSystem.from_uri(where)
    names = [i.base_name for i in filesystem.get_file_info(fs.FileSelector(path))
             if i.type == fs.FileType.File]
    for pattern in storage.TUNE_RECORD:
        newest = max(fnmatch.filter(names, pattern), default=None)
        if newest is None:
            continue
        with filesystem.open_input_stream(posixpath.join(path, newest)) as f:
            if not storage.readable(f.readall()):
                return newest
    return None


# --- checkpoints --------------------------------------------------------------------


def last_state(checkpoint, trial_folder: str | None = None) -> bytes | None:
    """The state file of the newest whole checkpoint in the trial's folder: whether
    Tune's record names that one, an older one (emptied, checkpoints.py; or replaced,
    `stand_in_for_replaced`), or none (saved before the trial's first checkpoint:
    then `trial_folder`, the trial's folder as Tune writes it, says where to look)."""
    where = checkpoints_folder(checkpoint, trial_folder)
    found = newest_checkpoint(*where) if where else None
    return found[STATE_FILE] if found else None


def checkpoints_folder(checkpoint, trial_folder: str | None = None
                       ) -> tuple[fs.FileSystem, str] | None:
    """(filesystem, path) of the folder holding a trial's checkpoints: the one Tune's
    checkpoint is in, else `trial_folder`; None when neither is known."""
    if checkpoint is not None:
        return checkpoint.filesystem, posixpath.dirname(checkpoint.path)
    if trial_folder is not None:
        return fs.FileSystem.from_uri(trial_folder)
    return None


def newest_checkpoint(filesystem: fs.FileSystem, trial_path: str) -> dict[str, bytes] | None:
    """{file: bytes} of the checkpoint in a trial folder that reads whole (a kill can
    cut the last one short) and holds the most epochs; None if there is none. By
    epochs, not by name: a resumed trial numbers its checkpoints from Tune's record."""
    try:
        infos = filesystem.get_file_info(fs.FileSelector(trial_path, allow_not_found=True))
    except (OSError, ValueError):
        return None
    best, best_epoch = None, -1
    for info in infos:
        if info.type != fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            files = {}
            for f in (STATE_FILE, HISTORY_FILE):
                with filesystem.open_input_stream(posixpath.join(info.path, f)) as s:
                    files[f] = s.read()
            history = json.loads(files[HISTORY_FILE])
            if zipfile.ZipFile(io.BytesIO(files[STATE_FILE])).testzip() is not None:
                continue
        except (OSError, ValueError, zipfile.BadZipFile):
            continue
        epoch = history[-1]["epoch"] if history else 0
        if epoch > best_epoch:
            best, best_epoch = files, epoch
    return best


CHECKPOINT_DIR = "checkpoint_{:06d}"  # Tune's name for a trial's checkpoint number N


def stand_in_for_replaced(folder: str) -> list[str]:
    """Give every trial of a killed sweep's `folder` an empty folder for each checkpoint
    number missing below its newest, and return their paths.

    With num_to_keep=1 (as sweeps ran before checkpoints.py) Tune deletes a trial's
    old checkpoint as it takes the new one, and saves the experiment record that names
    the new one a moment later (and syncs it later still). A driver killed in between
    leaves a record naming a checkpoint that is gone, and Tune's restore fails that
    trial ("does not exist on storage anymore"). With a stand-in there, the trial goes
    on from the newest whole checkpoint in its folder (`last_state`), as after any
    restart."""
    filesystem, path = fs.FileSystem.from_uri(folder)
    made = []
    for trial in filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True)):
        if trial.type != fs.FileType.Directory or not trial.base_name.startswith(TRIAL_PREFIX):
            continue
        numbers = set()
        for info in filesystem.get_file_info(fs.FileSelector(trial.path)):
            head, _, n = info.base_name.partition("_")
            if info.type == fs.FileType.Directory and head == "checkpoint" and n.isdigit():
                numbers.add(int(n))
        for n in sorted(set(range(max(numbers, default=0))) - numbers):
            made.append(posixpath.join(trial.path, CHECKPOINT_DIR.format(n)))
            filesystem.create_dir(made[-1])
    return [_as_given(folder, path, m) for m in made]


def remove_stand_ins(paths: list[str]) -> None:
    """Remove the stand-ins the resumed sweep left empty (one Tune wrote a checkpoint
    into stays)."""
    for p in paths:
        filesystem, path = fs.FileSystem.from_uri(p)
        try:
            if not filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True)):
                filesystem.delete_dir(path)
        except OSError:
            pass  # an empty folder left behind is harmless


def _as_given(folder: str, path: str, sub: str) -> str:
    """`sub` (a path under `path`, the filesystem's form of `folder`) in `folder`'s form."""
    return folder.rstrip("/") + sub[len(path.rstrip("/")):]


def checkpointed_epochs(result) -> list[dict]:
    """The epochs a trial saved with its newest whole checkpoint, in order."""
    if result.filesystem is None or not result.path:
        return []
    found = newest_checkpoint(result.filesystem, result.path)
    return json.loads(found[HISTORY_FILE]) if found else []


# --- tables -------------------------------------------------------------------------


def made_order(trials: list) -> list[int]:
    """The positions of `trials` (Tune's list) in the order Tune made them: a trial's
    number in every table. Not their order in the list: Tune moves a trial it restarts
    to the end (TuneController._requeue_trial). Its searcher's count heads its
    experiment_tag ("3_lr=0.1"), which Tune keeps through restarts and resumes."""
    def made(i: int) -> tuple[float, int]:
        head = str(getattr(trials[i], "experiment_tag", "") or "").partition("_")[0]
        return (int(head) if head.isdecimal() and head.isascii() else float("inf"), i)

    return sorted(range(len(trials)), key=made)


def collect(grid, spec: Spec, ended: set[str] | None = None,
            tabled: pd.DataFrame | None = None) -> pd.DataFrame:
    """The trials table of Tune's ResultGrid (see `table`). `ended`: for a sweep a
    signal stopped, the trials that ended of themselves; the others are INTERRUPTED.
    `tabled`: the rows of trials the driver tabled as they ended, from every report it
    saw, kept as they are: Tune's own per-trial record can lose the epochs before a
    restart (it copies back its stored copy, synced only with its experiment record)."""
    import pandas as pd

    # ResultGrid lists its results in the order of its trials; only a Trial has a status.
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    statuses = [t.status if ended is None or t.trial_id in ended else "RUNNING"
                for t in trials] if len(trials) == len(grid) else [None] * len(grid)
    ids = [t.trial_id for t in trials] if len(trials) == len(grid) else [None] * len(grid)
    done = set() if tabled is None else set(tabled["trial_id"]) & set(ids)
    order = made_order(trials) if len(trials) == len(grid) else range(len(grid))
    rest = [(n, grid[i], statuses[i]) for n, i in enumerate(order) if ids[i] not in done]
    df = table([(i, r) for i, r, _ in rest], [s for _, _, s in rest], spec)
    if tabled is None or not done:
        return df
    kept = tabled[tabled["trial_id"].isin(done)]
    both = pd.concat([kept, df] if rest else [kept], ignore_index=True)
    return one_type_per_column(both.sort_values("trial_index", kind="stable")
                               .reset_index(drop=True))


def table(results: list, statuses: list, spec: Spec, live: bool = False) -> pd.DataFrame:
    """One row per trial per epoch: status, error, resolved config, metrics, fingerprint,
    from (trial index, Tune Result) pairs and each trial's Tune status (or None).

    A trial that crashed keeps its epochs so far and is FAILED; one Tune had not
    finished when a signal stopped the sweep is INTERRUPTED; one that never
    reported gets a single row with no metrics. Never a made-up score. Epochs
    come from Tune's record and, where a killed driver lost some of it, from
    the trial's last checkpoint. `live`: the driver saw the reports as they came
    (a trial ending mid-sweep); when they hold every epoch from the first, the
    checkpoint is not read.
    """
    import pandas as pd

    rows = []
    for (i, r), tune_status in zip(results, statuses, strict=True):
        train, res = spec.resolve(dict(r.config or {}))
        tid = (r.metrics or {}).get("trial_id") or \
            posixpath.basename(r.path or "").removeprefix(TRIAL_PREFIX)
        base = {"trial_id": tid, "trial_index": i}
        base |= dataclasses.asdict(train) | dataclasses.asdict(res)
        base["hidden"] = "-".join(map(str, train.hidden))
        base["cpus_per_worker"], base["threads_per_worker"] = res.worker_cpus, res.threads
        mdf = r.metrics_dataframe
        reported = [] if mdf is None or "epoch" not in mdf else \
            [packing.unpack(e) for e in mdf.to_dict("records")]
        # Later wins: Tune's rows (they carry `retries`) over saved ones, and the last
        # report of an epoch a restarted run repeated.
        seen = sorted({e["epoch"] for e in reported if pd.notna(e.get("epoch"))})
        whole = live and bool(seen) and seen == list(range(1, len(seen) + 1))
        by_epoch = {e["epoch"]: e for e in ([] if whole else checkpointed_epochs(r)) + reported
                    if pd.notna(e.get("epoch"))}
        epochs = [by_epoch[k] for k in sorted(by_epoch)]
        last = max((e["epoch"] for e in epochs), default=0)
        if tune_status == "ERROR" or (tune_status is None and r.error is not None):
            status = "FAILED"
            error = one_line(r.error) if r.error is not None else "failed; Tune kept no error"
        elif tune_status not in (None, "TERMINATED", "ERROR"):
            status, error = "INTERRUPTED", ""
        else:
            status, error = ("COMPLETED" if last >= train.epochs else "STOPPED"), ""
        base |= {"status": status, "error": error}
        for e in epochs or [{}]:
            rows.append(base | {k: v for k, v in e.items()
                                if k in METRICS or k in FACTS or k.startswith("env_")})
    return one_type_per_column(complete(pd.DataFrame(rows)))


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Every metric and fact a column, NaN where no trial reported it."""
    missing = [c for c in [*METRICS, *FACTS] if c not in df]
    return df.assign(**dict.fromkeys(missing, float("nan"))) if missing else df


def one_type_per_column(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a searched `"auto" | true | false` becomes text."""
    import pandas as pd

    for col in df.columns:
        if pd.api.types.is_object_dtype(df[col]) and len({type(v) for v in df[col].dropna()}) > 1:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v))
    return df


def record_optuna_study(df: pd.DataFrame, spec: Spec, results: Results) -> None:
    """Save a grid or random sweep as an Optuna study too, for optuna-dashboard."""
    import optuna

    keys = spec.searched_keys()
    objectives = spec.search.objectives
    study = optuna.create_study(storage=results.optuna_storage(), study_name=results.name,
                                directions=["maximize" if m == "max" else "minimize"
                                            for m in objectives.values()])
    dists = {k: _distribution(df[k]) for k in keys}
    for _, rows in df.groupby("trial_index", sort=True):
        last = rows.sort_values("epoch").iloc[-1]
        params = {k: _param(last[k], dists[k]) for k in keys}
        values = [float(last[m]) for m in objectives]
        ok = last["status"] != "FAILED" and all(v == v for v in values)  # not NaN
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, values=values if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            user_attrs={"status": str(last["status"]), "error": str(last["error"])}))


def _distribution(values: pd.Series):
    """A knob's distribution in the record: a numeric knob of more than 4 values is a
    range (a list of every value seen would be stored with each trial, and compared
    with each trial's: quadratic in the trials); anything else its values."""
    import optuna
    from pandas.api.types import is_bool_dtype, is_integer_dtype, is_numeric_dtype

    v = values.dropna()
    unset = len(v) < len(values)  # an optional knob searched with null among its values
    if is_numeric_dtype(v) and not is_bool_dtype(v) and v.nunique() > 4 and not unset:
        lo, hi = v.min().item(), v.max().item()
        log = lo > 0 and hi / lo > 20
        if is_integer_dtype(v):
            return optuna.distributions.IntDistribution(lo, hi, log=log)
        return optuna.distributions.FloatDistribution(lo, hi, log=log)
    return optuna.distributions.CategoricalDistribution(
        sorted(v.unique().tolist(), key=str) + ([None] if unset else []))


def _param(value, dist):
    from optuna.distributions import FloatDistribution, IntDistribution

    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value != value:  # NaN: the knob's null
        return None
    if isinstance(dist, IntDistribution):
        return int(value)
    return float(value) if isinstance(dist, FloatDistribution) else value


def close_orphans(results: Results) -> None:
    """Optuna trials asked for just before a kill, after Tune's last checkpoint, stay
    RUNNING in the study for ever: Tune asked again on resume. Mark them FAIL."""
    import optuna

    db = results.optuna_storage()
    study = optuna.load_study(study_name=results.name, storage=db)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        db.set_trial_user_attr(t._trial_id, "interrupted",
                               "asked before the sweep was killed; never run")
        db.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
