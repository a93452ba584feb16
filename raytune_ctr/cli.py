"""Command line: `raytune-ctr sweep` (also `python experiments/sweep.py`),
`raytune-ctr report DIR` and `raytune-ctr compare DIR1 DIR2`.

Exit codes: 0 done, 1 every trial failed (compare: the results differ), 2 bad
input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from raytune_ctr import spec as spec_lib
from raytune_ctr import trace, writeup
from raytune_ctr.errors import DataError, SpecError, StorageError
from raytune_ctr.results import LOCAL_RESULTS, Results

# Relative to where you run it (the repository root, or /app in the image).
DEFAULT_CONFIG = "experiments/configs/quickstart.yaml"


def sweep_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run one study: a Ray Tune sweep of Ray "
                                "Train trials, then write the trade-off report.")
    p.add_argument("--config", default=None, help=f"study YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--smoke", action="store_true", help="two configs, 1 epoch, 512 samples")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (auto, or host:port on the head); default, as "
                   "ray.init: $RAY_ADDRESS, else a cluster `ray start` left on this machine, "
                   "else start one here (local: always start one)")
    p.add_argument("--storage-path", default=os.environ.get("RAYTUNE_CTR_STORAGE", LOCAL_RESULTS),
                   help="parent of results folders: a path or a URI such as gs://bucket/prefix, "
                   f"then with a local copy in {LOCAL_RESULTS}/ (default: $RAYTUNE_CTR_STORAGE "
                   "or %(default)s)")
    p.add_argument("--name", default=None, help="results folder name (default: <spec name>-<time>)")
    p.add_argument("--resume", metavar="NAME", default=None,
                   help="continue the interrupted sweep NAME under --storage-path, with its "
                   "saved spec: finished trials are kept, unfinished ones go on from their "
                   "last epoch")
    p.add_argument("--target-acc", type=float, default=None,
                   help="accuracy (%%) the report's answer asks for; overrides report.target_acc")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s of one worker's device, for MFU; overrides "
                   "resources.peak_tflops and the known-GPU table")
    p.add_argument("--dry-run", action="store_true",
                   help="check the spec, print the commands (or configurations) the sweep "
                   "would run and what the metric regexes read from script.sample; run nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray worker logs")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _where(folder: Path) -> str:
    """Where a sweep's results are, and the commands that open them."""
    from raytune_ctr.results import OPTUNA_DB, Results

    study = Results(str(folder.parent), folder.name).optuna_file
    lines = [("results", f"{folder}  (trials.parquet, trials.csv, knobs.csv, plots)"),
             ("report", f"{folder / 'report.md'}"),
             ("page", f"{folder / 'report.html'}  (open it in a browser; works offline)"),
             ("TensorBoard", f"tensorboard --logdir {folder}"),
             ("Optuna", "optuna-dashboard " + (f"sqlite:///{study}" if study.name == OPTUNA_DB
                                                else str(study)))]
    return "\n".join(f"{k + ':':13}{v}" for k, v in lines)


def _resumable(where: Results) -> bool:
    from raytune_ctr.results import can_resume

    try:
        return can_resume(where.where)
    except Exception:  # noqa: BLE001 - an unreadable folder is not resumable
        return False


def _resume_cmd(where: Results) -> str:
    return f"experiments/sweep.py --resume {where.name} --storage-path {where.storage}"


