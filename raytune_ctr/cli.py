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

from raytune_ctr import plan, report
from raytune_ctr import spec as spec_lib
from raytune_ctr import storage as storage_lib
from raytune_ctr.errors import DataError, SpecError, one_line

# Relative to where you run it (the repository root, or /app in the image).
DEFAULT_CONFIG = "experiments/configs/quickstart.yaml"
LOCAL_RESULTS = "results"  # also where a URI storage path's local copy goes
log = logging.getLogger("raytune_ctr")


def sweep_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run one study: a Ray Tune sweep of Ray "
                                "Train trials, then write the trade-off report.")
    p.add_argument("--config", default=None, help=f"study YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--smoke", action="store_true", help="two configs, 1 epoch, 512 samples")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (e.g. auto, ray://host:10001); default: start one here")
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
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray worker logs")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _locate(storage_path: str, name: str, flag: str) -> tuple[Path, str | None]:
    """(local results folder, URI results folder or None) of results folder `name`."""
    if "/" in name or name in ("", ".", ".."):
        raise SpecError(flag, "must be a plain folder name", name)
    uri = storage_lib.join(storage_path, name) if storage_lib.is_uri(storage_path) else None
    return Path(LOCAL_RESULTS if uri else storage_path).expanduser().resolve() / name, uri


def _results_folders(storage_path: str, name: str) -> tuple[Path, str | None]:
    """(local results folder, URI results folder or None); both must be new."""
    run_dir, uri = _locate(storage_path, name, "--name")
    try:
        taken = run_dir if run_dir.exists() else uri if uri and storage_lib.exists(uri) else None
    except (OSError, ValueError) as err:  # unknown scheme, no credentials, no network
        raise SpecError("--storage-path", f"cannot use it ({one_line(err)})",
                        storage_path) from None
    if taken:
        raise SpecError("--name", f"results folder {taken} already exists; "
                        "choose another --name (nothing was overwritten)", name)
    return run_dir, uri


def _resume_folders(storage_path: str, name: str) -> tuple[Path, str | None]:
    """(local results folder, URI results folder or None) of an unfinished sweep."""
    from raytune_ctr import tuner

    run_dir, uri = _locate(storage_path, name, "--resume")
    where = uri or str(run_dir)
    try:
        if uri and storage_lib.exists(uri):
            storage_lib.download(uri, run_dir)  # spec.yaml and optuna.db, if not here
        resumable = tuner.can_resume(where)
    except (OSError, ValueError) as err:
        raise SpecError("--storage-path", f"cannot use it ({one_line(err)})",
                        storage_path) from None
    if not (run_dir / "spec.yaml").is_file() or not resumable:
        raise SpecError("--resume", f"no interrupted sweep at {where} (nothing was changed)", name)
    if (run_dir / "trials.parquet").is_file():
        raise SpecError("--resume", f"that sweep finished; its results are in {run_dir}", name)
    return run_dir, uri


def sweep(args: argparse.Namespace) -> int:
    from raytune_ctr import tuner

    if args.resume:
        return resume(args)
    try:
        flags = {"report": {"target_acc": args.target_acc},
                 "resources": {"peak_tflops": args.peak_tflops}}
        spec = spec_lib.load(args.config or DEFAULT_CONFIG, overrides={
            section: {k: v for k, v in values.items() if v is not None}
            for section, values in flags.items()})
        if args.smoke:
            spec = tuner.smoke(spec)
        name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, uri = _results_folders(args.storage_path, name)
        source = tuner.prepare_data(spec)
        tuner.init_ray(args.address, verbose=args.verbose)
        concurrency = plan.plan(spec)
    except (SpecError, DataError) as err:
        return _fail(str(err))
    log.info("data: %s; running up to %d trials at once", source, concurrency)
    run_dir.mkdir(parents=True)
    spec_lib.dump(spec, run_dir / "spec.yaml")
    if uri:  # so --resume can find the spec from another machine
        storage_lib.upload(run_dir, uri)
    try:
        df = tuner.run_sweep(spec, run_dir, concurrency=concurrency, storage=uri)
    except SpecError as err:  # the sweep's name is taken on a shared cluster
        return _fail(str(err))
    return _finish(spec, df, run_dir, uri)


def resume(args: argparse.Namespace) -> int:
    from raytune_ctr import tuner

    try:
        for flag in ("config", "name", "smoke", "target_acc", "peak_tflops"):
            if getattr(args, flag) not in (None, False):
                raise SpecError(f"--{flag.replace('_', '-')}", "--resume goes on with the "
                                "sweep's saved spec.yaml and name; leave it out",
                                getattr(args, flag))
        run_dir, uri = _resume_folders(args.storage_path, args.resume)
        spec = spec_lib.load(run_dir / "spec.yaml")
        if spec.search.method == "optuna" and not (run_dir / "optuna.db").is_file():
            # The searcher's trials live there; without them TPE would start over.
            raise SpecError("--resume", f"the Optuna study {run_dir / 'optuna.db'} is missing; "
                            "resume on the machine and folder the sweep started in", args.resume)
        source = tuner.prepare_data(spec)
        tuner.init_ray(args.address, verbose=args.verbose)
        plan.plan(spec)
    except (SpecError, DataError) as err:
        return _fail(str(err))
    log.info("data: %s; resuming %s", source, uri or run_dir)
    try:
        df = tuner.resume_sweep(spec, run_dir, storage=uri)
    except SpecError as err:  # Tune could not read its own state back
        return _fail(str(err))
    return _finish(spec, df, run_dir, uri)


def _finish(spec, df, run_dir: Path, uri: str | None) -> int:
    try:
        path = report.build(run_dir)
    finally:  # the tables are worth keeping even if the report fails
        if uri:
            storage_lib.upload(run_dir, uri)
            log.info("results copied to %s", uri)
    statuses = df.groupby("trial_index")["status"].first()
    print(f"\nreport: {path}\n{report.fastest_reaching(report.label_trials(df, spec), spec.report.target_acc)}")
    if (statuses == "FAILED").all():
        return _fail(f"all {len(statuses)} trials failed; see {path}", 1)
    return 0


def report_cmd(args: argparse.Namespace) -> int:
    try:
        path = report.build(Path(args.dir))
    except (FileNotFoundError, SpecError) as err:
        return _fail(str(err))
    print(path)
    return 0


def compare_cmd(args: argparse.Namespace) -> int:
    try:
        text, same = report.compare(Path(args.a), Path(args.b))
    except (FileNotFoundError, SpecError) as err:
        return _fail(str(err))
    print(text)
    return 0 if same else 1


def sweep_main(argv: list[str] | None = None, prog: str | None = None) -> int:
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
