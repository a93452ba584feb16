"""Nothing lost, for real: SIGKILL the sweep's driver and resume it; SIGKILL a Train
worker and watch the trial restart from its checkpoint. No mocks."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent


def sweep(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "experiments/sweep.py", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | (env or {}), **kw)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def checkpoints(run: Path) -> dict[str, int]:
    """Trial id -> the epoch of its newest checkpoint so far (Tune's trial_<id>/
    checkpoint_*/, each holding the epochs so far in history.json)."""
    found = {}
    for f in run.glob("trial_*/checkpoint_*/history.json"):
        try:
            epoch = json.loads(f.read_text())[-1]["epoch"]
        except (OSError, ValueError, IndexError):
            continue  # being written
        tid = f.parent.parent.name.removeprefix("trial_")
        found[tid] = max(found.get(tid, 0), epoch)
    return found


def wait_for(cond, proc, what, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return ""


def trials(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "trials.parquet").sort_values(["trial_index", "epoch"])


def record(run: Path) -> dict[str, tuple[str, int]]:
    """Trial id -> (status, last epoch) in Tune's experiment record as saved in `run`."""
    found = {}
    for f in run.glob("experiment_state-*.json"):
        try:
            for state, meta in json.loads(f.read_text())["trial_data"]:
                last = json.loads(meta)["last_result"]
                last = json.loads(last) if isinstance(last, str) else last
                found[json.loads(state)["trial_id"]] = (json.loads(state)["status"],
                                                        (last or {}).get("epoch", 0))
        except (OSError, ValueError, KeyError):
            return {}  # being written
    return found


EPOCHS = 6