def sweep(args: argparse.Namespace) -> int:
    import signal

    from raytune_ctr import sweep as sweep_lib
    from raytune_ctr.tuner import Aborted

    where: Results | None = None
    try:
        if args.resume:
            for flag in ("config", "name", "smoke", "target_acc", "peak_tflops"):
                if getattr(args, flag) not in (None, False):
                    raise SpecError(f"--{flag.replace('_', '-')}", "--resume goes on with the "
                                    "sweep's saved spec.yaml and name; leave it out",
                                    getattr(args, flag))
            where = Results.interrupted(args.storage_path, args.resume)
            outcome = sweep_lib.resume(where, address=args.address, verbose=args.verbose,
                                       started=_started())
        else:
            flags = {"report": {"target_acc": args.target_acc},
                     "resources": {"peak_tflops": args.peak_tflops}}
            from raytune_ctr import checks  # imports torch: not for report or compare

            spec = checks.load(args.config or DEFAULT_CONFIG, overrides={
                section: {k: v for k, v in values.items() if v is not None}
                for section, values in flags.items()})
            if args.smoke:
                spec = spec_lib.smoke(spec)
            if args.dry_run:
                from raytune_ctr import script

                print(script.dry_run(spec))
                return 0
            name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            where = Results.new(args.storage_path, name)
            outcome = sweep_lib.run(spec, where, address=args.address, verbose=args.verbose,
                                    started=_started())
    except (SpecError, DataError) as err:
        return _fail(str(err))
    except StorageError as err:  # mid-sweep: what was written before stays readable
        return _fail(str(err), 1)
    except KeyboardInterrupt as err:  # a second signal, or one before Tune ran
        signum = err.signum if isinstance(err, Aborted) else signal.SIGINT
        if where and where.finished():  # after the final tables: nothing to resume
            return _fail(f"stopped by {signal.Signals(signum).name} after every trial had "
                         f"finished; the tables are in {where.local}, and raytune-ctr report "
                         f"{where.local} writes the report if it is missing or cut short",
                         128 + signum)
        if where and _resumable(where):
            hint = f"go on with: {_resume_cmd(where)}"
        elif where and where.remove_if_unstarted():
            hint = f"no trial had started, so there is nothing to resume; {where.local} is " \
                "removed: run it again"
        else:
            hint = "no trial had started, so there is nothing to resume; run it again" + (
                f" (delete {where.local} first, or choose another --name)" if where else "")
        return _fail(f"stopped by {signal.Signals(signum).name} before the sweep finished; "
                     + hint, 128 + signum)
    df = outcome.trials
    if outcome.interrupted:
        assert where is not None
        statuses = df.groupby("trial_index")["status"].first()
        left = int((statuses == "INTERRUPTED").sum())
        print(f"\nreport: {outcome.report}")
        return _fail(f"stopped by {signal.Signals(outcome.interrupted).name}: "
                     f"{len(statuses) - left} trials finished, {left} interrupted; go on "
                     f"with: {_resume_cmd(where)}", 128 + outcome.interrupted)
    statuses = df.groupby("trial_index")["status"].first()
    found = writeup.answer(writeup.label_trials(df, outcome.spec), outcome.spec,
                           outcome.report.parent)
    lines = "".join(f"\n- {x}" for x in found.lines)
    print(f"\n{found.headline}{lines}\n\n{_where(outcome.report.parent)}")
    if (statuses == "FAILED").all():
        return _fail(f"all {len(statuses)} trials failed; see {outcome.report}", 1)
    return 0


def report_cmd(args: argparse.Namespace) -> int:
    try:
        path = writeup.build(Path(args.dir))
    except (FileNotFoundError, SpecError) as err:
        return _fail(str(err))
    print(path)
    return 0


def compare_cmd(args: argparse.Namespace) -> int:
    try:
        text, same = writeup.compare(Path(args.a), Path(args.b))
    except (FileNotFoundError, SpecError) as err:
        return _fail(str(err))
    print(text)
    return 0 if same else 1


_first = True  # this process has not run a sweep yet


def _started() -> float:
    """When this command began, for the report's timeline: the process's start for
    its first sweep (imports count), the call's own time for any later one."""
    global _first
    now, start = time.time(), trace.process_start() if _first else None
    _first = False
    return start if start is not None and start <= now else now


def sweep_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    trace.command()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return sweep(sweep_parser(prog).parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="raytune-ctr")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", parents=[sweep_parser()], add_help=False,
                       help="run a study and write its report")
    s.set_defaults(fn=sweep)
    r = sub.add_parser("report", help="rebuild report.md and plots from a results folder")
    r.add_argument("dir")
    r.set_defaults(fn=report_cmd)
    c = sub.add_parser("compare", help="where two results folders differ: every reproducible "
                       "metric to the bit, timing ratios, environment fingerprint; exit 1 if "
                       "the results differ")
    c.add_argument("a")
    c.add_argument("b")
    c.set_defaults(fn=compare_cmd)
    args = p.parse_args(argv)
    return args.fn(args)


__all__ = ["main", "sweep_main"]


if __name__ == "__main__":
    sys.exit(main())
