"""The command line as a user meets it: bad input exits 2 with one line and writes nothing.

The checks run in-process (cli.sweep_main, what experiments/sweep.py calls), fast; one
runs the script itself, and the ones that start Ray run it in a subprocess so no Ray
stays up in pytest's process.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from raytune_ctr import cli

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Exit:
    returncode: int
    stderr: str


def script(*args):
    return subprocess.run([sys.executable, "experiments/sweep.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())


@pytest.fixture
def sweep(capsys):
    """sweep(*args): experiments/sweep.py's exit code and stderr, run in-process."""
    def run(*args):
        code = cli.sweep_main([str(a) for a in args])
        return Exit(code, capsys.readouterr().err)
    return run


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    for f in fragments:
        assert f in last, last


@pytest.mark.parametrize("yaml_text,fragments", [
    ("train: {lr: -0.5}\n", ["train.lr", "-0.5"]),
    ("train: {batch_size: 0}\n", ["train.batch_size", "got 0"]),
    ("search: {method: optuna, grid: {lr: [0.1]}, space: {lr: {choice: [0.1]}}}\n",
     ["search.grid", "cannot be mixed"]),
    ("trian: {lr: 1.0}\n", ["trian", "unknown key (did you mean 'train'?)"]),
])
def test_bad_spec_exits_2_before_anything(sweep, write_spec, tmp_path, yaml_text, fragments):
    out = tmp_path / "results"
    proc = sweep("--config", write_spec(yaml_text), "--storage-path", out)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("raw,fragments", [
    (b"name: s\xff\xfe\n", ["is not UTF-8 text (byte 0xff at offset 7)"]),
    (b"train: {lr: .inf}\n", ["train.lr: input should be a finite number, got inf"]),
    (b"train:\n  lr: -.inf\n", ["train.lr", "finite", "got -inf"]),
    (b"report: {target_acc: .nan}\n", ["report.target_acc", "finite", "got nan"]),
    (b"report: {baseline: {lr: .inf}}\n", ["report.baseline.lr", "finite", "got inf"]),
    (b"search: {grid: {lr: [0.1, 0.2]}}\nreport: {baseline: {lr: 0.3}}\n",
     ["report.baseline: matches no configuration of the grid", "got {'lr': 0.3}"]),
    (b"train:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.2\n",
     ["train.lr: written twice in one mapping (lines 2 and 4)"]),
    (b"", ["is empty"]),
    (b"  \n\t\n# a comment\n", ["is empty"]),
    (b"name: ''\n", ["name: must be a plain folder name", "got ''"]),
    (b"name: a/b\n", ["name: must be a plain folder name", "got 'a/b'"]),
    (b"name: ..\n", ["name: must be a plain folder name", "got '..'"]),
])
def test_bad_spec_files_exit_2_with_one_line(sweep, tmp_path, raw, fragments):
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw)
    out = tmp_path / "results"
    proc = sweep("--config", path, "--storage-path", out)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


def test_a_config_that_is_a_folder_unreadable_or_too_big(sweep, tmp_path, monkeypatch):
    out = tmp_path / "results"
    assert_one_line_error(sweep("--config", tmp_path, "--storage-path", out),
                          "--config: is a folder, not a spec file")
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 120_000)
    assert_one_line_error(sweep("--config", big, "--storage-path", out),
                          "--config: is 1,200,010 bytes; a spec file is at most 1,048,576")
    locked = tmp_path / "locked.yaml"
    locked.write_text("name: locked\n")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the read fail as it would for a user
        def denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(Path, "read_bytes", denied)
    assert_one_line_error(sweep("--config", locked, "--storage-path", out),
                          "--config: cannot read it (Permission denied)")
    assert not out.exists()


