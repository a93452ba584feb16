"""`ray up cluster/gke.yaml`: a Ray NodeProvider over KubeRay on GKE.

Ray 2.60's `ray up` has no Kubernetes provider of its own, but it loads this one
through `provider: {type: external, module: raytune_ctr.cluster.gke.KubeRayNodeProvider}`.

- The head: `create_node` creates (or reuses) one RayCluster resource, rendered
  by `kuberay.raycluster` from the provider section (the same source as
  cluster/kuberay/raycluster.yaml), and waits for its head pod to run.
- Workers: KubeRay's in-tree autoscaler adds and removes worker pods; this
  provider never creates them. It lists them, so `ray down` and
  `ray get-worker-ips` see them.
- Nodes are pods, found by KubeRay's labels (ray.io/cluster, ray.io/node-type,
  ray.io/group). Ray's tags come from those labels; the tags Ray sets itself
  (launch hash, status, runtime hashes) are kept as annotations, the head's
  creation tags on the RayCluster so they outlive a restarted head pod.
- Commands and file syncs run through the pod exec API (`KubeExecCommandRunner`),
  no SSH: files go up and down as a tar stream, as `kubectl cp` does.
- `terminate_node` on the head (and `ray down`) deletes the RayCluster; KubeRay
  and Kubernetes' garbage collector remove its pods and services.

Tested against an in-memory fake of the Kubernetes API, never a live cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import sys
import time
from typing import Any

from ray.autoscaler.command_runner import CommandRunnerInterface
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from raytune_ctr.cluster import PROBES, _tar, kuberay

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
HEAD_GROUP = "headgroup"  # KubeRay's ray.io/group label on the head pod
# Keys of the provider section that are Ray's or this provider's, not ClusterConfig's.
PROVIDER_KEYS = {"type", "module", "use_internal_ips", "head_timeout_s"}
ERROR_CHANNEL = 3  # the exec stream's status channel (kubernetes.stream.ws_client)
# The API server fills in defaults, so a stored spec never equals ours: compare hashes.
SPEC_HASH = "raytune-ctr/spec-hash"


def cluster_config(provider_config: dict, cluster_name: str) -> kuberay.ClusterConfig:
    """The RayCluster settings in gke.yaml's provider section; name defaults to cluster_name."""
    keys = {k: v for k, v in provider_config.items()
            if k not in PROVIDER_KEYS and not k.startswith("_")}  # _config_cache_path: Ray's
    return kuberay.ClusterConfig.from_dict({"name": cluster_name} | keys)


GET_CREDENTIALS = "gcloud container clusters get-credentials CLUSTER --region REGION"
INSTALL_KUBERAY = ("helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && "
                   "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0")


