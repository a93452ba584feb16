"""Tiers 2 and 3 of the user's own code: a training function that calls
raytune_ctr.report, and an unmodified script whose output is read by regexes. Bad
input is one line naming the key before any compute; a script that fails, or whose
regex never matches, is a FAILED trial saying why; the examples run end to end on
real Ray, with 1 and 2 workers, natively and (marker docker) in the image."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from raytune_ctr import checks, cli, output, reporter, script
from raytune_ctr import spec as spec_lib
from raytune_ctr.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "experiments" / "own_code" / "mnist_script"
ACC = r"Accuracy: (?P<correct>\d+)/(?P<total>\d+)"
LOSS = r"Average loss: (?P<value>[0-9.]+)"
SAMPLE = "Test set: Average loss: 0.0480, Accuracy: 9837/10000 (98%)"


def script_spec(**changes) -> dict:
    base = {"name": "s", "code": str(MNIST),
            "script": {"command": "python main.py --batch-size {batch_size} --lr {lr} "
                                  "--epochs {epochs}",
                       "metrics": {"test_acc": ACC, "test_loss": LOSS}, "sample": SAMPLE},
            "search": {"grid": {"batch_size": [32, 64]}}}
    for key, v in changes.items():
        section, _, field = key.partition(".")
        if field:
            base[section] = dict(base.get(section) or {}) | {field: v}
        else:
            base[section] = v
    return base


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_reader_turns_the_examples_lines_into_epochs():
    clock = Clock()
    reader = output.Reader(output.compile_metrics({"test_acc": ACC, "test_loss": LOSS}), clock=clock)
    clock.t = 4.0  # start-up: imports, data
    assert reader.feed("Train Epoch: 1 [0/1437 (0%)]\tLoss: 2.3") is None
    clock.t = 6.5
    assert reader.feed("") is None
    epoch = reader.feed(SAMPLE)
    # Exact counts, not the rounded 98%; both metrics off the one line.
    assert epoch == {"epoch": 1, "epoch_time_s": 2.5, "test_acc": 98.37, "test_loss": 0.048,
                     "setup_time_s": 4.0}
    clock.t = 8.0
    assert reader.feed("Test set: Average loss: 0.0400, Accuracy: 9900/10000 (99%)") == {
        "epoch": 2, "epoch_time_s": 1.5, "test_acc": 99.0, "test_loss": 0.04}
    assert reader.train_s == 4.0 and reader.epochs == 2


def test_a_reader_takes_tagged_lines_and_counts_on_from_a_checkpoint():
    clock = Clock()
    reader = output.Reader({}, first_epoch=3, clock=clock)
    clock.t = 5.0
    assert reader.feed(reporter.TAG + json.dumps({"event": "start"})) is None
    clock.t = 7.0
    got = reader.feed("[rank0]: " + reporter.TAG + json.dumps({"test_acc": 91.0, "test_loss": None}))
    assert got["epoch"] == 4 and got["epoch_time_s"] == 2.0 and got["setup_time_s"] == 5.0
    assert got["test_acc"] == 91.0 and got["test_loss"] != got["test_loss"]  # NaN, not 0
    assert reader.feed(reporter.TAG + "not json") is None
    # Stamped when the line arrived, not when it was read; an epoch of NaN is counted.
    got = reader.feed(reporter.TAG + json.dumps({"epoch": None, "test_acc": 92.0}), at=7.5)
    assert got["epoch"] == 5 and got["epoch_time_s"] == 0.5


def test_report_prints_one_tagged_line_on_rank_0_only(capsys, monkeypatch, tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "w.pt").write_bytes(b"x")
    monkeypatch.setenv(reporter.OUT_ENV, str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    reporter.report(epoch=1, test_acc=90.5, checkpoint=folder)
    line = capsys.readouterr().out
    obj = reporter.tagged(line)
    assert obj["epoch"] == 1 and obj["test_acc"] == 90.5
    # A copy the function may overwrite at once.
    assert Path(obj["checkpoint"], "w.pt").read_bytes() == b"x" and obj["checkpoint"] != str(folder)
    monkeypatch.setenv("RANK", "1")
    reporter.report(epoch=1, test_acc=1.0)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TypeError, match="test_acc must be a number"):
        reporter.report(test_acc="high")


@pytest.mark.parametrize("changes,fragments", [
    ({"script.command": "python main.py --batch-size {batchsize}"},
     ["script.command", "{batchsize} is not a train or resources field", "{batch_size}"]),
    ({"script.command": "python main.py --lr {lr"}, ["script.command", "not a template"]),
    ({"script.metrics": {"test_acc": r"Accuracy: (\d+)"}},
     ["script.metrics.test_acc", "(?P<value>", "has none"]),
    ({"script.metrics": {"test_acc": r"Accuracy: (?P<value>[0-9.+"}},
     ["script.metrics.test_acc", "not a regular expression"]),
    ({"script.metrics": {"test_acc": r"Acc: (?P<value>[0-9.]+)"}},
     ["script.metrics.test_acc", "matches none of script.sample"]),
    ({"script.metrics": {"test_loss": LOSS}},
     ["search.objectives.test_acc", "no script.metrics regex reads it"]),
    ({"script.metrics": {"train_time_s": LOSS}}, ["script.metrics.train_time_s", "measured by"]),
    ({"search": {"grid": {"batch_size": [32], "optimizer": ["sgd", "adam"]}}},
     ["search.grid.optimizer", "the script never sees it", "{optimizer}"]),
    ({"search": {"grid": {"num_workers": [1, 2]}},
      "script.command": "./run.sh {batch_size} {epochs}"},
     ["script.command", "torchrun", "python SCRIPT"]),
    ({"script.command": "python main.py --batch-size {batch_size}"},
     ["script.command", "needs {epochs}"]),
    ({"script.command": "python main.py --batch-size {batch_size} --lr {lr:d} --epochs {epochs}"},
     ["script.command", "cannot be filled", "ValueError"]),
    ({"script.metrics": {"accuracy": ACC}}, ["script.metrics.accuracy", "unknown metric"]),
    ({"code": None}, ["script.folder", "is needed"]),
    ({"script.folder": "/no/such/folder"}, ["script.folder", "is not a folder"]),
    ({"train": {"function": "train_fn.digits:run"}}, ["train.function", "not both"]),
])
def test_bad_script_input_is_one_line_naming_the_key(changes, fragments):
    with pytest.raises(SpecError) as err:
        checks.from_dict(script_spec(**changes))
    msg = str(err.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


@pytest.mark.parametrize("mapping,fragments", [
    ({"train": {"function": "train_fn.nowhere:run"}, "code": str(ROOT / "experiments/own_code")},
     ["train.function", "cannot import train_fn.nowhere"]),
    ({"train": {"function": "train_fn.digits:walk"}, "code": str(ROOT / "experiments/own_code")},
     ["train.function", "has no walk"]),
    ({"train": {"function": "train_fn/digits.py"}}, ["train.function", "module:function"]),
    ({"resources": {"container": True}}, ["resources.container", "tiers 2 and 3"]),
])
def test_bad_function_input_is_one_line_naming_the_key(mapping, fragments):
    with pytest.raises(SpecError) as err:
        checks.from_dict({"name": "f"} | mapping)
    for f in fragments:
        assert f in str(err.value), str(err.value)


def test_dry_run_prints_each_command_and_what_the_regexes_read(capsys, tmp_path):
    code = cli.sweep_main(["--config", "experiments/configs/own_script.yaml", "--dry-run",
                           "--storage-path", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "main.py --batch-size 32 --lr 1.0 --epochs 3" in out
    assert "torch.distributed.run --standalone --nproc_per_node 2 --local-ranks-filter 0 main.py" in out
    assert "script.metrics.test_acc reads 98.37 from the sample" in out
    assert not any(tmp_path.iterdir())  # nothing written, nothing run


def test_dry_run_refuses_a_bad_spec_in_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    mapping = script_spec(**{"script.metrics": {"test_acc": r"Acc: (?P<value>[0-9.]+)"}})
    bad.write_text(json.dumps(mapping))
    assert cli.sweep_main(["--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: script.metrics.test_acc") and "\n" not in err


def test_ending_a_trial_ends_its_whole_process_tree(tmp_path):
    pids = tmp_path / "pids"
    # setsid: a rank of its own session, as torchrun starts them (not in our group).
    proc = subprocess.Popen(["bash", "-c", f"setsid sleep 300 & echo $! > {pids}; sleep 300"],
                            stdout=subprocess.PIPE, start_new_session=True)
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        time.sleep(0.05)
    time.sleep(0.2)  # setsid has exec'd sleep
    child = int(pids.read_text())
    script._end(proc, None)
    assert proc.returncode is not None
    assert _gone(child)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its new parent has yet to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _sweep(tmp_path, config, *extra):
    env = os.environ | {"RAY_TMPDIR": os.environ.get("RAY_TMPDIR", str(tmp_path / "ray"))}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "experiments/sweep.py", "--config", str(config),
                           "--storage-path", str(tmp_path / "out"), "--name", "run", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    return proc, tmp_path / "out" / "run"


def _trials(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "trials.parquet")
    return df.groupby("trial_index").last()


@pytest.mark.ray
def test_the_tier3_example_runs_unchanged_with_1_and_2_workers(tmp_path):
    """experiments/configs/own_script.yaml, smoke: its first two configurations, 1
    and 2 workers (torchrun), 1 epoch."""
    proc, run = _sweep(tmp_path, "experiments/configs/own_script.yaml", "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    last = _trials(run)
    assert (last["status"] == "COMPLETED").all() and sorted(last["num_workers"]) == [1, 2]
    # 360 test images: the accuracy is a count over 360, not a rounded percentage.
    for acc in last["test_acc"]:
        assert abs(acc * 3.6 - round(acc * 3.6)) < 1e-6 and 10 < acc <= 100
    assert last["test_loss"].gt(0).all() and last["train_time_s"].gt(0).all()
    assert last["setup_time_s"].gt(0).all()
    assert "samples_per_s" not in last or last["samples_per_s"].isna().all()
    md = (run / "report.md").read_text()
    assert "trained by the user's script" in md and "not measured" in md


@pytest.mark.ray
def test_a_failing_script_and_a_silent_regex_are_failed_trials_saying_why(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text(textwrap.dedent("""
        import sys
        mode, epochs = sys.argv[1], int(sys.argv[2])
        for i in range(epochs):
            print(f"epoch {i} done, acc {90 + i}")
        if mode == "crash":
            print("CUDA out of memory (pretend)", file=sys.stderr)
            sys.exit(3)
    """))
    spec = {"name": "bad", "code": str(tmp_path / "code"),
            "script": {"command": "python train.py {model} {epochs}",
                       "metrics": {"test_acc": r"accuracy (?P<value>\d+)"}},
            "train": {"epochs": 3},
            "search": {"grid": {"model": ["crash", "quiet"]}, "max_failures": 0}}
    config = tmp_path / "bad.yaml"
    config.write_text(json.dumps(spec))
    proc, run = _sweep(tmp_path, config)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # every trial failed
    last = _trials(run).set_index("model")
    assert (last["status"] == "FAILED").all()
    crash, quiet = last.loc["crash", "error"], last.loc["quiet", "error"]
    assert "script.command exited with 3" in crash and "CUDA out of memory (pretend)" in crash
    assert re.search(r"no line matched script.metrics.test_acc: read 3 lines; the last: "
                     r"'epoch 2 done, acc 92'", quiet), quiet
    for e in (crash, quiet):
        assert "\n" not in e


@pytest.mark.ray
def test_the_tier2_example_with_ddp_and_asha_then_a_restart_resumes(tmp_path):
    proc, run = _sweep(tmp_path, "experiments/configs/own_function.yaml", "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    last = _trials(run)
    assert (last["status"] == "COMPLETED").all() and sorted(last["num_workers"]) == [1, 2]
    assert last["test_acc"].gt(20).all()
    # The example counts its FLOPs (raytune_ctr.count_flops) and reports its samples.
    assert last["samples_per_s"].gt(0).all() and last["tflops"].gt(0).all()
    assert (last["flops_per_sample"] == last["flops_per_sample"].iloc[0]).all()

    # A function that dies once after epoch 2 restarts from its epoch-2 checkpoint. Tune
    # moves the restarted trial to the end of its list; the tables keep its number.
    code = tmp_path / "code"
    shutil.copytree(ROOT / "experiments" / "own_code" / "train_fn", code / "train_fn")
    (code / "flaky.py").write_text(textwrap.dedent(f"""
        import os, tempfile
        from pathlib import Path
        from train_fn.digits import run as digits_run
        import raytune_ctr

        def run(config):
            marker = Path({str(tmp_path / "died")!r})
            real = raytune_ctr.report
            def report(**kw):
                real(**kw)
                if (kw["epoch"] == 2 and config["lr"] == 0.05 and not marker.exists()
                        and os.environ.get("RANK", "0") == "0"):
                    marker.write_text(str(raytune_ctr.checkpoint()))
                    os._exit(9)
            raytune_ctr.report = report  # digits.py looks it up at each call
            try:
                digits_run(config)
            finally:
                raytune_ctr.report = real
    """))
    spec = {"name": "flaky", "code": str(code),
            "train": {"function": "flaky:run", "hidden": [32], "epochs": 4, "lr": 0.05},
            "resources": {"cpus_per_trial": 2, "num_workers": 2},
            "search": {"grid": {"lr": [0.05, 0.1]}, "max_failures": 1}}
    config = tmp_path / "flaky.yaml"
    config.write_text(json.dumps(spec))
    proc, run = _sweep(tmp_path / "again", config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_parquet(run / "trials.parquet")
    assert (df.groupby("trial_index")["trial_id"].nunique() == 1).all(), df[["trial_index", "trial_id"]]
    rows = df.groupby("trial_index").last()
    assert rows["lr"].tolist() == [0.05, 0.1] and (rows["status"] == "COMPLETED").all()
    assert rows["epoch"].tolist() == [4, 4] and rows["retries"].tolist() == [1, 0]
    assert rows.loc[0, "resumed_from_epoch"] == 2
    assert sorted(df["epoch"].dropna().astype(int).unique()) == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def image():
    try:
        found = subprocess.run(["docker", "image", "inspect", "raytune-ctr:latest"],
                               capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pytest.skip("no docker client or engine (apt-get install docker.io; dockerd &)")
    if found.returncode != 0:
        pytest.skip("image raytune-ctr:latest not built (.ci/docker.sh)")


@pytest.mark.ray
@pytest.mark.docker
def test_the_tier3_example_runs_in_the_image_with_1_and_2_workers(tmp_path, image):
    """resources.container: the same script, unchanged, in the project's image; the
    containers are gone afterwards."""
    mapping = spec_lib.read_yaml(ROOT / "experiments" / "configs" / "own_script.yaml")
    mapping["code"] = str(MNIST)
    mapping["train"]["epochs"] = 1
    mapping["search"]["grid"] = {"batch_size": [32], "num_workers": [1, 2], "container": [True]}
    mapping["report"]["baseline"] = {}
    config = tmp_path / "in_image.yaml"
    config.write_text(json.dumps(mapping))
    proc, run = _sweep(tmp_path, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = _trials(run)
    assert (last["status"] == "COMPLETED").all() and sorted(last["num_workers"]) == [1, 2]
    assert (last["env_image"] == "raytune-ctr:latest").all() and last["test_acc"].gt(10).all()
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=raytune-ctr.sweep"],
                          capture_output=True, text=True, timeout=60).stdout.split()
    assert left == []


def test_a_function_whose_report_lacks_an_objective_fails_its_trial_in_one_line():
    """A training function's metrics are known only once it reports: the first report
    without an objective ends the trial, saying what it did report."""
    spec = checks.from_dict({"name": "f", "code": str(ROOT / "experiments" / "own_code"),
                             "train": {"function": "train_fn.digits:run"}})
    train, res = spec.resolve({})
    reader = output.Reader({})
    epoch = reader.feed(reporter.TAG + json.dumps({"epoch": 1, "test_loss": 0.3}))
    with pytest.raises(script.UserProcessError) as err:
        script._report(spec, {"train": train, "resources": res, "hour_usd": None}, {}, epoch,
                       {"epoch": 0, "train_time_s": 0.0, "wall_time_s": 0.0}, reader,
                       "train.function")
    assert str(err.value) == ("train.function: epoch 1 reported no test_acc (it reported "
                              "epoch, epoch_time_s, test_loss)")


def test_a_functions_samples_and_flops_give_throughput_and_mfu():
    res = spec_lib.ResourceSpec(num_workers=2, peak_tflops=0.5)
    epoch = {"epoch": 1, "epoch_time_s": 2.0, "flops_per_sample": 1e9}
    assert script._throughput(1000, epoch, res) == {
        "samples_per_s": 500.0, "tflops": 0.5, "mfu": 0.5}
    assert script._throughput(None, epoch, res) == {}  # not reported: not measured, not 0


def test_set_up_lasts_until_the_last_start_mark_before_the_first_epoch():
    clock = Clock()
    reader = output.Reader({}, clock=clock)
    for t in (3.0, 5.0):  # the function is called, then it counts its FLOPs
        clock.t = t
        reader.feed(reporter.TAG + json.dumps({"event": "start"}))
    clock.t = 6.0
    got = reader.feed(reporter.TAG + json.dumps({"test_acc": 50.0}))
    assert got["setup_time_s"] == 5.0 and got["epoch_time_s"] == 1.0
    clock.t = 7.0
    reader.feed(reporter.TAG + json.dumps({"event": "start"}))  # after an epoch: no effect
    clock.t = 8.0
    assert reader.feed(reporter.TAG + json.dumps({"test_acc": 60.0}))["epoch_time_s"] == 2.0