def test_report_reads_a_results_folders_spec_under_the_same_rules(capsys, tmp_path):
    run = tmp_path / "done"
    run.mkdir()
    (run / "spec.yaml").write_text("name: done\ntrain:\n  lr: .inf\n")
    (run / "trials.parquet").write_text("precious")
    code = cli.main(["report", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: train.lr: input should be a finite number, got inf", err
    assert (run / "trials.parquet").read_text() == "precious"
    assert sorted(p.name for p in run.iterdir()) == ["spec.yaml", "trials.parquet"]


def test_a_storage_path_that_cannot_be_written_is_found_before_anything(sweep, write_spec,
                                                                        tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    proc = sweep("--config", write_spec({}), "--storage-path", in_the_way / "results")
    assert_one_line_error(proc, "--storage-path: cannot write there (a file is in the way)")
    assert in_the_way.read_text() == "not a folder"


def test_a_read_only_storage_path_is_found_before_anything(write_spec, tmp_path, mount_namespace):
    out = tmp_path / "ro"
    out.mkdir()
    spec = write_spec({})
    proc = mount_namespace(f"mount --bind {out} {out} && mount -o remount,bind,ro {out} && "
                           f"cd {ROOT} && exec {sys.executable} experiments/sweep.py "
                           f"--config {spec} --storage-path {out}", timeout=120)
    assert_one_line_error(proc, "--storage-path: cannot write there (Read-only file system)",
                          f"'{out}'")
    assert list(out.iterdir()) == []


def test_the_script_exits_2_with_one_line_and_no_traceback(write_spec, tmp_path):
    out = tmp_path / "results"
    proc = script("--config", write_spec("train: {lr: -0.5}\n"), "--storage-path", out)
    assert_one_line_error(proc, "train.lr", "-0.5")
    assert not out.exists()


def test_bad_command_line_override_exits_2_naming_the_spec_key(sweep, write_spec, tmp_path):
    out = tmp_path / "results"
    proc = sweep("--config", write_spec("name: s\n"), "--peak-tflops", "-1",
                 "--storage-path", out)
    assert_one_line_error(proc, "resources.peak_tflops", "greater than 0", "got -1.0")
    assert not out.exists()


CPUS = os.cpu_count()


@pytest.mark.ray
@pytest.mark.parametrize("resources,fragments", [
    ({"num_workers": CPUS + 1}, ["resources.num_workers",
                                 f"need {CPUS + 1} CPUs but the cluster has {CPUS}",
                                 f"got {CPUS + 1}"]),
    ({"use_gpu": True}, ["resources.use_gpu: the cluster has no GPU"]),
])
def test_requests_the_cluster_cannot_hold_exit_2(write_spec, tmp_path, resources, fragments):
    import torch

    if resources.get("use_gpu") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "results"
    spec = write_spec({"resources": resources, "train": {"batch_size": 64}})
    proc = script("--config", spec, "--storage-path", out)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


def test_existing_results_folder_is_never_overwritten(sweep, write_spec, tmp_path):
    out = tmp_path / "results"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "trials.parquet").write_text("precious")
    proc = sweep("--config", write_spec({}), "--storage-path", out, "--name", "mine")
    assert_one_line_error(proc, "--name", "already exists", "'mine'")
    assert (out / "mine" / "trials.parquet").read_text() == "precious"


def test_missing_config_file(sweep, tmp_path):
    proc = sweep("--config", tmp_path / "nope.yaml")
    assert_one_line_error(proc, "--config: no such file")


def test_unreachable_ray_address_fails_fast(sweep, write_spec, tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "results"
    proc = sweep("--config", write_spec({}), "--address", f"127.0.0.1:{port}",
                 "--storage-path", out)
    assert_one_line_error(proc, "--address: cannot reach a Ray cluster there",
                          f"'127.0.0.1:{port}'")
    assert not out.exists()


def test_unreachable_ray_address_in_the_environment_fails_fast_naming_it(
        sweep, write_spec, tmp_path, monkeypatch):
    """No --address, as `ray job submit` runs a driver: Ray would join RAY_ADDRESS, so
    the sweep checks that one, and names it."""
    from _cluster import free_port  # benchmarks/, on pytest's pythonpath

    port = free_port()  # free a moment ago
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    out = tmp_path / "results"
    proc = sweep("--config", write_spec({}), "--storage-path", out)
    assert_one_line_error(proc, "RAY_ADDRESS: cannot reach a Ray cluster there",
                          f"'127.0.0.1:{port}'")
    assert not out.exists()


def test_an_address_without_a_port_is_one_line(sweep, write_spec, tmp_path):
    proc = sweep("--config", write_spec({}), "--address", "127.0.0.1:abc",
                 "--storage-path", tmp_path / "results")
    assert_one_line_error(proc, "--address: expected host:port", "'127.0.0.1:abc'")


def test_corrupt_dataset_file_exits_2_naming_the_file(sweep, write_spec, write_idx, tmp_path):
    """A truncated IDX file (an interrupted download) is found before Ray starts."""
    import numpy as np

    fm = tmp_path / "fm"
    write_idx(fm, np.zeros((20, 28, 28), np.uint8), np.zeros(20, np.uint8), gz=False)
    f = fm / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    out = tmp_path / "results"
    spec = write_spec({"data": {"dataset": "fashion-mnist", "data_dir": str(fm)}})
    proc = sweep("--config", spec, "--storage-path", out)
    assert_one_line_error(proc, str(f), "truncated or corrupt", "fetch it again")
    assert not out.exists() and f.stat().st_size > 0  # nothing written, nothing deleted


def test_resume_of_a_name_that_does_not_exist(sweep, tmp_path):
    out = tmp_path / "results"
    proc = sweep("--resume", "nope", "--storage-path", out)
    assert_one_line_error(proc, "--resume: no interrupted sweep at", "'nope'")
    assert not out.exists()


def test_resume_of_a_finished_sweep_changes_nothing(sweep, tmp_path):
    run = tmp_path / "results" / "done"
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("name: done\n")
    (run / "trials.parquet").write_text("precious")
    # What Tune leaves behind, so only "finished" stops it.
    (run / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (run / "tuner.pkl").write_bytes(b"")
    proc = sweep("--resume", "done", "--storage-path", tmp_path / "results")
    assert_one_line_error(proc, "--resume: that sweep finished")
    assert (run / "trials.parquet").read_text() == "precious"


def test_resume_takes_the_saved_spec_not_a_new_one(sweep, write_spec, tmp_path):
    proc = sweep("--resume", "x", "--config", write_spec({}), "--storage-path", tmp_path)
    assert_one_line_error(proc, "--config: --resume goes on with the sweep's saved spec.yaml")