def explain(err: Exception, namespace: str) -> str | None:
    """One line naming the cause and the fix for an API error a user can fix, or None
    (a missing object is the caller's to handle)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(err, ApiException):
        try:
            body = json.loads(err.body or "")
        except ValueError:
            body = None  # not a Status: the server serves no such path
        message = body.get("message", "") if isinstance(body, dict) else ""
        if err.status == 401:
            return ("the Kubernetes API server refused the credentials (401 Unauthorized); "
                    f"get fresh ones: {GET_CREDENTIALS}")
        if err.status == 403:
            return (f"not allowed by the cluster's RBAC (403 Forbidden: {message}); this needs "
                    f"a Role in namespace {namespace} over pods, pods/exec and "
                    "rayclusters.ray.io")
        if err.status == 404 and body is None:
            return (f"this cluster has no KubeRay CRDs (rayclusters.ray.io); install the "
                    f"KubeRay operator first: {INSTALL_KUBERAY}")
        if err.status == 404 and (body.get("details") or {}).get("kind") == "namespaces":
            return (f"namespace {namespace} does not exist; create it (kubectl create namespace "
                    f"{namespace}) or set provider.namespace in cluster/gke.yaml")
        return None
    if isinstance(err, HTTPError | OSError):
        import kubernetes

        host = kubernetes.client.Configuration.get_default_copy().host
        return (f"cannot reach the Kubernetes API server at {host} ({type(err).__name__}); "
                "check the cluster your kubeconfig names (kubectl cluster-info) and the network")
    return None


class _Explained:
    """A kubernetes API object whose errors a user can fix become one ClickException
    line (Ray's CLI prints it as `Error: ...` and exits 1), not a traceback with the
    HTTP headers."""

    def __init__(self, api, namespace: str):
        self._api, self._namespace = api, namespace

    def __getattr__(self, name):
        method = getattr(self._api, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as err:
                line = explain(err, self._namespace)
                if line is None:
                    raise
                import click

                raise click.ClickException(line) from None
        return call

    @property
    def api_client(self):
        return self._api.api_client


def _cpus(quantity: str) -> float | int:
    """A Kubernetes CPU quantity ("4", "500m") as Ray's CPU resource."""
    n = int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return int(n) if n == int(n) else n


def _not_found(err: Exception) -> bool:
    return getattr(err, "status", None) == 404


class KubeRayNodeProvider(NodeProvider):
    """Ray nodes are the pods of one KubeRay RayCluster; node ids are pod names.

    The Kubernetes clients are made on first use (kubeconfig, or the in-cluster
    service account); tests set `core`, `custom` and `stream` to fakes instead.
    """

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.cfg = cluster_config(provider_config, cluster_name)
        self.namespace = self.cfg.namespace
        self.head_timeout_s = float(provider_config.get("head_timeout_s", 900))
        # CoreV1Api, CustomObjectsApi and kubernetes.stream.stream, made on first use
        self.core: Any = None
        self.custom: Any = None
        self.stream: Any = None
        self.poll_s = 5.0

    @staticmethod
    def bootstrap_config(config: dict) -> dict:
        """Ray's node types from the provider's worker groups, so gke.yaml states each
        size once: a type per group (its CPUs, GPUs, min and max), max_workers their sum."""
        config = dict(config)
        cfg = cluster_config(config["provider"], config["cluster_name"])
        types = {k: v for k, v in config.get("available_node_types", {}).items()
                 if k == config.get("head_node_type")}
        for g in cfg.groups:
            resources = {"CPU": _cpus(g.cpu)} | ({"GPU": g.gpus} if g.gpus else {})
            types[g.name] = {"node_config": {}, "resources": resources,
                             "min_workers": g.min_replicas, "max_workers": g.max_replicas}
        config["available_node_types"] = types
        config["max_workers"] = sum(g.max_replicas for g in cfg.groups)
        return config

    def _clients(self):
        if self.core is None:
            try:
                import kubernetes
            except ImportError as err:  # the `cluster` extra
                raise ImportError("cluster/gke.yaml's provider needs the kubernetes client: "
                                  f"pip install -e '.[cluster]' ({err})") from None
            import click

            try:  # KUBECONFIG as it is now (the client reads it once, at import)
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            except kubernetes.config.ConfigException as err:
                try:
                    kubernetes.config.load_incluster_config()
                except kubernetes.config.ConfigException:
                    raise click.ClickException(
                        f"no Kubernetes credentials ({err}; and not inside a pod); get them "
                        f"for your GKE cluster: {GET_CREDENTIALS} (or set KUBECONFIG)") from None
            from kubernetes.stream import stream

            self.core = _Explained(kubernetes.client.CoreV1Api(), self.namespace)
            self.custom = _Explained(kubernetes.client.CustomObjectsApi(), self.namespace)
            self.stream = stream
        return self.core, self.custom

    # --- the RayCluster -------------------------------------------------------------

    def _get_raycluster(self) -> dict | None:
        _, custom = self._clients()
        try:
            return custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                       self.cfg.name)
        except Exception as err:
            if _not_found(err):
                return None
            raise

    def create_node(self, node_config: dict, tags: dict[str, str], count: int) -> None:
        """Create (or reuse) the RayCluster and wait for its head pod; heads only."""
        if tags.get(TAG_RAY_NODE_KIND) != NODE_KIND_HEAD or count != 1:
            raise NotImplementedError(
                "KubeRay's autoscaler creates worker pods (enableInTreeAutoscaling); "
                f"this provider only creates the head, got {count} x {tags}")
        _, custom = self._clients()
        body = kuberay.raycluster(self.cfg)
        spec_hash = hashlib.sha1(json.dumps(body["spec"], sort_keys=True).encode()).hexdigest()
        # Ray's tags for the head live on the RayCluster, so a restarted head pod keeps them.
        annotations = {k: v for k, v in tags.items() if k != TAG_RAY_NODE_KIND}
        existing = self._get_raycluster()
        if existing is None:
            body["metadata"]["annotations"] = annotations | {SPEC_HASH: spec_hash}
            custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
            log.info("created RayCluster %s/%s", self.namespace, self.cfg.name)
        elif existing["metadata"].get("deletionTimestamp"):
            raise RuntimeError(f"RayCluster {self.namespace}/{self.cfg.name} is being deleted; "
                               "run `ray up` again once it is gone")
        elif SPEC_HASH not in (existing["metadata"].get("annotations") or {}):
            import click

            raise click.ClickException(
                f"a RayCluster {self.namespace}/{self.cfg.name} exists that `ray up` did not "
                "make; choose another cluster_name in cluster/gke.yaml, or delete it (kubectl "
                f"-n {self.namespace} delete raycluster {self.cfg.name})")
        else:
            if (existing["metadata"].get("annotations") or {}).get(SPEC_HASH) != spec_hash:
                log.warning("RayCluster %s exists with another spec; it is reused as it is "
                            "(`ray down` first to apply gke.yaml's settings)", self.cfg.name)
            custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                  self.cfg.name,
                                                  {"metadata": {"annotations": annotations}})
        self._wait_for_head()

    def _wait_for_head(self) -> None:
        deadline = time.monotonic() + self.head_timeout_s
        while True:
            heads = [p for p in self._pods() if self._kind(p) == NODE_KIND_HEAD]
            if heads and heads[0].status.phase == "Running":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no running head pod for RayCluster {self.cfg.name} after "
                                   f"{self.head_timeout_s:.0f} s (kubectl -n {self.namespace} "
                                   f"describe raycluster {self.cfg.name})")
            time.sleep(self.poll_s)

    def terminate_node(self, node_id: str) -> None:
        """The head: delete the RayCluster (its pods go with it). A worker: delete its
        pod; KubeRay's autoscaler decides whether another one comes back."""
        core, custom = self._clients()
        try:
            if self._kind(core.read_namespaced_pod(node_id, self.namespace)) == NODE_KIND_HEAD \
                    and self._get_raycluster() is not None:
                custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                       self.cfg.name)
            else:  # a worker, or a head whose RayCluster is gone already
                core.delete_namespaced_pod(node_id, self.namespace)
        except Exception as err:
            if not _not_found(err):  # already gone is done
                raise

    def terminate_nodes(self, node_ids: list[str]) -> None:
        for node_id in node_ids:
            self.terminate_node(node_id)

    # --- pods as nodes --------------------------------------------------------------

    def _pods(self) -> list:
        core, _ = self._clients()
        pods = core.list_namespaced_pod(self.namespace,
                                        label_selector=f"ray.io/cluster={self.cfg.name}").items
        return [p for p in pods if not p.metadata.deletion_timestamp
                and p.status.phase not in ("Succeeded", "Failed")]

    @staticmethod
    def _kind(pod) -> str:
        return NODE_KIND_HEAD if pod.metadata.labels.get("ray.io/node-type") == "head" \
            else NODE_KIND_WORKER

    def _tags(self, pod, raycluster: dict | None) -> dict[str, str]:
        labels = pod.metadata.labels or {}
        ready = pod.status.phase == "Running"
        tags = {TAG_RAY_CLUSTER_NAME: self.cluster_name,
                TAG_RAY_NODE_KIND: self._kind(pod),
                TAG_RAY_USER_NODE_TYPE: labels.get("ray.io/group", ""),
                # KubeRay starts Ray in its pods, so a running pod is a node that is up.
                TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE if ready else STATUS_UNINITIALIZED}
        stored = dict(pod.metadata.annotations or {})
        if tags[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD and raycluster is not None:
            stored = (raycluster["metadata"].get("annotations") or {}) | stored
        return tags | {k: v for k, v in stored.items() if k.startswith("ray-")}

    def _all_tags(self) -> dict[str, dict[str, str]]:
        pods = self._pods()
        raycluster = self._get_raycluster() if pods else None
        return {p.metadata.name: self._tags(p, raycluster) for p in pods}

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return [name for name, tags in self._all_tags().items()
                if all(tags.get(k) == v for k, v in tag_filters.items())]

    def _pod(self, node_id: str):
        core, _ = self._clients()
        return core.read_namespaced_pod(node_id, self.namespace)

    def node_tags(self, node_id: str) -> dict[str, str]:
        pod = self._pod(node_id)
        raycluster = self._get_raycluster() if self._kind(pod) == NODE_KIND_HEAD else None
        return self._tags(pod, raycluster)

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        core, _ = self._clients()
        core.patch_namespaced_pod(node_id, self.namespace,
                                  {"metadata": {"annotations": dict(tags)}})

    def is_running(self, node_id: str) -> bool:
        try:
            pod = self._pod(node_id)
            # A deleted pod stays, Terminating, until its kubelet confirms: not running.
            return pod.status.phase == "Running" and not pod.metadata.deletion_timestamp
        except Exception as err:
            if _not_found(err):
                return False
            raise

    def is_terminated(self, node_id: str) -> bool:
        try:
            pod = self._pod(node_id)
        except Exception as err:
            if _not_found(err):
                return True
            raise
        return bool(pod.metadata.deletion_timestamp) or pod.status.phase in ("Succeeded",
                                                                              "Failed")

    def internal_ip(self, node_id: str) -> str:
        return self._pod(node_id).status.pod_ip

    def external_ip(self, node_id: str) -> str | None:  # type: ignore[override]  # Ray takes None
        return None  # pods have no public address, by design (ClusterIP only)

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name,
                           process_runner, use_internal_ip, docker_config=None):
        if docker_config and docker_config.get("container_name"):
            raise ValueError("docker: not used with KubeRay, whose pods already run the image; "
                             f"remove the docker section, got {docker_config!r}")
        return KubeExecCommandRunner(self, node_id, log_prefix)


