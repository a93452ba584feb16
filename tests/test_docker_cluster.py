"""`ray up cluster/docker.yaml`: the config through Ray's validator and our provider's
checks, and on a real Docker engine (marker `docker`) a head and two workers from the
image, a sweep whose trials land on both workers, a killed worker started again by
`ray up` and taking trials, `ray down` after a node died with nothing left behind.
The engine test skips, saying why, without an engine or the image."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker
import pandas as pd
import pytest
import yaml

from raytune_ctr.cluster.docker_provider import LABEL, DockerNodeProvider
from raytune_ctr.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("RAYTUNE_CTR_TEST_IMAGE", "raytune-ctr:latest")
RAY = str(Path(sys.executable).with_name("ray"))

# Workers join on their own once the head answers: wait for them, then list.
NODES = """
import json, time, ray
ray.init(address="auto", log_to_driver=False)
alive = lambda: [n for n in ray.nodes() if n["Alive"]]
deadline = time.time() + 120
while len(alive()) < 3 and time.time() < deadline:
    time.sleep(1)
print("NODES=" + json.dumps([n["Resources"] for n in alive()]))
"""


def ray_cli(*args, timeout=600):
    env = os.environ | {"PYTHONPATH": str(ROOT)}  # the CLI loads our provider
    return subprocess.run([RAY, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def engine():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as err:
        pytest.skip(f"no Docker engine answers ({type(err).__name__}); "
                    "apt-get install docker.io and start dockerd")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {IMAGE} not built (see tests/test_images.py)")
    return client


def _cluster_yaml(tmp_path: Path, name: str, worker_cpus: float | None = None) -> Path:
    """cluster/docker.yaml under its own name, network and folders (and worker CPUs)."""
    cfg = yaml.safe_load((ROOT / "cluster" / "docker.yaml").read_text())
    cfg["cluster_name"] = name
    cfg["provider"] |= {"image": IMAGE, "network": f"{name}-net",
                        "data_dir": str(tmp_path / "data"), "state_dir": str(tmp_path / "state")}
    if worker_cpus is not None:
        cfg["available_node_types"]["worker"]["node_config"]["cpus"] = worker_cpus
    path = tmp_path / "docker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def cluster(engine, tmp_path):
    name = f"rtc-test-{os.getpid()}"
    path = _cluster_yaml(tmp_path, name)
    yield path, name, tmp_path / "data"
    ray_cli("down", "-y", path)  # also after a failure


@pytest.mark.docker
def test_up_sweep_across_nodes_down(cluster, engine):
    path, name, data = cluster
    up = ray_cli("up", "-y", "--no-config-cache", path)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]

    # Ray inside each container sees the container's limits, not the host's.
    script = data / "nodes.py"
    script.write_text(NODES)
    out = ray_cli("submit", "--no-config-cache", path, script)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    nodes = json.loads(out.stdout.split("NODES=", 1)[1].splitlines()[0])
    assert len(nodes) == 3
    workers = [n for n in nodes if n.get("CPU")]
    assert [n["CPU"] for n in workers] == [1.0, 1.0]  # cpus: 1.0 each; head CPU 0
    assert all(n["memory"] + n["object_store_memory"] <= 3 * 2**30 for n in workers)

    (data / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "data": {"dataset": "digits"},
        "train": {"model": "mlp", "hidden": [32], "epochs": 1, "optimizer": "adam",
                  "lr": 0.01, "lr_schedule": "none"},
        "search": {"method": "grid", "grid": {"seed": [0, 1]}}}))
    sweep = ray_cli("exec", "--no-config-cache", path,
                    "python experiments/sweep.py --config /data/tiny.yaml --address auto "
                    "--storage-path /data/results --name tiny")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    df = pd.read_parquet(data / "results" / "tiny" / "trials.parquet")
    assert (df["status"] == "COMPLETED").all()
    assert df["env_host"].nunique() == 2  # one trial on each worker container

    _own_code_reaches_every_node(path, data)
    _a_dead_worker_comes_back_with_ray_up(path, name, engine, data)

    # `ray down` after a node died: every container, running or exited, and the network.
    engine.containers.get(f"{name}-worker-0").kill()
    assert engine.containers.get(f"{name}-worker-0").status == "exited"
    down = ray_cli("down", "-y", path)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    assert engine.containers.list(all=True, filters={"label": f"{LABEL}={name}"}) == []
    assert engine.networks.list(names=[f"{name}-net"]) == []
    assert (data / "results" / "tiny" / "report.md").is_file()  # results outlive the cluster


def test_bad_node_config_names_key_and_value():
    cfg = yaml.safe_load((ROOT / "cluster" / "docker.yaml").read_text())
    cfg["available_node_types"]["worker"]["node_config"]["cpu"] = 2
    with pytest.raises(SpecError, match=r"available_node_types\.worker\.node_config\.cpu: "
                                        r"unknown key \(did you mean 'cpus'\?\), got 2$"):
        DockerNodeProvider.bootstrap_config(cfg)
    cfg["available_node_types"]["worker"]["node_config"].pop("cpu")
    cfg["available_node_types"]["worker"]["max_workers"] = 4
    with pytest.raises(SpecError, match="max_workers: must equal min_workers"):
        DockerNodeProvider.bootstrap_config(cfg)


def test_docker_yaml_passes_rays_validator_and_loads_our_provider():
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "docker.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    boot = _bootstrap_config(config, no_config_cache=True)
    provider = _get_node_provider(boot["provider"], boot["cluster_name"])
    assert isinstance(provider, DockerNodeProvider)
    (worker,) = boot["provider"]["_workers"]
    assert worker["count"] == 2 and worker["docker"]["nano_cpus"] == 10**9
    # External providers get no defaults: every command list is written out.
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                "file_mounts", "cluster_synced_files", "initialization_commands"):
        assert key in raw
    # Security defaults: nothing published, no Docker socket in any container.
    assert "docker.sock" not in (ROOT / "cluster" / "docker.yaml").read_text()


def test_cpuset_layout_passes_to_docker():
    """S5's second layout: one container pinned to cores, several Train workers in it."""
    from raytune_ctr.cluster.docker_provider import _docker_args

    args = _docker_args({"cpuset_cpus": "0-3", "cpus": 4, "mem_limit": "8g"}, "w")
    assert args == {"cpuset_cpus": "0-3", "nano_cpus": 4 * 10**9, "mem_limit": "8g"}
    with pytest.raises(SpecError, match=r"w\.cpus: input should be greater than 0, got 0$"):
        _docker_args({"cpus": 0}, "w")


