"""The GKE/KubeRay path against a real Kubernetes API server (marker `k8s`):
kube-apiserver v1.20.2 with Debian's etcd on loopback (../shared/k8s/start.sh), the
KubeRay v1.7.0 CRDs installed (their 1.20 copies), RBAC on.

What the server checks here and a fake would not: the CRD schema (the server's own
validation), Pod specs, label selectors, patches, 404s, RBAC, credentials. What it
cannot do: there is no kubelet, scheduler, controller-manager or KubeRay operator, so
Pods are stored and never run, nothing is garbage-collected, and exec answers 400.
A small stand-in in this file plays the operator's part (it creates the head Pod of a
new RayCluster and marks it running); it is named as one.

Skips, saying why, only where the server cannot start (no etcd, no kube-apiserver).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from raytune_ctr.cluster import gke, kuberay

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parent.parent
K8S = Path(os.environ.get("RAYTUNE_CTR_K8S", ROOT.parent / "shared" / "k8s"))
CRDS = Path(os.environ.get("RAYTUNE_CTR_KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay"))
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_port() -> int:
    """A port for the API server whose etcd ports (it + 17000, + 17001) are free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 30000)
        try:
            for p in (port, port + 17000, port + 17001):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port for the API server")


class Server:
    def __init__(self, work: Path, port: int):
        self.work, self.port, self.kubeconfig = work, port, work / "kubeconfig"
        self.token = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]["token"]

    def kubectl(self, *args, check=True, stdin=None):
        proc = subprocess.run(["kubectl", *map(str, args)], capture_output=True, text=True,
                              input=stdin, timeout=120,
                              env=os.environ | {"KUBECONFIG": str(self.kubeconfig)})
        if check and proc.returncode:
            raise AssertionError(f"kubectl {' '.join(map(str, args))}: {proc.stderr}")
        return proc

    def clients(self):
        import kubernetes

        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(self.kubeconfig), client_configuration=cfg)
        api = kubernetes.client.ApiClient(cfg)
        return kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)

    def stop(self):
        for pid in (self.work / "pids").read_text().split():
            try:
                os.kill(int(pid), 15)
            except ProcessLookupError:
                pass


def start(tmp_path_factory, crds: bool) -> Server:
    start_sh = K8S / "start.sh"
    for need, why in ((start_sh.is_file(), f"no {start_sh} (../shared/k8s)"),
                      (shutil.which("etcd"), "no etcd (apt-get install etcd-server)"),
                      (shutil.which("kubectl"), "no kubectl")):
        if not need:
            pytest.skip(f"the real Kubernetes API server cannot start here: {why}")
    work, port = tmp_path_factory.mktemp("k8s"), server_port()
    proc = subprocess.run(["bash", str(start_sh), str(work), str(port)], capture_output=True,
                          text=True, timeout=180)
    if proc.returncode:
        pytest.skip(f"the real Kubernetes API server did not start: {proc.stderr.strip()[-300:]}")
    server = Server(work, port)
    if crds:
        subprocess.run([sys.executable, str(K8S / "crds-for-1.20.py"), str(work / "crds"),
                        *map(str, sorted(CRDS.glob("ray.io_*.yaml")))], check=True,
                       capture_output=True, timeout=120)
        # create, not apply: apply's last-applied annotation is over 256 KiB for these
        server.kubectl("create", "-f", work / "crds")
        for _ in range(60):
            if server.kubectl("wait", "--for=condition=Established", "crd", "--all",
                              "--timeout=10s", check=False).returncode == 0:
                break
            time.sleep(0.5)
        # Established is not yet published: kubectl validates against the server's
        # OpenAPI, which takes the CRDs' schemas a moment later (a busy machine: seconds).
        for _ in range(120):
            if server.kubectl("explain", "rayclusters.spec.headGroupSpec",
                              check=False).returncode == 0:
                break
            time.sleep(0.5)
        server.kubectl("create", "namespace", "raytune")
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = start(tmp_path_factory, crds=True)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def bare_server(tmp_path_factory):
    """A second server without the KubeRay CRDs, as a cluster without the operator is."""
    s = start(tmp_path_factory, crds=False)
    yield s
    s.stop()