def _remote(path: str) -> str:
    """A remote path for bash, `~` expanded there and the rest quoted."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:]) if len(path) > 1 else '"$HOME"'
    return shlex.quote(path)


def _message(err) -> str:
    """An ApiException's own message (the Status's), without the HTTP headers."""
    for text in (getattr(err, "body", None), str(getattr(err, "reason", "")).split("-+-+-")[-1]):
        try:
            return json.loads(text or "")["message"]
        except (TypeError, ValueError, KeyError):
            continue
    return str(getattr(err, "reason", err)).split(" -+-+- ")[0]


def _exit_code(status: dict) -> int | None:
    """Exit code from the exec status (error channel); None if it says nothing of one."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    return None


class KubeExecCommandRunner(CommandRunnerInterface):
    """Ray's command runner over the pod exec API, in the pod's first container.

    A non-zero exit raises ProcessRunnerError (the updater retries or reports
    it), or with exit_on_fail click's ClickException, as Ray's SSH runner does.
    `timeout` is ignored like the SSH runner's connect timeout: setup commands
    may run long.
    """

    def __init__(self, provider: KubeRayNodeProvider, node_id: str, log_prefix: str = ""):
        self.provider, self.node_id, self.log_prefix = provider, node_id, log_prefix
        self.namespace = provider.namespace

    def _exec(self, script: str, stdin: bytes | None = None, capture: bool = False) -> tuple:
        """Run `bash -c script`; return (exit code or None, stdout bytes, status dict)."""
        core, _ = self.provider._clients()
        core = getattr(core, "_api", core)  # stream() wants the client's own bound method
        resp = self.provider.stream(core.connect_get_namespaced_pod_exec, self.node_id, self.namespace,
                            command=["bash", "-c", script], stdin=stdin is not None,
                            stdout=True, stderr=True, tty=False, _preload_content=False,
                            binary=True)
        if stdin is not None:
            resp.write_stdin(stdin)
            resp.close_channel(0)  # EOF on v5.channel.k8s.io; scripts also read exact sizes
        out = bytearray()

        def drain():
            if resp.peek_stdout():
                chunk = resp.read_stdout()
                if capture:
                    out.extend(chunk)
                else:
                    sys.stdout.write(chunk.decode(errors="replace"))
            if resp.peek_stderr():
                sys.stderr.write(resp.read_stderr().decode(errors="replace"))

        while resp.is_open():
            resp.update(timeout=1)
            drain()
        drain()  # what arrived with the close
        raw = resp.read_channel(ERROR_CHANNEL)
        resp.close()
        status = json.loads(raw) if raw else {}
        return _exit_code(status), bytes(out), status

    def _check(self, code, status: dict, cmd: str, exit_on_fail: bool) -> None:
        if code == 0:
            return
        import click
        from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError

        if exit_on_fail:
            raise click.ClickException(f"Command failed (exit code {code}) on pod "
                                       f"{self.node_id}:\n\n  {cmd}\n")
        raise ProcessRunnerError(status.get("message", "Command failed"), "ssh_command_failed",
                                 code=code, command=cmd)

    def run(self, cmd: str | None = None, timeout: int = 120, exit_on_fail: bool = False,  # type: ignore[override]
            port_forward=None, with_output: bool = False, environment_variables=None,
            run_env: str = "auto", ssh_options_override_ssh_key: str = "",
            shutdown_after_run: bool = False) -> str | bytes:
        # Ray's runners return bytes with with_output; its annotation says str.
        import click

        if port_forward:
            raise click.ClickException(
                "port forwarding does not go through pod exec; run: kubectl -n "
                f"{self.namespace} port-forward svc/{self.provider.cfg.name}-head-svc 8265")
        if not cmd or cmd == "$SHELL":  # `ray attach`: needs a tty, which this runner has not
            raise click.ClickException(f"no interactive shell here; run: "
                                       f"{self.remote_shell_command_str()}")
        script = PROBES.get(cmd, cmd)
        if environment_variables:  # JSON-encoded, as Ray's SSH runner does (ray start decodes)
            script = "".join(f"export {k}={shlex.quote(json.dumps(v, separators=(',', ':')))}; "
                             for k, v in environment_variables.items()) + script
        from kubernetes.client.exceptions import ApiException
        from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError

        try:
            code, out, status = self._exec(script, capture=with_output)
        except ApiException as err:  # pod not there or not started yet: the updater retries
            raise ProcessRunnerError(f"exec failed on pod {self.node_id}: {_message(err)}",
                                     "ssh_command_failed", command=cmd) from None
        self._check(code, status, cmd, exit_on_fail)
        if shutdown_after_run:  # `ray exec --stop`: stop the cluster (a head) or the pod
            self.provider.terminate_node(self.node_id)
        return out if with_output else ""

    @staticmethod
    def _keep(options: dict | None):
        if (options or {}).get("rsync_filter"):
            raise NotImplementedError("rsync_filter (filter files like .gitignore) is not "
                                      "applied by the tar-over-exec sync; use rsync_exclude")
        return _tar.excluding((options or {}).get("rsync_exclude"))

    def run_rsync_up(self, source: str, target: str, options: dict | None = None) -> None:
        """Copy a local file or folder (a trailing / copies its contents, as rsync does)."""
        data, dest = _tar.pack(source, target, self._keep(options))
        # head -c: tar sees the end of its input even where stdin cannot be closed (v4).
        script = f"mkdir -p {_remote(dest)} && head -c {len(data)} | tar -xmf - -C {_remote(dest)}"
        code, _, status = self._exec(script, stdin=data)
        self._check(code, status, f"sync {source} -> {self.node_id}:{target}", exit_on_fail=True)

    def run_rsync_down(self, source: str, target: str, options: dict | None = None) -> None:
        """Copy a remote folder's contents into target, or a remote file to target."""
        src = source.rstrip("/") or "/"
        parent, base = os.path.dirname(src) or ".", os.path.basename(src)
        script = (f"if [ -d {_remote(src)} ]; then tar -cf - -C {_remote(src)} .; "
                  f"else tar -cf - -C {_remote(parent)} {shlex.quote(base)}; fi")
        code, out, status = self._exec(script, capture=True)
        self._check(code, status, f"sync {self.node_id}:{source} -> {target}", exit_on_fail=True)
        _tar.unpack(out, ".", target, self._keep(options))

    def remote_shell_command_str(self) -> str:
        return f"kubectl -n {self.namespace} exec -it {self.node_id} -- bash\n"

    def run_init(self, *, as_head: bool, file_mounts: dict, sync_run_yet: bool):
        return None  # no container to start: KubeRay's pod is the container


__all__ = ["KubeRayNodeProvider", "KubeExecCommandRunner", "cluster_config"]