def test_files_go_to_the_nodes_home_and_back(engine, tmp_path):
    """`ray rsync-up`/`submit` put a file under ~ as the node's shell reads it, owned by
    its user; `rsync-down` brings it back."""
    from raytune_ctr.cluster.docker_provider import DockerExecRunner

    src = tmp_path / "hello.py"
    src.write_text("print('hi')\n")
    node = engine.containers.run(IMAGE, ["sleep", "infinity"], name=f"rtc-home-{os.getpid()}",
                                 detach=True, init=True)
    try:
        runner = DockerExecRunner(engine, node.name)
        runner.run_rsync_up(str(src), "~/sub/hello.py")
        out = runner.run("stat -c %u ~/sub/hello.py && id -u && python ~/sub/hello.py",
                         with_output=True).decode().split()
        assert out[0] == out[1] and out[2] == "hi", out
        runner.run_rsync_down("~/sub/hello.py", str(tmp_path / "back.py"))
        assert (tmp_path / "back.py").read_text() == src.read_text()
    finally:
        node.remove(force=True)


def test_a_node_that_cannot_say_its_home_is_an_error_not_a_file_put_elsewhere(tmp_path):
    """An exec that fails (Docker answers with its exit code and message, it does not
    raise) must not become the path a file is put under."""
    from types import SimpleNamespace

    from raytune_ctr.cluster.docker_provider import DockerExecRunner

    put = []
    failed = SimpleNamespace(exit_code=126, output=b"OCI runtime exec failed: exec failed")
    node = SimpleNamespace(exec_run=lambda cmd: failed,
                           put_archive=lambda dest, data: put.append(dest) or True)
    client = SimpleNamespace(containers=SimpleNamespace(get=lambda name: node))
    src = tmp_path / "nodes.py"
    src.write_text("x = 1\n")
    with pytest.raises(RuntimeError, match=r"could not read the node user's home .*exit code 126"):
        DockerExecRunner(client, "head").run_rsync_up(str(src), "~/nodes.py")
    assert put == []