@pytest.fixture
def namespace(server):
    name = f"t-{uuid.uuid4().hex[:8]}"
    server.kubectl("create", "namespace", name)
    return name  # left Terminating-free: without a controller-manager it would never go


def contains(sent, stored, path="") -> list[str]:
    """Where `stored` lacks or changed what `sent` had (the server only adds defaults)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r}"]
        return [p for k, v in sent.items()
                for p in (contains(v, stored[k], f"{path}.{k}") if k in stored
                          else [f"{path}.{k}: pruned"])]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(sent) != len(stored):
            return [f"{path}: {stored!r}"]
        return [p for i, (a, b) in enumerate(zip(sent, stored, strict=True))
                for p in contains(a, b, f"{path}[{i}]")]
    return [] if sent == stored else [f"{path}: {sent!r} became {stored!r}"]


# --- the manifests ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_the_manifests_pass_the_server_and_are_stored_whole(server, name):
    path = ROOT / "cluster" / "kuberay" / name
    assert "created (server dry run)" in server.kubectl("apply", "--dry-run=server", "-f",
                                                        path).stdout
    server.kubectl("create", "-f", path)
    sent = yaml.safe_load(path.read_text())
    kind = sent["kind"].lower()
    stored = json.loads(server.kubectl("get", kind, sent["metadata"]["name"], "-n",
                                       sent["metadata"]["namespace"], "-o", "json").stdout)
    assert contains(sent, stored) == []  # every field is in the schema: none pruned
    server.kubectl("delete", kind, sent["metadata"]["name"], "-n", sent["metadata"]["namespace"])


def test_wrong_manifests_are_refused(server, tmp_path):
    good = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["workerGroupSpecs"][0]["replicas"] = "four"
    (tmp_path / "type.yaml").write_text(yaml.safe_dump(wrong_type))
    # The server's own schema check, with kubectl's client-side one off.
    proc = server.kubectl("apply", "--dry-run=server", "--validate=false", "-f",
                          tmp_path / "type.yaml", check=False)
    assert proc.returncode and "spec.workerGroupSpecs.replicas" in proc.stderr, proc.stderr
    assert "must be of type integer" in proc.stderr or "Invalid value" in proc.stderr
    unknown = copy.deepcopy(good)
    unknown["spec"]["headGroupSpec"]["bogusField"] = 1
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(unknown))
    proc = server.kubectl("apply", "--dry-run=server", "-f", tmp_path / "unknown.yaml",
                          check=False)
    assert proc.returncode and 'unknown field "bogusField"' in proc.stderr, proc.stderr


VARIANTS = {
    "default": kuberay.ClusterConfig(),
    "gpu only, on demand, other sizes, another bucket": kuberay.ClusterConfig(
        name="gpu-only", head_cpu="4", head_memory="16Gi", storage="gs://other-bucket/runs",
        groups=(kuberay.WorkerGroup("a100", 1, 8, 2, cpu="12", memory="85Gi", gpus=1,
                                    accelerator="nvidia-tesla-a100", spot=False),)),
    "cpu only, many groups": kuberay.ClusterConfig(
        name="cpu-many", groups=(kuberay.WorkerGroup("small", 0, 10, 3, cpu="2", memory="4Gi"),
                                 kuberay.WorkerGroup("big", 0, 2, 0, cpu="32", memory="128Gi",
                                                     spot=True))),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_raycluster_and_rayjob_is_accepted_whole(server, namespace, variant):
    cfg = kuberay.ClusterConfig(**(vars(VARIANTS[variant]) | {"namespace": namespace}))
    _, custom = server.clients()
    for plural, body in (("rayclusters", kuberay.raycluster(cfg)),
                         ("rayjobs", kuberay.rayjob(cfg))):
        stored = custom.create_namespaced_custom_object("ray.io", "v1", namespace, plural, body)
        assert contains(body, stored) == [], plural


# --- Pods from the templates, the way KubeRay makes them -----------------------------------

def pod_from_template(cluster: dict, template: dict, group: str, head: bool) -> dict:
    """A Pod as KubeRay v1.7 builds it from a group's template: its labels, an owner
    reference to the RayCluster, and `ray start` as the container's command."""
    name = cluster["metadata"]["name"]
    pod = copy.deepcopy(template)
    kind = "head" if head else "worker"
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    meta = pod.setdefault("metadata", {})
    meta["name"] = f"{name}-{kind if head else group + '-worker'}-{uuid.uuid4().hex[:5]}"
    meta["labels"] = meta.get("labels", {}) | {
        "ray.io/cluster": name, "ray.io/node-type": kind, "ray.io/group": group,
        "ray.io/is-ray-node": "yes", "app.kubernetes.io/created-by": "kuberay-operator",
        "app.kubernetes.io/name": "kuberay"}
    meta["ownerReferences"] = [{"apiVersion": "ray.io/v1", "kind": "RayCluster", "name": name,
                                "uid": cluster["metadata"]["uid"], "controller": True,
                                "blockOwnerDeletion": True}]
    c = pod["spec"]["containers"][0]
    start = "ray start --head --block --dashboard-host=0.0.0.0 --num-cpus=0" if head else \
        f"ray start --block --address={name}-head-svc:6379"
    c["command"], c["args"] = ["/bin/bash", "-lc", "--"], [f"ulimit -n 65536; {start}"]
    c["env"] = c.get("env", []) + [{"name": "RAY_CLUSTER_NAME", "value": name},
                                   {"name": "RAY_CLOUD_INSTANCE_ID", "valueFrom": {
                                       "fieldRef": {"fieldPath": "metadata.name"}}}]
    return pod


