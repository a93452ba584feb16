"""`ray up cluster/gke.yaml`: the config passes Ray's validator and loads our provider;
and, against an in-memory fake of the Kubernetes API, what a real API server cannot
show (tests/test_k8s.py has the rest, against a real kube-apiserver): garbage
collection of a deleted RayCluster's pods, and commands and file copies over pod
exec, which need a kubelet. FakeKube plays the API server and KubeRay's part; pod
exec runs the command in a local bash with HOME in a temp folder.
"""

import copy
import json
import os
import subprocess
from pathlib import Path

import click
import pytest
import yaml
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodList, V1PodStatus
from kubernetes.client.exceptions import ApiException
from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from raytune_ctr.cluster import gke, kuberay, schema

ROOT = Path(__file__).resolve().parent.parent
needs_crds = pytest.mark.skipif(schema.crd_dir() is None, reason=(
    f"KubeRay CRDs not found: set {schema.ENV} to a folder with ray.io_rayclusters.yaml "
    "and ray.io_rayjobs.yaml (KubeRay v1.7.0)"))


def gke_yaml() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "gke.yaml").read_text())


class FakeKube:
    """CoreV1Api + CustomObjectsApi in memory, for the calls the provider makes."""

    def __init__(self, home: Path, head_pending_polls: int = 0):
        self.crs, self.pods, self.calls = {}, {}, []
        self.home, self.head_pending_polls = home, head_pending_polls

    # CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", plural, body["metadata"]["name"]))
        name = body["metadata"]["name"]
        if (namespace, name) in self.crs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.crs[namespace, name] = copy.deepcopy(body)
        self._kuberay_reconciles(namespace, body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if (namespace, name) not in self.crs:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.crs[namespace, name])

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append(("patch", plural, name))
        meta = self.crs[namespace, name]["metadata"]
        meta.setdefault("annotations", {}).update(body["metadata"]["annotations"])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", plural, name))
        if self.crs.pop((namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")
        for pod in self.pods.values():  # garbage collection via ownerReferences
            if pod.metadata.labels["ray.io/cluster"] == name:
                pod.metadata.deletion_timestamp = "2026-01-01T00:00:00Z"

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=""):
        want = dict(kv.split("=") for kv in label_selector.split(",") if kv)
        if self.head_pending_polls:
            self.head_pending_polls -= 1
        else:
            for pod in self.pods.values():
                pod.status.phase = "Running"
        return V1PodList(items=[p for p in self.pods.values() if p.metadata.namespace == namespace
                                and all(p.metadata.labels.get(k) == v for k, v in want.items())])

    def read_namespaced_pod(self, name, namespace):
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        return self.pods[name]

    def patch_namespaced_pod(self, name, namespace, body):
        meta = self.pods[name].metadata
        meta.annotations = (meta.annotations or {}) | body["metadata"]["annotations"]

    def delete_namespaced_pod(self, name, namespace):
        self.calls.append(("delete", "pods", name))
        self.pods[name].metadata.deletion_timestamp = "2026-01-01T00:00:00Z"

    def connect_get_namespaced_pod_exec(self, *args, **kwargs):
        raise AssertionError("only ever called through kubernetes.stream.stream")

    def _kuberay_reconciles(self, namespace, body):
        name = body["metadata"]["name"]

        def pod(pod_name, node_type, group):
            self.pods[pod_name] = V1Pod(
                metadata=V1ObjectMeta(name=pod_name, namespace=namespace, labels={
                    "ray.io/cluster": name, "ray.io/node-type": node_type, "ray.io/group": group,
                    "ray.io/is-ray-node": "yes"}),
                status=V1PodStatus(phase="Pending", pod_ip=f"10.8.0.{len(self.pods) + 2}"))

        pod(f"{name}-head-abcde", "head", gke.HEAD_GROUP)
        for g in body["spec"]["workerGroupSpecs"]:
            for i in range(g["replicas"]):
                pod(f"{name}-{g['groupName']}-worker-{i}", "worker", g["groupName"])


class FakeExec:
    """kubernetes.stream.stream's WSClient, running the command in a local bash."""

    def __init__(self, kube: FakeKube, api_method, name, namespace, **kw):
        assert api_method == kube.connect_get_namespaced_pod_exec
        assert name in kube.pods and kw["binary"] and not kw["_preload_content"]
        assert not kw["tty"]
        self.kube, self.command, self.stdin, self.done = kube, kw["command"], b"", False
        self.out = {1: b"", 2: b"", 3: b""}

    def write_stdin(self, data):
        self.stdin += data

    def close_channel(self, channel):
        pass

    def is_open(self):
        return not self.done

    def update(self, timeout=0):
        env = dict(os.environ, HOME=str(self.kube.home))
        proc = subprocess.run(self.command, input=self.stdin, capture_output=True, env=env,
                              cwd=self.kube.home)
        status = {"metadata": {}, "status": "Success"} if proc.returncode == 0 else {
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: exit code {proc.returncode}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(proc.returncode)}]}}
        self.out = {1: proc.stdout, 2: proc.stderr, 3: json.dumps(status).encode()}
        self.done = True

    def peek_stdout(self):
        return bool(self.out[1])

    def read_stdout(self):
        data, self.out[1] = self.out[1], b""
        return data

    def peek_stderr(self):
        return bool(self.out[2])

    def read_stderr(self):
        data, self.out[2] = self.out[2], b""
        return data

    def read_channel(self, channel):
        return self.out[channel]

    def close(self):
        pass