OWN_NETS = """
from torch import nn

def build(config, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2],
                                                 config["num_classes"]))
"""


def _own_code_reaches_every_node(path, data):
    """Tier 1 on a real cluster: the model's module exists only on the driver's disk
    (the head container's /tmp, not the shared data_dir), and `code:` ships it to the
    worker containers through the job's runtime_env."""
    (data / "own_src" / "headonly").mkdir(parents=True)
    (data / "own_src" / "headonly" / "__init__.py").write_text("")
    (data / "own_src" / "headonly" / "nets.py").write_text(OWN_NETS)
    (data / "own.yaml").write_text(yaml.safe_dump({
        "name": "own", "code": "/tmp/own", "data": {"dataset": "digits"},
        "train": {"model": "headonly.nets:build", "epochs": 1, "optimizer": "adam",
                  "lr": 0.01, "lr_schedule": "none"},
        "search": {"method": "grid", "grid": {"seed": [0, 1]}}}))
    copy = ray_cli("exec", "--no-config-cache", path,
                   "rm -rf /tmp/own && cp -r /data/own_src /tmp/own")
    assert copy.returncode == 0, copy.stdout[-3000:] + copy.stderr[-3000:]
    shutil.rmtree(data / "own_src")  # now only in the head container's /tmp
    sweep = ray_cli("exec", "--no-config-cache", path,
                    "python experiments/sweep.py --config /data/own.yaml --address auto "
                    "--storage-path /data/results --name own")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    df = pd.read_parquet(data / "results" / "own" / "trials.parquet")
    assert (df["status"] == "COMPLETED").all(), df[["status", "error"]]
    assert df["env_host"].nunique() == 2  # trained on both worker containers
    assert (df["model"] == "headonly.nets:build").all()
    assert (data / "results" / "own" / "report.html").is_file()


def _a_dead_worker_comes_back_with_ray_up(path, name, engine, data):
    """A worker container killed (a lost node): the next `ray up` starts it again, it
    rejoins the head, and a sweep's trials land on it."""
    engine.containers.get(f"{name}-worker-1").kill()
    assert engine.containers.get(f"{name}-worker-1").status == "exited"
    # --no-restart: the head's Ray goes on (a sweep running there would too)
    up = ray_cli("up", "-y", "--no-restart", "--no-config-cache", path)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert engine.containers.get(f"{name}-worker-1").status == "running"
    out = ray_cli("submit", "--no-config-cache", path, data / "nodes.py")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    nodes = json.loads(out.stdout.split("NODES=", 1)[1].splitlines()[0])
    assert len(nodes) == 3  # the head and both workers alive again
    sweep = ray_cli("exec", "--no-config-cache", path,
                    "python experiments/sweep.py --config /data/tiny.yaml --address auto "
                    "--storage-path /data/results --name again")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    df = pd.read_parquet(data / "results" / "again" / "trials.parquet")
    assert (df["status"] == "COMPLETED").all()
    assert df["env_host"].nunique() == 2  # the new worker-1 took a trial


LOSS = {  # 2-worker DDP trials first, so each worker node holds a pool when one is lost
    "name": "loss", "data": {"dataset": "digits"},
    "train": {"model": "mnist_cnn", "epochs": 40, "optimizer": "adadelta", "batch_size": 32},
    "resources": {"cpus_per_trial": 2},
    "search": {"method": "grid", "max_failures": 2,
               "points": [{"num_workers": 2, "seed": 1}, {"num_workers": 2, "seed": 2},
                          {"num_workers": 1, "seed": 3}, {"num_workers": 2, "seed": 4}]}}