def test_the_templates_make_real_pods(server, namespace):
    core, custom = server.clients()
    cfg = kuberay.ClusterConfig(namespace=namespace)
    cluster = custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters",
                                                     kuberay.raycluster(cfg))
    spec = cluster["spec"]
    pods = [pod_from_template(cluster, spec["headGroupSpec"]["template"], "headgroup", True)]
    pods += [pod_from_template(cluster, g["template"], g["groupName"], False)
             for g in spec["workerGroupSpecs"]]
    for body in pods:
        # The server validates the whole Pod: resources, security context, probes,
        # volumes, env. It is stored and never runs (no scheduler, no kubelet here).
        stored = core.create_namespaced_pod(namespace, body)
        assert stored.status.phase == "Pending"
    listed = core.list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={cfg.name},"
                                      "ray.io/node-type=worker").items
    assert {p.metadata.labels["ray.io/group"] for p in listed} == {g.name for g in cfg.groups}
    head = core.list_namespaced_pod(namespace, label_selector="ray.io/node-type=head").items
    assert head[0].metadata.owner_references[0].uid == cluster["metadata"]["uid"]
    c = head[0].spec.containers[0]
    assert c.security_context.run_as_non_root and c.resources.limits


# --- the node provider, driven as `ray up` / `ray down` drive it -----------------------------

class OperatorStandIn(threading.Thread):
    """Plays the KubeRay operator's part and no more: when a RayCluster appears, it
    creates its head Pod from the template and marks it Running with an IP (what the
    kubelet would report). A test-only stand-in, not KubeRay."""

    def __init__(self, server: Server, namespace: str):
        super().__init__(daemon=True)
        self.core, self.custom = server.clients()
        self.namespace, self.stop, self.heads = namespace, threading.Event(), []

    def run(self):
        while not self.stop.wait(0.2):
            items = self.custom.list_namespaced_custom_object(
                "ray.io", "v1", self.namespace, "rayclusters")["items"]
            for rc in items:
                name = rc["metadata"]["name"]
                if self.core.list_namespaced_pod(self.namespace,
                                                 label_selector=f"ray.io/cluster={name}").items:
                    continue
                body = pod_from_template(rc, rc["spec"]["headGroupSpec"]["template"],
                                         "headgroup", True)
                pod = self.core.create_namespaced_pod(self.namespace, body)
                self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, {
                    "status": {"phase": "Running", "podIP": "10.8.0.7",
                               "conditions": [{"type": "Ready", "status": "True"}]}})
                self.heads.append(pod.metadata.name)