@pytest.fixture
def kube(tmp_path):
    (tmp_path / "home").mkdir()
    return FakeKube(tmp_path / "home", head_pending_polls=1)


@pytest.fixture
def provider(kube):
    p = gke.KubeRayNodeProvider(gke_yaml()["provider"], "raytune-ctr")
    p.core = p.custom = kube
    p.stream = lambda *a, **kw: FakeExec(kube, *a, **kw)
    p.poll_s = 0
    return p


HEAD_TAGS = {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: gke.HEAD_GROUP,
             TAG_RAY_LAUNCH_CONFIG: "0f3c", "ray-node-name": "ray-raytune-ctr-head",
             TAG_RAY_NODE_STATUS: "uninitialized"}


def runner(provider, node_id):
    return provider.get_command_runner("", node_id, {}, "raytune-ctr", subprocess, True)


# --- the config -----------------------------------------------------------------------

def test_gke_yaml_passes_rays_validator_and_loads_our_provider():
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler._private.util import validate_config

    raw = gke_yaml()
    for key in ("file_mounts", "cluster_synced_files", "initialization_commands",
                "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in raw, f"{key}: external providers get no defaults; write it out"
    # What `ray up` does with the file: Ray's defaults and validator, then ours.
    config = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    validate_config(config)
    provider = _get_node_provider(config["provider"], config["cluster_name"], use_cache=False)
    assert isinstance(provider, gke.KubeRayNodeProvider)
    # ray up creates exactly the RayCluster that cluster/kuberay/raycluster.yaml holds.
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    assert kuberay.raycluster(provider.cfg) == manifest
    assert provider.cfg.storage.startswith("gs://")
    # Sizes are stated once (provider.groups); Ray's node types are derived from them.
    assert set(raw["available_node_types"]) == {gke.HEAD_GROUP}
    types = config["available_node_types"]
    assert set(types) == {gke.HEAD_GROUP} | {g.name for g in provider.cfg.groups}
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["cpu"] == {"node_config": {}, "resources": {"CPU": 4},
                            "min_workers": 0, "max_workers": 4}
    assert types["gpu"]["resources"] == {"CPU": 8, "GPU": 1}
    assert config["max_workers"] == 6


def test_cpu_quantities_become_rays_cpus():
    assert (gke._cpus("4"), gke._cpus("500m"), gke._cpus("2.5")) == (4, 0.5, 2.5)


@pytest.mark.parametrize("key,value,match", [
    ("imag", "x", "provider.imag: unknown key"),
    ("groups", [{"name": "cpu", "cpus": 4}], r"provider.groups\[0\].min_replicas: required key"),
    ("head_cpu", 2, "provider.head_cpu: input should be a valid string, got 2"),
    ("groups", [dict(name="cpu", min_replicas=0, max_replicas=1, replicas=3, cpu="4",
                     memory="1Gi")], r"provider.groups\[0\]: needs min_replicas <= replicas"),
])
def test_provider_section_typos_are_errors(key, value, match):
    with pytest.raises(ValueError, match=match):
        gke.KubeRayNodeProvider(gke_yaml()["provider"] | {key: value}, "raytune-ctr")


# --- the provider against the fake API ---------------------------------------------------
# The provider's API calls run against a real kube-apiserver in tests/test_k8s.py. What
# stays here is what that server cannot do: it has no garbage collector, no kubelet
# (so no exec output) and no operator making worker pods.

# Garbage collection: deleting the RayCluster takes its pods with it (the
# controller-manager's garbage collector, following owner references).
def test_terminating_the_head_deletes_the_raycluster(provider, kube):
    provider.create_node({}, HEAD_TAGS, 1)
    provider.terminate_node("raytune-ctr-cpu-worker-0")  # a worker: only its pod
    assert ("raytune", "raytune-ctr") in kube.crs
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER}) == []
    provider.terminate_nodes(provider.non_terminated_nodes({}))
    assert kube.crs == {} and ("delete", "rayclusters", "raytune-ctr") in kube.calls
    assert provider.non_terminated_nodes({}) == []
    assert provider.is_terminated("raytune-ctr-head-abcde")
    provider.terminate_node("raytune-ctr-head-abcde")  # ray down's next round: already gone