@pytest.fixture
def cluster_2cpu(engine, tmp_path):
    """Worker containers of 2 CPUs each: one trial of 2 Train workers fits a node."""
    name = f"rtc-loss-{os.getpid()}"
    path = _cluster_yaml(tmp_path, name, worker_cpus=2.0)
    yield path, name, tmp_path / "data"
    ray_cli("down", "-y", path)


def _sweep_in_background(path: Path, command: str, log: Path) -> subprocess.Popen:
    """`ray exec` of a sweep on the head, its output to a file (a pipe nobody reads
    for minutes would fill and block it)."""
    with open(log, "w") as out:
        return subprocess.Popen([RAY, "exec", "--no-config-cache", str(path), command],
                                stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=os.environ | {"PYTHONPATH": str(ROOT)})


def _checkpoints(folder: Path) -> dict[str, int]:
    """trial folder -> its newest checkpoint's number, as the trials write them."""
    out = {}
    for t in folder.glob("trial_*"):
        numbers = [int(c.name.rsplit("_", 1)[1]) for c in t.glob("checkpoint_*")]
        if numbers:
            out[t.name] = max(numbers)
    return out


@pytest.mark.docker
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_lost_worker_node_costs_only_its_unfinished_epochs(cluster_2cpu, engine, how):
    """A worker container lost while it runs a 2-worker DDP trial on its pool: `docker
    kill`, or `docker stop -t 30` (SIGTERM, then SIGKILL 30 s later, as Spot gives
    notice). The lost trial restarts from its last epoch checkpoint on the node left,
    whose pool serves it; every trial ends COMPLETED, none lost, retries in the table."""
    path, name, data = cluster_2cpu
    up = ray_cli("up", "-y", "--no-config-cache", path)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    data.mkdir(exist_ok=True)
    (data / "loss.yaml").write_text(yaml.safe_dump(LOSS))
    log = data / "loss.log"
    sweep = _sweep_in_background(path, "python experiments/sweep.py --config /data/loss.yaml "
                                 "--address auto --storage-path /data/results --name loss", log)
    try:
        folder = data / "results" / "loss"
        deadline, ready = time.time() + 300, False
        # Both nodes busy with a DDP trial, a few epochs in.
        while not ready and time.time() < deadline and sweep.poll() is None:
            ckpts = _checkpoints(folder)
            ready = len(ckpts) >= 2 and min(ckpts.values()) >= 3
            time.sleep(0.5)
        assert ready and sweep.poll() is None, log.read_text()[-3000:]
        victim = engine.containers.get(f"{name}-worker-1")
        lost_at = time.time()
        if how == "kill":
            victim.kill()
        else:
            victim.stop(timeout=30)
        stopped_in = time.time() - lost_at
        sweep.wait(timeout=900)
        wall_after = time.time() - lost_at
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, log.read_text()[-4000:]
    df = pd.read_parquet(folder / "trials.parquet")
    last = df.sort_values("epoch").groupby("trial_index").tail(1)
    assert len(last) == 4 and (last["status"] == "COMPLETED").all(), last[["status", "error"]]
    assert (last["epoch"] == 40).all()
    lost = last[last["retries"] >= 1]
    assert len(lost) >= 1, "no trial was restarted"
    assert (lost["retries"] == 1).all()  # within search.max_failures (2)
    # It went on from its checkpoint, not from the start, on the node that was left.
    assert (lost["resumed_from_epoch"] >= 3).all(), lost[["resumed_from_epoch", "retries"]]
    assert (lost["env_host"] == f"{name}-worker-0").all()
    print(f"{how}: the container was gone {stopped_in:.1f} s after the {how}; {len(lost)} "
          f"trial(s) restarted from epochs {lost['resumed_from_epoch'].tolist()}; "
          f"{wall_after:.0f} s from the loss to the sweep's end")


