"""Tiers 2 and 3: a trial whose training is the user's own process. Its command (the
spec's template, or `python -m raytune_ctr.function` for a training function) runs
natively or in the project's image (resources.container), under torchrun for
several workers with rank 0's output read. Each epoch its output gives (output.py)
goes to Tune; stopping the trial ends the process tree (and the container).

What it measures, and what it cannot, is in docs/own-code.md.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import posixpath
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from raytune_ctr import fingerprint, output, packing, reporter, results, trace
from raytune_ctr.spec import ResourceSpec, Spec, TrainSpec, all_trials, trial_fields, values

LABEL = "raytune-ctr.sweep"  # on every trial container: the sweep's end removes any left


class UserProcessError(RuntimeError):
    """The user's process exited non-zero or gave no epoch: one line saying why."""


def image(spec: Spec) -> str:
    """The image resources.container runs the trial's process in."""
    return spec.script.image if spec.script else "raytune-ctr:latest"


def command(spec: Spec, train: TrainSpec, res: ResourceSpec) -> list[str]:
    """The trial's command line, before the python and container it runs under."""
    if spec.runner == "function":
        argv = ["python", "-m", "raytune_ctr.function", str(train.function)]
    else:
        assert spec.script is not None
        argv = output.render(spec.script.command, trial_fields(train, res))
    if res.num_workers > 1:  # torchrun in this python; rank 0's output only
        argv = ["python", "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(res.num_workers), "--local-ranks-filter", "0", *argv[1:]]
    return argv


def shown(spec: Spec, train: TrainSpec, res: ResourceSpec) -> str:
    """The command as --dry-run prints it."""
    argv = command(spec, train, res)
    return (f"docker run {image(spec)} " if res.container else "") + shlex.join(argv)


def dry_run(spec: Spec) -> str:
    """What --dry-run prints: each trial's command (or, for our loop, its fields that
    differ), and what each metric reads from the spec's sample lines."""
    s = spec.search
    if s.method == "grid":
        head = f"{len(spec.grid_points()) * s.num_samples} trials ({s.num_samples} per point):"
    else:
        head = (f"{s.num_samples} trials, chosen by the {s.method} search as it runs; the "
                "space's corners and points:")
    lines = [head]
    for train, res in all_trials(spec):
        if spec.runner == "loop":
            shown_ = values(train, res, spec.searched_keys())
            lines.append("  our loop: " + " ".join(f"{k}={v}" for k, v in shown_.items()))
        else:
            lines.append(f"  in {workdir(spec)}: {shown(spec, train, res)}")
    if spec.script is not None:
        patterns = output.compile_metrics(spec.script.metrics)
        found = output.check_samples(patterns, spec.script.sample)
        if not spec.script.sample:
            lines.append("no script.sample to test the metrics against")
        for name, v in found.items():
            lines.append(f"script.metrics.{name} reads {v:g} from the sample")
    return "\n".join(lines)


def workdir(spec: Spec) -> Path:
    """The working folder: script.folder, else `code:`. On a cluster node where that
    path is not, the trial runs in Ray's copy of `code:` (its working_dir, the
    trial's current folder)."""
    name = (spec.script.folder if spec.script else None) or spec.code
    if name is None:
        return Path.cwd()
    path = Path(name)
    return path if path.is_dir() else Path.cwd()


def run(spec: Spec, job: dict, extra: dict, trial_folder: str | None = None) -> None:
    """Tune's function body for a tier-2 or tier-3 trial (`trial_folder`: its folder as
    Tune writes it)."""
    from ray import tune

    train, res = job["train"], job["resources"]
    out = Path(tempfile.mkdtemp(prefix="raytune_ctr-"))
    try:
        offset = {"epoch": 0, "train_time_s": 0.0, "wall_time_s": 0.0}
        env = _env(spec, train, res, out)
        ckpt = _newest(tune.get_checkpoint(), trial_folder)
        if ckpt is not None:  # a restart: the function resumes from its last folder
            resume = Path(ckpt.to_directory(str(out / "resume")))
            offset |= json.loads((resume / reporter.META).read_text())
            env[reporter.RESUME_ENV] = str(resume)
        _run(spec, job, extra, out, env, offset)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _newest(ckpt, trial_folder: str | None = None):
    """The folder the function goes on from: the one with the most epochs in the
    trial's folder, whether Tune's record names it, an older one (emptied, or a
    stand-in for one Tune replaced) or none (then `trial_folder` says where to look)."""
    from pyarrow import fs
    from ray import tune

    where = results.checkpoints_folder(ckpt, trial_folder)
    if where is None:
        return None
    filesystem, trial = where
    best, best_epoch = None, -1
    for info in filesystem.get_file_info(fs.FileSelector(trial, allow_not_found=True)):
        if info.type != fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with filesystem.open_input_stream(posixpath.join(info.path, reporter.META)) as f:
                epoch = json.loads(f.read())["epoch"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if epoch > best_epoch or (epoch == best_epoch and ckpt and info.path == ckpt.path):
            best, best_epoch = info.path, epoch
    return None if best is None else tune.Checkpoint(best, filesystem=filesystem)


def _env(spec: Spec, train: TrainSpec, res: ResourceSpec, out: Path) -> dict[str, str]:
    config = out / "config.json"
    config.write_text(json.dumps(trial_fields(train, res)))
    cwd = workdir(spec)
    paths = [str(cwd), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, reporter.CONFIG_ENV: str(config), reporter.OUT_ENV: str(out),
            "PYTHONUNBUFFERED": "1",  # an epoch's line arrives when printed, not when a buffer fills
            "OMP_NUM_THREADS": str(res.threads), "PYTHONPATH": os.pathsep.join(paths)}


def _launch(spec: Spec, train: TrainSpec, res: ResourceSpec, out: Path,
            env: dict[str, str]) -> tuple[list[str], str | None]:
    """The argv to start, and the container's name when it runs in one."""
    argv = command(spec, train, res)
    if not res.container:
        return ([sys.executable, *argv[1:]] if argv[0] in output.PYTHONS else argv), None
    name = f"raytune-ctr-{uuid.uuid4().hex[:12]}"
    cwd = str(workdir(spec))
    ours = {k: env[k] for k in (reporter.CONFIG_ENV, reporter.OUT_ENV, reporter.RESUME_ENV,
                                "PYTHONUNBUFFERED", "OMP_NUM_THREADS") if k in env}
    docker = ["docker", "run", "--rm", "--init", "--name", name,
              "--label", f"{LABEL}={spec.name}",
              "--user", f"{os.getuid()}:{os.getgid()}", "--cpus", f"{res.num_workers * res.worker_cpus:g}",
              "--shm-size", "1g", "-e", "HOME=/tmp", "-e", f"PYTHONPATH={cwd}",
              *[a for k, v in ours.items() for a in ("-e", f"{k}={v}")],
              "-v", f"{cwd}:{cwd}", "-v", f"{out}:{out}", "-w", cwd]
    if res.use_gpu:  # docker reads --gpus as CSV: a list of devices goes in quotes
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        docker += ["--gpus", f'"device={visible}"' if visible else "all"]
    return [*docker, "--entrypoint", argv[0], image(spec), *argv[1:]], name


def _run(spec: Spec, job: dict, extra: dict, out: Path, env: dict[str, str],
         offset: dict) -> None:
    train, res = job["train"], job["resources"]
    argv, container = _launch(spec, train, res, out, env)
    who = "train.function" if spec.runner == "function" else "script.command"
    reader = output.Reader(output.compile_metrics(spec.script.metrics) if spec.script else {},
                           first_epoch=offset["epoch"])
    trace.mark("process_start")
    proc = subprocess.Popen(argv, cwd=workdir(spec), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
                            start_new_session=True)  # its own group: ending it ends every rank
    tail: collections.deque[str] = collections.deque(maxlen=5)
    errs = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
    errs.start()
    # Lines are stamped as they arrive, in a thread of their own: tune.report may block
    # longer than an epoch, and that is not the script's time.
    lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
    threading.Thread(target=_stamp, args=(proc.stdout, lines), daemon=True).start()
    try:
        while (item := lines.get()) is not None:
            epoch = reader.feed(item[1], at=item[0])
            if epoch is not None:
                _report(spec, job, extra, epoch, offset, reader, who)
        code = proc.wait()
        errs.join(5)
    finally:
        _end(proc, container)
    if code != 0:
        last = " | ".join(tail) or "nothing on stderr"
        raise UserProcessError(f"{who} exited with {code}: {last}")
    if reader.epochs == 0:
        first = next(iter(spec.script.metrics)) if spec.script else None
        what = f"script.metrics.{first}" if first else "raytune_ctr.report (it never reported)"
        raise UserProcessError(reader.silent(what))


def _report(spec: Spec, job: dict, extra: dict, epoch: dict, offset: dict,
            reader: output.Reader, who: str) -> None:
    from ray import tune

    folder = epoch.pop("checkpoint", None)
    samples = epoch.pop("samples", None)  # a function's training samples this epoch
    missing = [m for m in spec.search.objectives if m not in epoch and m not in output.TIMED]
    if missing:
        raise UserProcessError(f"{who}: epoch {epoch['epoch']} reported no {', '.join(missing)} "
                            f"(it reported {', '.join(sorted(epoch))})")
    train_s = offset["train_time_s"] + reader.train_s
    wall_s = offset["wall_time_s"] + time.monotonic() - reader.started
    metrics = epoch | {"train_time_s": train_s, "wall_time_s": wall_s,
                       "resumed_from_epoch": offset["epoch"]}
    if job["hour_usd"] is not None:
        metrics["cost_usd"] = wall_s / 3600 * job["hour_usd"]
    res = job["resources"]
    metrics |= _throughput(samples, epoch, res)
    where = image(spec) if res.container else None
    metrics |= {f"env_{k}": v for k, v in fingerprint.process(where, res.use_gpu).items()}
    metrics |= {"ended_at": time.time()} | extra
    trace.mark("epoch_read")
    for_tune = packing.pack(metrics, packing.tune_keys(spec))
    if folder is None:
        tune.report(for_tune)
        return
    Path(folder, reporter.META).write_text(json.dumps(
        {"epoch": metrics["epoch"], "train_time_s": train_s, "wall_time_s": wall_s}))
    try:
        tune.report(for_tune, checkpoint=tune.Checkpoint.from_directory(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _throughput(samples, epoch: dict, res: ResourceSpec) -> dict:
    """samples_per_s from a function's sample count; tflops and mfu when it also
    reported flops_per_sample (raytune_ctr.count_flops), mfu against
    resources.peak_tflops per worker, as our loop's."""
    out: dict = {}
    if isinstance(samples, int | float) and samples > 0 and epoch["epoch_time_s"] > 0:
        out["samples_per_s"] = samples / epoch["epoch_time_s"]
        fps = epoch.get("flops_per_sample")
        if isinstance(fps, int | float) and fps > 0:
            out["tflops"] = fps * out["samples_per_s"] / 1e12
            if res.peak_tflops:
                out["mfu"] = out["tflops"] / (res.peak_tflops * res.num_workers)
    return out


def _stamp(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((time.monotonic(), line))
    lines.put(None)


def kill_containers(spec: Spec) -> None:
    """Remove this sweep's trial containers that are still running: a trial process
    that Tune ended before its own clean-up ran leaves its container behind."""
    if not any(r.container for _, r in all_trials(spec)):
        return
    try:
        found = subprocess.run(["docker", "ps", "-q", "--filter", f"label={LABEL}={spec.name}"],
                               capture_output=True, text=True, timeout=60, check=False)
        if found.stdout.split():
            subprocess.run(["docker", "kill", *found.stdout.split()], capture_output=True,
                           timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass  # no engine here: no container either


def _drain(stream, tail: collections.deque) -> None:
    for line in stream:
        if line.strip():
            tail.append(line.rstrip()[-300:])
        sys.stderr.write(line)


def _end(proc: subprocess.Popen, container: str | None) -> None:
    """End the process tree, and the container: killing `docker run` leaves it running.
    torchrun starts each rank in a session of its own, so the ranks are found by
    their parents (/proc), not by the process group."""
    if container is not None:
        subprocess.run(["docker", "kill", container], capture_output=True, timeout=60, check=False)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [proc.pid, *_descendants(proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 2.0  # Tune waits about this long for a trial to end
        while time.monotonic() < deadline and _alive(proc, pids):
            time.sleep(0.05)
        if not _alive(proc, pids):
            break
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children[ppid].append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(proc: subprocess.Popen, pids: list[int]) -> bool:
    proc.poll()  # reaps the leader
    for pid in pids:
        if pid == proc.pid and proc.returncode is not None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        try:  # a zombie whose parent has not reaped it yet is gone for our purpose
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except (OSError, IndexError):
            continue
        return True
    return False