# --- commands over pod exec -----------------------------------------------------------
# Exec needs a kubelet, which the real server has not (it answers 400; test_k8s.py
# checks that is one line): these run the command in a local bash instead.

def test_exec_runner_exit_codes_output_and_env(provider, kube):
    provider.create_node({}, HEAD_TAGS, 1)
    r = runner(provider, "raytune-ctr-head-abcde")
    assert r.run("echo hi; echo warn >&2", with_output=True) == b"hi\n"
    assert r.run("uptime", timeout=10, run_env="host") == ""  # Ray's probe, procps or not
    assert r.run('echo "$A $B"', with_output=True,
                 environment_variables={"A": "x y", "B": {"CPU": 0}}) == b'"x y" {"CPU":0}\n'
    with pytest.raises(ProcessRunnerError) as err:
        r.run("exit 3")
    assert err.value.code == 3 and err.value.msg_type == "ssh_command_failed"
    with pytest.raises(click.ClickException, match="exit code 7"):
        r.run("exit 7", exit_on_fail=True)
    with pytest.raises(click.ClickException, match="kubectl -n raytune port-forward"):
        r.run("ray dashboard", port_forward=[(8265, 8265)])
    with pytest.raises(click.ClickException, match="kubectl -n raytune exec -it"):
        r.run("$SHELL")  # ray attach


def test_exec_api_errors_are_retryable_runner_errors(provider, kube):
    provider.create_node({}, HEAD_TAGS, 1)
    r = runner(provider, "raytune-ctr-head-abcde")

    def refused(*a, **kw):
        raise ApiException(status=400, reason="container not found")
    provider.stream = refused
    with pytest.raises(ProcessRunnerError, match="container not found"):
        r.run("uptime")


def test_files_go_up_and_down_as_tar_over_exec(provider, kube, tmp_path):
    provider.create_node({}, HEAD_TAGS, 1)
    r = runner(provider, "raytune-ctr-head-abcde")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    (tmp_path / "one.yaml").write_text("x: 1\n")
    r.run_rsync_up(str(src) + "/", "~/code/", {"rsync_exclude": ["**/.git", "**/.git/**"]})
    r.run_rsync_up(str(tmp_path / "one.yaml"), "~/ray_bootstrap_config.yaml")
    home = kube.home
    assert (home / "code" / "sub" / "a.txt").read_text() == "a"
    assert not (home / "code" / ".git").exists()
    assert (home / "ray_bootstrap_config.yaml").read_text() == "x: 1\n"
    down = tmp_path / "down"
    r.run_rsync_down("~/code/", str(down))
    r.run_rsync_down("~/ray_bootstrap_config.yaml", str(down / "cfg.yaml"))
    assert (down / "sub" / "a.txt").read_text() == "a"
    assert (down / "cfg.yaml").read_text() == "x: 1\n"
    with pytest.raises(click.ClickException, match="exit code"):
        r.run_rsync_down("~/missing.txt", str(down / "m.txt"))


def test_ray_up_head_setup_runs_through_provider_and_runner(provider, kube):
    """Ray's own `ray up` head path (get_or_create_head_node) against the fake API."""
    from ray.autoscaler._private import commands
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(gke_yaml())
    # The local "pod" has no Ray head, and importing ray costs seconds here.
    config["head_setup_commands"] = ["echo set up > ~/setup"]
    config["head_start_ray_commands"] = ["echo $RAY_NODE_TYPE_NAME > ~/started"]
    commands.get_or_create_head_node(config, "cluster/gke.yaml", no_restart=False,
                                     restart_only=False, yes=True, override_cluster_name=None,
                                     _provider=provider)
    head = "raytune-ctr-head-abcde"
    assert provider.node_tags(head)[TAG_RAY_NODE_STATUS] == "up-to-date"
    assert json.loads((kube.home / "ray_bootstrap_config.yaml").read_text())[
        "cluster_name"] == "raytune-ctr"
    assert (kube.home / "setup").read_text() == "set up\n"
    assert (kube.home / "started").read_text() == "headgroup\n"  # Ray's env reached the pod
    assert len(kube.crs) == 1