HEAD_LOSS = {
    "name": "headloss", "data": {"dataset": "digits"},
    "train": {"model": "mnist_cnn", "epochs": 30, "optimizer": "adadelta", "batch_size": 32},
    "resources": {"cpus_per_trial": 2},
    "search": {"method": "optuna", "num_samples": 5, "objectives": {"test_acc": "max"},
               "space": {"lr": {"loguniform": [0.3, 2.0]}, "num_workers": {"choice": [1, 2]}}}}


@pytest.mark.docker
def test_a_lost_head_comes_back_with_ray_up_and_resume(cluster_2cpu, engine, journal):
    """The head container killed mid-sweep, the driver and the GCS with it. The results
    live on storage outside it (provider.data_dir). After `ray up` makes a new head,
    which the workers rejoin, `--resume` goes on: finished trials are kept, unfinished
    ones restart from their checkpoints, the Optuna study goes on to its num_samples."""
    path, name, data = cluster_2cpu
    up = ray_cli("up", "-y", "--no-config-cache", path)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    data.mkdir(exist_ok=True)
    (data / "headloss.yaml").write_text(yaml.safe_dump(HEAD_LOSS))
    folder = data / "results" / "headloss"
    log = data / "headloss.log"
    # Tune's record saved each second, so the one the resume reads is fresh.
    sweep = _sweep_in_background(path, "TUNE_GLOBAL_CHECKPOINT_S=1 python experiments/sweep.py "
                                 "--config /data/headloss.yaml --address auto "
                                 "--storage-path /data/results --name headloss", log)
    try:
        deadline, ready = time.time() + 600, False
        before = pd.DataFrame()
        while not ready and time.time() < deadline and sweep.poll() is None:
            # a trial finished (in the table), and another a few epochs in
            if (folder / "trials.parquet").is_file():
                before = pd.read_parquet(folder / "trials.parquet")
                running = {k: v for k, v in _checkpoints(folder).items()
                           if k.removeprefix("trial_") not in set(before["trial_id"])}
                ready = len(before) > 0 and len(running) >= 1 and min(running.values()) >= 3
            time.sleep(0.5)
        assert ready and sweep.poll() is None, log.read_text()[-3000:]
        time.sleep(3)
        engine.containers.get(f"{name}-head").kill()
        lost_at = time.time()
        sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    up = ray_cli("up", "-y", "--no-config-cache", path)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    # The workers rejoin the new head by themselves, within seconds.
    (data / "nodes.py").write_text(NODES)
    nodes = ray_cli("submit", "--no-config-cache", path, data / "nodes.py")
    assert nodes.returncode == 0 and len(json.loads(
        nodes.stdout.split("NODES=", 1)[1].splitlines()[0])) == 3, nodes.stdout[-3000:]
    resume = ray_cli("exec", "--no-config-cache", path,
                     "python experiments/sweep.py --address auto --storage-path /data/results "
                     "--resume headloss")
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    df = pd.read_parquet(folder / "trials.parquet")
    last = df.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")
    assert (last["status"] == "COMPLETED").all(), last[["status", "error"]]
    assert (last["epoch"] == 30).all()
    finished = set(before[before["epoch"] == 30]["trial_id"])
    assert finished and finished <= set(last.index)
    # kept as they were, not run again: the same epochs with the same times
    key = ["trial_id", "epoch", "train_time_s", "test_acc"]
    was = before[before["trial_id"].isin(finished)][key].sort_values(key[:2])
    now = df[df["trial_id"].isin(finished)][key].sort_values(key[:2])
    pd.testing.assert_frame_equal(was.reset_index(drop=True), now.reset_index(drop=True))
    assert (last["resumed_from_epoch"] >= 3).sum() >= 1  # unfinished ones went on
    print(f"head lost: {time.time() - lost_at:.0f} s from the loss to the resumed sweep's "
          f"end, ray up included; resumed from epochs "
          f"{last[last['resumed_from_epoch'] > 0]['resumed_from_epoch'].tolist()}")
    import optuna

    study = optuna.load_study(study_name="headloss",
                              storage=journal(folder))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 5