def provider_for(server: Server, namespace: str, monkeypatch, **extra):
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
    cfg = yaml.safe_load((ROOT / "cluster" / "gke.yaml").read_text())["provider"]
    p = gke.KubeRayNodeProvider(cfg | {"namespace": namespace} | extra, "raytune-ctr")
    p.poll_s = 0.2
    return p


def test_the_provider_through_ray_up_and_ray_down(server, namespace, monkeypatch, caplog):
    import click
    from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError
    from ray.autoscaler.tags import (
        NODE_KIND_HEAD,
        NODE_KIND_WORKER,
        TAG_RAY_LAUNCH_CONFIG,
        TAG_RAY_NODE_KIND,
        TAG_RAY_USER_NODE_TYPE,
    )

    operator = OperatorStandIn(server, namespace)
    operator.start()
    try:
        provider = provider_for(server, namespace, monkeypatch)
        head_tags = {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: "headgroup",
                     TAG_RAY_LAUNCH_CONFIG: "0f3c"}
        assert provider.non_terminated_nodes({}) == []
        provider.create_node({}, head_tags, 1)  # ray up: the RayCluster, then its head
        core, custom = server.clients()
        stored = custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters",
                                                     "raytune-ctr")
        assert contains(kuberay.raycluster(provider.cfg)["spec"], stored["spec"]) == []
        (head,) = operator.heads
        assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
        assert provider.node_tags(head)[TAG_RAY_LAUNCH_CONFIG] == "0f3c"
        assert provider.is_running(head) and provider.internal_ip(head) == "10.8.0.7"

        # A second `ray up` reuses the RayCluster and records its new launch hash.
        provider.create_node({}, head_tags | {TAG_RAY_LAUNCH_CONFIG: "77aa"}, 1)
        assert len(custom.list_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayclusters")["items"]) == 1
        assert provider.node_tags(head)[TAG_RAY_LAUNCH_CONFIG] == "77aa"
        with pytest.raises(NotImplementedError, match="KubeRay's autoscaler creates worker"):
            provider.create_node({}, {TAG_RAY_NODE_KIND: NODE_KIND_WORKER}, 1)
        other = provider_for(server, namespace, monkeypatch, head_cpu="4")
        with caplog.at_level("WARNING"):
            other.create_node({}, head_tags, 1)
        assert "exists with another spec; it is reused as it is" in caplog.text
        assert contains(kuberay.raycluster(provider.cfg)["spec"], custom.get_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayclusters", "raytune-ctr")["spec"]) == []  # untouched

        # A worker pod, as KubeRay's autoscaler would add one: found by its labels.
        worker = core.create_namespaced_pod(namespace, pod_from_template(
            stored, stored["spec"]["workerGroupSpecs"][0]["template"], "cpu", False)).metadata.name
        assert sorted(provider.non_terminated_nodes({})) == sorted([head, worker])
        assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER}) == [worker]
        assert provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "gpu"}) == []
        assert provider.node_tags(worker)[TAG_RAY_USER_NODE_TYPE] == "cpu"
        assert not provider.is_running(worker)  # Pending: no kubelet ever runs it
        provider.terminate_node(worker)  # a worker: only its pod
        assert provider.is_terminated(worker) and rayclusters(server, namespace) == ["raytune-ctr"]
        assert provider.is_terminated("no-such-pod")

        provider.set_node_tags(head, {"ray-node-status": "up-to-date"})  # a strategic merge
        pod = core.read_namespaced_pod(head, namespace)
        assert pod.metadata.annotations["ray-node-status"] == "up-to-date"
        assert pod.metadata.labels["ray.io/node-type"] == "head"  # labels kept

        # Exec needs a kubelet, which this server has not: one clear line.
        runner = provider.get_command_runner("", head, {}, "raytune-ctr", subprocess, True)
        with pytest.raises((ProcessRunnerError, click.ClickException)) as err:
            runner.run("uptime")
        assert "\n" not in str(err.value) and "-+-+-" not in str(err.value)  # no headers
        assert str(err.value).startswith(
            f"exec failed on pod {head}: pod {head} does not have a host assigned"), str(err.value)

        provider.terminate_node(head)  # ray down: the RayCluster goes
        assert custom.list_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayclusters")["items"] == []
        # Its head Pod stays: the garbage collector that follows owner references is the
        # controller-manager's, which this server has not (tests/test_gke.py fakes it).
        assert provider.is_running(head)
        provider.terminate_node(head)  # a pod without its RayCluster: deleted itself
        assert not provider.is_running(head) and provider.is_terminated(head)
    finally:
        operator.stop.set()
        operator.join()