@pytest.mark.parametrize("gone", [False, True], ids=["as-saved", "named-checkpoint-gone"])
def test_killed_driver_resumes_to_the_uninterrupted_results(write_spec, tmp_path, gone, journal):
    spec = write_spec({
        "name": "resume",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        # mnist_cnn has dropout, so the RNG state must come back too.
        "train": {"model": "mnist_cnn", "epochs": EPOCHS, "deterministic": True},
        "search": {"method": "optuna", "num_samples": 3, "objectives": {"test_acc": "max"},
                   "space": {"lr": {"loguniform": [0.05, 2.0]},
                             "batch_size": {"choice": [32, 64, 128]}}},
    })
    res = tmp_path / "res"
    code, out = finish(sweep("--config", spec, "--storage-path", res, "--name", "whole"))
    assert code == 0, out[-3000:]

    cut = res / "cut"
    proc = sweep("--config", spec, "--storage-path", res, "--name", "cut",
                 env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    # Mid-sweep: the first trial done, the second a few epochs in. It is stopped there
    # (SIGSTOP: a slow epoch) until Tune's record has it, saved each second here (10 s
    # or more by default); then the driver is killed.
    wait_for(lambda: sorted(checkpoints(cut).values()) in ([2, EPOCHS], [3, EPOCHS], [4, EPOCHS]),
             proc, "the second trial's second epoch")
    frozen = [p for p in descendants(proc.pid) if title(p).startswith("ray::ImplicitFunc")]
    assert frozen, [title(p) for p in descendants(proc.pid)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)

    def saved():
        states = sorted(record(cut).values())
        return len(states) == 2 and states[0][0] == "RUNNING" and states[0][1] >= 1 \
            and states[1] == ("TERMINATED", EPOCHS)

    wait_for(saved, proc, "Tune's record to hold the second trial mid-way")
    done = {t for t, e in checkpoints(cut).items() if e == EPOCHS}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # What the killed sweep leaves: the trials that had finished, readable.
    assert set(pd.read_parquet(cut / "trials.parquet")["trial_id"]) == done
    assert json.loads((cut / "unfinished.json").read_text())["state"] == "running"
    if gone:
        # With num_to_keep=1 (sweeps before checkpoints.py) Tune deleted a trial's old
        # checkpoint as it took the new one, and saved the record naming it a moment
        # later: a driver killed in between left a record naming a checkpoint that is
        # gone (CI hit it). Renumbered, none that the record names is left.
        for trial in cut.glob("trial_*"):
            if trial.name.removeprefix("trial_") not in done:
                for c in sorted(trial.glob("checkpoint_*"), reverse=True):
                    c.rename(c.with_name(f"checkpoint_{int(c.name.split('_')[1]) + 10:06d}"))

    code, out = finish(sweep("--resume", "cut", "--storage-path", res))
    assert code == 0, out[-3000:]

    # Same trials, same configs (the Optuna searcher came back, not a fresh or random
    # one), every epoch's metrics equal to the bit.
    proc = subprocess.run([sys.executable, "-m", "raytune_ctr.cli", "compare", res / "whole", cut],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "results identical" in proc.stdout and f"{3 * EPOCHS} epoch rows" in proc.stdout

    df = trials(cut)
    assert (df.groupby("trial_index")["epoch"].apply(list) == [list(range(1, EPOCHS + 1))] * 3).all()
    assert set(df["status"]) == {"COMPLETED"}
    # Finished trials were not trained again (a rerun would at most say their result
    # again from the last checkpoint); the interrupted one went on from its checkpoint.
    first = df[df["trial_id"].isin(done)]
    assert set(first["resumed_from_epoch"]) <= {0, EPOCHS}
    rest = df[~df["trial_id"].isin(done)]
    # (epoch 2's folder can appear before Train registers it: it may go on from epoch 1)
    assert rest["resumed_from_epoch"].between(1, EPOCHS - 1).any()
    assert "## Recovered trials" in (cut / "report.md").read_text()

    def study(name):
        return optuna.load_study(study_name=name, storage=journal(res / name))

    def complete(s):
        return sorted(str(t.params) for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE)

    assert complete(study("cut")) == complete(study("whole"))
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study("cut").trials)


def test_killed_train_worker_restarts_the_trial_from_its_checkpoint(write_spec, tmp_path):
    spec = write_spec({
        "name": "worker-kill",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [64], "epochs": 20, "optimizer": "adam", "lr": 1e-3,
                  "lr_schedule": "none"},
        "resources": {"num_workers": 2},
        "search": {"method": "grid", "max_failures": 1},
    })
    run = tmp_path / "res" / "kill"
    proc = sweep("--config", spec, "--storage-path", tmp_path / "res", "--name", "kill")
    wait_for(lambda: max(checkpoints(run).values(), default=0) >= 4, proc, "epoch 4")
    workers = [p for p in descendants(proc.pid) if title(p).startswith("ray::RayTrainWorker")]
    assert len(workers) == 2, [title(p) for p in descendants(proc.pid)]
    os.kill(workers[-1], signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out[-3000:]

    df = trials(run)
    assert df["epoch"].tolist() == list(range(1, 21)) and set(df["status"]) == {"COMPLETED"}
    assert df["retries"].max() == 1 and df["retries"].iloc[0] == 0
    # A worker writes an epoch's folder before Train's controller registers it as the
    # latest checkpoint, so the restart can go on from an epoch or two before it.
    resumed = df["resumed_from_epoch"].max()
    assert resumed >= 1 and (df["retries"] == 1).tolist() == [e > resumed for e in df["epoch"]]
    assert df["test_acc"].iloc[-1] > 90.0
    assert df["retry_error"].iloc[-1]  # why it restarted: the dead worker, in a line
    text = (run / "report.md").read_text()
    recovered = text.split("## Recovered trials", 1)[1].split("##", 1)[0]
    assert "COMPLETED" in recovered and "_none_" not in recovered


def test_killed_trial_process_of_a_ddp_trial_restarts_it_on_the_same_pool(write_spec, tmp_path):
    """The trial's own process (it relays a 2-worker trial's epochs from the pool)
    dies: Tune restarts the trial from its checkpoint, and the pool drops the
    orphaned job and serves the restarted one."""
    spec = write_spec({
        "name": "relay-kill",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [64], "epochs": 20, "optimizer": "adam", "lr": 1e-3,
                  "lr_schedule": "none"},
        "resources": {"num_workers": 2},
        "search": {"method": "grid", "max_failures": 1},
    })
    run = tmp_path / "res" / "relay"
    proc = sweep("--config", spec, "--storage-path", tmp_path / "res", "--name", "relay")
    wait_for(lambda: max(checkpoints(run).values(), default=0) >= 4, proc, "epoch 4")
    relays = [p for p in descendants(proc.pid) if title(p).startswith("ray::ImplicitFunc")]
    assert len(relays) == 1, [title(p) for p in descendants(proc.pid)]
    os.kill(relays[0], signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out[-3000:]

    df = trials(run)
    assert df["epoch"].tolist() == list(range(1, 21)) and set(df["status"]) == {"COMPLETED"}
    assert df["retries"].max() == 1 and df["resumed_from_epoch"].max() >= 1
    assert df["retry_error"].iloc[-1]  # the dead process, in a line
    assert df["test_acc"].iloc[-1] > 90.0


@pytest.mark.parametrize("max_failures", [1, 0], ids=["restarted", "failed"])
def test_killed_trial_process_gives_its_cpus_back_to_the_gate(write_spec, tmp_path, monkeypatch,
                                                              max_failures):
    """Workers searched on one node: trials hold their CPUs in the coordinator's gate
    (gate.py), not in Ray. The process of the trial holding them dies while the
    other trial waits. Restarted, the trial takes its CPUs back and goes on from its
    checkpoint; FAILED, its CPUs come back once it is silent. Either way the other
    trial finishes; without that, the sweep hangs."""
    spec = write_spec({
        "name": "gate-kill",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [64], "epochs": 20, "optimizer": "adam", "lr": 1e-3,
                  "lr_schedule": "none"},
        # Half the node a worker: one trial holds its CPUs while the other waits.
        "resources": {"cpus_per_worker": (os.cpu_count() or 2) / 2},
        "search": {"method": "grid", "max_failures": max_failures,
                   "grid": {"num_workers": [1, 2]}},
    })
    trace = tmp_path / "trace.jsonl"  # which process holds the CPUs, for which trial
    monkeypatch.setenv("RAYTUNE_CTR_TRACE", str(trace))
    run = tmp_path / "res" / "gate"
    proc = sweep("--config", spec, "--storage-path", tmp_path / "res", "--name", "gate")
    holder: dict = {}

    def one_holds_and_one_waits():
        marks = [json.loads(line) for line in trace.read_text().splitlines()] \
            if trace.is_file() else []
        held = {m["trial"]: m["pid"] for m in marks if m["phase"] == "cpus_held"}
        started = {m["trial"] for m in marks if m["phase"] == "trial_start"}
        at = checkpoints(run)
        if len(started) == 2 and len(held) == 1 and at.get(t := next(iter(held)), 0) >= 3:
            holder.update(trial=t, pid=held[t])
        return bool(holder)

    wait_for(one_holds_and_one_waits, proc, "one trial at epoch 3 while the other waits")
    os.kill(holder["pid"], signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out[-3000:]

    df = trials(run)
    status = df.groupby("trial_id")["status"].first().to_dict()
    killed = "COMPLETED" if max_failures else "FAILED"
    assert status == {t: killed if t == holder["trial"] else "COMPLETED" for t in status}
    if max_failures:
        assert len(df) == 40
        retries = df.groupby("trial_id")["retries"].max()
        assert retries.to_dict() == {t: int(t == holder["trial"]) for t in retries.index}


@pytest.mark.parametrize("sig,times", [(signal.SIGINT, 1), (signal.SIGTERM, 1),
                                       (signal.SIGINT, 2)],
                         ids=["ctrl-c", "sigterm", "ctrl-c-twice"])
def test_a_signal_mid_sweep_keeps_finished_trials_and_resumes(write_spec, tmp_path, sig, times):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM
    (to the driver alone, as `kill` or `docker stop` sends it) while the second of
    three trials trains."""
    spec = write_spec({
        "name": "sig",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mnist_cnn", "epochs": EPOCHS, "batch_size": 32},
        "search": {"method": "grid", "grid": {"lr": [0.25, 0.5, 1.0]}, "max_concurrent": 1},
    })
    res = tmp_path / "res"
    run = res / "cut"
    proc = sweep("--config", spec, "--storage-path", res, "--name", "cut",
                 start_new_session=True)
    wait_for(lambda: sorted(checkpoints(run).values())[:2] in ([1, EPOCHS], [2, EPOCHS]),
             proc, "the second trial's first epoch")
    for _ in range(times):
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        time.sleep(0.3)
    code, out = finish(proc, timeout=120)
    assert code == 128 + sig, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: stopped by {signal.Signals(sig).name}"), out[-3000:]
    assert f"--resume cut --storage-path {res}" in last, last
    if times == 1:  # a graceful stop: the tables and the report, the rest marked
        df = trials(run)
        status = df.groupby("trial_index")["status"].first()
        assert (status == "COMPLETED").sum() >= 1 and (status == "INTERRUPTED").sum() >= 1, status
        assert "FAILED" not in set(status), df[["trial_index", "status", "error"]]
        assert "trials finished" in last and "interrupted" in last
        assert "**Interrupted**" in (run / "report.md").read_text()
        assert json.loads((run / "unfinished.json").read_text())["state"] == "interrupted"

    code, out = finish(sweep("--resume", "cut", "--storage-path", res))
    assert code == 0, out[-3000:]
    df = trials(run)
    assert set(df["status"]) == {"COMPLETED"}, df[["trial_index", "status", "error"]]
    assert df["trial_index"].nunique() == 3
    assert (df.groupby("trial_index")["epoch"].apply(list) == [list(range(1, EPOCHS + 1))] * 3).all()
    assert not (run / "unfinished.json").exists()
    assert "Interrupted" not in (run / "report.md").read_text()


def test_ctrl_c_in_the_report_says_how_to_write_it_and_leaves_nothing(write_spec, tmp_path,
                                                                       monkeypatch):
    """Ctrl-C once every trial has finished and the tables are written, while the
    report is built and the pools stop: --resume has nothing to go on with, so the
    last line says how to write the report; the pools end with the sweep's Ray."""
    spec = write_spec({
        "name": "late",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mlp", "hidden": [32], "epochs": 2, "optimizer": "adam", "lr": 0.01,
                  "lr_schedule": "none"},
        "search": {"method": "grid", "grid": {"num_workers": [1, 2]}},
    })
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RAYTUNE_CTR_TRACE", str(trace))
    res = tmp_path / "res"
    proc = sweep("--config", spec, "--storage-path", res, "--name", "late",
                 start_new_session=True)
    wait_for(lambda: trace.is_file() and '"tables_written"' in trace.read_text(), proc,
             "the final tables")
    left = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    code, out = finish(proc, timeout=120)
    assert code == 130, out[-3000:]
    last = out.strip().splitlines()[-1]
    run = res / "late"
    assert last == (f"error: stopped by SIGINT after every trial had finished; the tables "
                    f"are in {run}, and raytune-ctr report {run} writes the report if it is "
                    f"missing or cut short"), out[-3000:]
    end = time.monotonic() + 30  # Ray's processes may take a moment to go
    while [p for p in left if title(p)] and time.monotonic() < end:
        time.sleep(0.5)
    assert [p for p in left if title(p)] == [], [title(p) for p in left if title(p)]
    assert set(trials(run).groupby("trial_index")["status"].first()) == {"COMPLETED"}
    report = subprocess.run([sys.executable, "-m", "raytune_ctr.cli", "report", str(run)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and (run / "report.md").is_file(), report.stderr[-2000:]


def test_a_full_disk_mid_sweep_fails_with_one_line_and_keeps_finished_trials(
        write_spec, tmp_path, mount_namespace):
    """The results folder on a small tmpfs of the sweep's own mount namespace, filled
    up once the first trial's row is written."""
    spec = write_spec({
        "name": "full",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data")},
        "train": {"model": "mnist_cnn", "epochs": 3, "batch_size": 32},
        "search": {"method": "grid", "grid": {"lr": [0.25, 0.5, 1.0, 1.5]}, "max_concurrent": 1,
                   "max_failures": 0},
    })
    res, copy = tmp_path / "res", tmp_path / "copy"
    res.mkdir()
    py = sys.executable
    proc = mount_namespace(f"""
        mount -t tmpfs -o size=64m tmpfs {res} && cd {ROOT} || exit 90
        {py} experiments/sweep.py --config {spec} --storage-path {res} --name full \
            > {tmp_path}/sweep.log 2>&1 &
        pid=$!
        until [ -f {res}/full/trials.parquet ] || ! kill -0 $pid 2>/dev/null; do sleep 0.1; done
        dd if=/dev/zero of={res}/filler bs=1M 2>/dev/null
        wait $pid; echo "sweep_rc=$?"
        rm {res}/filler   # space again: the user reads what was kept
        {py} -m raytune_ctr.cli report {res}/full; echo "report_rc=$?"
        cp -r {res}/full {copy}
    """, timeout=600)
    log = (tmp_path / "sweep.log").read_text()
    assert "sweep_rc=1" in proc.stdout, proc.stdout + proc.stderr + log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last, log[-3000:]
    assert "report_rc=0" in proc.stdout, proc.stdout + proc.stderr
    df = pd.read_parquet(copy / "trials.parquet")
    finished = df.groupby("trial_index")["status"].first()
    assert (finished == "COMPLETED").sum() >= 1 and len(finished) < 4, finished
    assert "**Unfinished**" in (copy / "report.md").read_text()