# --- `ray up cluster/gke.yaml` as a new user meets it: one line, nothing half-made --------

def ray_up(tmp_path, kubeconfig: Path | str, **provider) -> subprocess.CompletedProcess:
    cfg = yaml.safe_load((ROOT / "cluster" / "gke.yaml").read_text())
    cfg["provider"] |= provider
    path = tmp_path / "gke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = os.environ | {"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path),
                        "PYTHONPATH": str(ROOT)}
    return subprocess.run([RAY, "up", "-y", "--no-config-cache", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)


def kubeconfig(tmp_path: Path, server: Server, *, port=None, token=None, user=True) -> Path:
    cfg = yaml.safe_load(server.kubeconfig.read_text())
    if port is not None:
        cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    if token is not None:
        cfg["users"][0]["user"]["token"] = token
    if not user:  # no credentials: the server's anonymous user, whom RBAC allows nothing
        cfg["users"][0]["user"] = {}
    path = tmp_path / f"kubeconfig-{uuid.uuid4().hex[:6]}"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line(proc, *fragments):
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in out, out[-3000:]
    last = out.splitlines()[-1]
    assert last.startswith("Error: "), out[-3000:]
    for f in fragments:
        assert f in last, last
    return last


def rayclusters(server: Server, namespace: str) -> list[str]:
    _, custom = server.clients()
    return [r["metadata"]["name"] for r in custom.list_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayclusters")["items"]]


def test_ray_up_without_a_kubeconfig(tmp_path):
    one_line(ray_up(tmp_path, tmp_path / "none"), "no Kubernetes credentials",
             "gcloud container clusters get-credentials")


def test_ray_up_against_an_unreachable_server(tmp_path, server):
    one_line(ray_up(tmp_path, kubeconfig(tmp_path, server, port=free_port())),
             "cannot reach the Kubernetes API server at https://127.0.0.1:", "kubectl cluster-info")


def test_ray_up_with_a_bad_token(tmp_path, server, namespace):
    one_line(ray_up(tmp_path, kubeconfig(tmp_path, server, token="not-a-token"),
                    namespace=namespace), "401 Unauthorized", "get-credentials")
    assert rayclusters(server, namespace) == []


def test_ray_up_forbidden_by_rbac(tmp_path, server, namespace):
    one_line(ray_up(tmp_path, kubeconfig(tmp_path, server, user=False), namespace=namespace),
             "403 Forbidden", "system:anonymous", f"a Role in namespace {namespace}")
    assert rayclusters(server, namespace) == []


def test_ray_up_without_the_kuberay_crds(tmp_path, bare_server):
    bare_server.kubectl("create", "namespace", "raytune")
    one_line(ray_up(tmp_path, bare_server.kubeconfig), "no KubeRay CRDs",
             "helm install kuberay-operator")


def test_ray_up_without_the_namespace(tmp_path, server):
    one_line(ray_up(tmp_path, server.kubeconfig, namespace="nowhere"),
             "namespace nowhere does not exist", "kubectl create namespace nowhere")


def test_ray_up_next_to_a_raycluster_it_did_not_make(tmp_path, server, namespace):
    theirs = kuberay.raycluster(kuberay.ClusterConfig(namespace=namespace))
    _, custom = server.clients()
    custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", theirs)
    one_line(ray_up(tmp_path, server.kubeconfig, namespace=namespace),
             f"a RayCluster {namespace}/raytune-ctr exists that `ray up` did not make")
    stored = custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters",
                                                 "raytune-ctr")
    assert gke.SPEC_HASH not in (stored["metadata"].get("annotations") or {})  # untouched
