"""`ray up cluster/docker.yaml`: a Ray cluster of containers on one Docker host.

Ray loads this through `provider: {type: external, module: ...}`. Every node is a
container of the same image on a user-defined bridge network, with the CPU,
memory and optional cpuset limits of its node type; Ray inside reads those limits
from the container's cgroup.

The cluster has a fixed size. The Docker socket is not mounted into any container
(a process that holds it is root on the host), so the head cannot run Ray's
autoscaler against this provider. Instead `ray up` creates the head container, and
with it each worker type's `min_workers` containers; each worker runs the YAML's
setup and start commands itself, joins the head when its GCS answers, and rejoins
after a head restart. A later `ray up` (`--no-restart` while a sweep runs) starts
again any worker container that died (killed, or a preempted node). `ray down`
removes every container, running or exited, then the network.
Results go to a host folder bind-mounted at /data in every container, so all nodes
share one storage path and `ray down` loses nothing.

Commands run through `docker exec` (no SSH in the image); files move as tar
streams, like `docker cp`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from filelock import FileLock
from pydantic import ConfigDict, PositiveFloat, StrictStr, ValidationError
from pydantic.dataclasses import dataclass
from ray.autoscaler.command_runner import CommandRunnerInterface
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from raytune_ctr.cluster import PROBES, _tar
from raytune_ctr.errors import SpecError, from_pydantic

try:
    import docker
    import docker.errors
except ImportError as err:  # the `cluster` extra
    raise ImportError(f"cluster/docker.yaml's provider needs the docker client: "
                      f"pip install -e '.[cluster]' ({err})") from None

log = logging.getLogger(__name__)

LABEL = "raytune-ctr.cluster"  # every container of a cluster carries its name here
WORKERS = "_workers"  # worker specs copied from the cluster config by bootstrap_config


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class NodeConfig:
    """A node type's node_config: the container's limits, as `docker run` takes them."""
    cpus: PositiveFloat | None = None  # --cpus
    mem_limit: StrictStr | None = None  # --memory, e.g. "8g"
    memswap_limit: StrictStr | None = None
    cpuset_cpus: StrictStr | None = None  # --cpuset-cpus, e.g. "0-3" (S5's pinned layout)
    shm_size: StrictStr | None = None
    environment: dict[StrictStr, StrictStr] | None = None


def _docker_args(node_config: dict, where: str) -> dict:
    """The docker SDK's run() arguments for a node_config; a bad key is a SpecError."""
    try:
        cfg = NodeConfig(**node_config)
    except ValidationError as err:
        raise from_pydantic(err, where, lambda loc: [f.name for f in fields(NodeConfig)]) \
            from None
    args = {k: v for k, v in vars(cfg).items() if v is not None and k != "cpus"}
    if cfg.cpus is not None:
        args["nano_cpus"] = int(cfg.cpus * 1e9)  # what `docker run --cpus` sets
    return args


def _worker_script(setup: list[str], start: list[str], head: str) -> str:
    """The worker container's main process: set up once, then (re)join the head."""
    lines = [f"export RAY_HEAD_IP={shlex.quote(head)}", *setup, "while true; do",
             "  until ray health-check --address $RAY_HEAD_IP:6379 >/dev/null 2>&1; do sleep 2; done",
             *(f"  {c}" for c in start), "  sleep 2", "done"]
    return "\n".join(lines)


class DockerNodeProvider(NodeProvider):
    def __init__(self, provider_config: dict, cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.image = provider_config.get("image", "raytune-ctr:latest")
        self.network = provider_config.get("network") or f"{cluster_name}-net"
        self.data_dir = provider_config.get("data_dir")
        self._client = None
        # Ray keeps node tags in the provider; ours outlive the process (ray up,
        # then ray exec/down) in a small file beside Ray's own cluster state.
        state = Path(provider_config.get("state_dir", "/tmp/ray"))
        state.mkdir(parents=True, exist_ok=True)
        self._tags_file = state / f"docker-{cluster_name}.tags.json"
        self._lock = FileLock(str(self._tags_file) + ".lock")

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.from_env()
        return self._client

    # --- config ----------------------------------------------------------------

    @staticmethod
    def bootstrap_config(cluster_config: dict) -> dict:
        """Check the node types and hand the workers' specs to the provider."""
        config = dict(cluster_config)
        provider = dict(config["provider"])
        types = config.get("available_node_types", {})
        head_type = config.get("head_node_type")
        workers = []
        for name, spec in types.items():
            where = f"available_node_types.{name}.node_config"
            args = _docker_args(spec.get("node_config", {}), where)
            if name == head_type:
                continue
            count = spec.get("min_workers", 0)
            if spec.get("max_workers", count) != count:
                raise SpecError(f"available_node_types.{name}.max_workers",
                                "must equal min_workers: this cluster has a fixed size "
                                "(no autoscaler, since no container holds the Docker socket)",
                                spec.get("max_workers"))
            setup = config.get("setup_commands", []) + config.get("worker_setup_commands", [])
            workers.append({"type": name, "count": count, "docker": args, "setup": setup,
                            "start": config.get("worker_start_ray_commands", []),
                            "resources": spec.get("resources", {})})
        provider[WORKERS] = workers
        config["provider"] = provider
        return config

    # --- nodes -------------------------------------------------------------------

    def _containers(self, all_states: bool = False) -> list:
        return self.client.containers.list(
            all=all_states, filters={"label": f"{LABEL}={self.cluster_name}"})

    def _load_tags(self) -> dict:
        return json.loads(self._tags_file.read_text()) if self._tags_file.exists() else {}

    def _save_tags(self, tags: dict) -> None:
        self._tags_file.write_text(json.dumps(tags))

    def non_terminated_nodes(self, tag_filters: dict) -> list[str]:
        with self._lock:
            saved = self._load_tags()
        return [c.name for c in self._containers()
                if all(self._tags(c, saved).get(k) == v for k, v in tag_filters.items())]

    def is_running(self, node_id: str) -> bool:
        c = self._get(node_id)
        return c is not None and c.status == "running"

    def is_terminated(self, node_id: str) -> bool:
        c = self._get(node_id)
        return c is None or c.status in ("exited", "dead", "removing")

    @staticmethod
    def _tags(container, saved: dict) -> dict:
        """Creation tags (a label) updated by those Ray set since (the tags file)."""
        return json.loads(container.labels.get(f"{LABEL}.tags", "{}")) | saved.get(container.name, {})

    def node_tags(self, node_id: str) -> dict:
        c = self._get(node_id)
        with self._lock:
            saved = self._load_tags()
        return self._tags(c, saved) if c is not None else saved.get(node_id, {})

    def set_node_tags(self, node_id: str, tags: dict) -> None:
        with self._lock:
            all_tags = self._load_tags()
            all_tags[node_id] = all_tags.get(node_id, {}) | tags
            self._save_tags(all_tags)

    def internal_ip(self, node_id: str) -> str:
        c = self._get(node_id)
        return c.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def external_ip(self, node_id: str) -> str:
        # On the Docker host the bridge address is reachable; nothing is published.
        return self.internal_ip(node_id)

    def _get(self, node_id: str):
        try:
            return self.client.containers.get(node_id)
        except docker.errors.NotFound:
            return None

    def _ensure_network(self) -> None:
        if not self.client.networks.list(names=[self.network]):
            self.client.networks.create(self.network, driver="bridge",
                                        labels={LABEL: self.cluster_name})

    def _mounts(self) -> dict:
        if not self.data_dir:
            return {}
        host = Path(os.path.expanduser(self.data_dir))
        host.mkdir(parents=True, exist_ok=True)
        try:
            os.chown(host, 1000, 1000)  # the image's user (images/Dockerfile)
        except PermissionError:
            host.chmod(0o777)
        return {str(host): {"bind": "/data", "mode": "rw"}}

    def _run(self, name: str, tags: dict, docker_args: dict, entrypoint: list[str],
             volumes: dict, environment: dict | None = None):
        env = dict(docker_args.pop("environment", {}) or {}) | (environment or {})
        container = self.client.containers.run(
            self.image, entrypoint=entrypoint, command=[], name=name, hostname=name,
            detach=True, network=self.network, volumes=volumes, environment=env,
            labels={LABEL: self.cluster_name, f"{LABEL}.tags": json.dumps(tags)},
            init=True, **docker_args)
        with self._lock:  # a container replaced under its name starts from its own tags
            saved = self._load_tags()
            if saved.pop(name, None) is not None:
                self._save_tags(saved)
        return container

    def create_node(self, node_config: dict, tags: dict, count: int) -> dict:
        if tags.get(TAG_RAY_NODE_KIND) != NODE_KIND_HEAD:
            raise RuntimeError("this provider creates workers together with the head "
                               "(fixed-size cluster); was Ray's autoscaler started?")
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise SpecError("provider.image", "no such image on this Docker host; build it "
                            "with images/Dockerfile", self.image) from None
        self._ensure_network()
        head = f"{self.cluster_name}-head"
        if self._running(head):  # a head that died: its exited container goes
            raise RuntimeError(f"container {head} runs already; is another `ray up` of "
                               "this cluster running?")
        created = {head: self._run(head, tags, _docker_args(node_config, "head node_config"),
                                   ["sleep", "infinity"], self._mounts())}
        return created | self.ensure_workers()

    def _running(self, name: str) -> bool:
        """Whether a container of this name runs; one that exited is removed, so that
        `ray up` can start its replacement under the same name."""
        c = self._get(name)
        if c is not None and c.status != "running":
            tail = c.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
            log.warning("container %s %s (exit code %s), started again; its last lines: %s",
                        name, c.status, c.attrs.get("State", {}).get("ExitCode"), tail)
            c.remove(force=True, v=True)
            return False
        return c is not None

    def ensure_workers(self) -> dict:
        """Start each worker container that is missing or has died (a killed or
        preempted node); running ones are kept. `ray up` calls this when it makes the
        head and each time it updates it, so the cluster comes back to its size."""
        created = {}
        volumes = self._mounts()
        for spec in self.provider_config.get(WORKERS, []):
            for i in range(spec["count"]):
                name = f"{self.cluster_name}-{spec['type']}-{i}"
                if self._running(name):
                    continue  # a head replaced by `ray up`: the workers rejoin it themselves
                wtags = {TAG_RAY_CLUSTER_NAME: self.cluster_name,
                         TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                         TAG_RAY_USER_NODE_TYPE: spec["type"], TAG_RAY_NODE_NAME: name,
                         TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}
                env = ({"RAY_OVERRIDE_RESOURCES": json.dumps(spec["resources"])}
                       if spec["resources"] else {})
                script = _worker_script(spec["setup"], spec["start"], f"{self.cluster_name}-head")
                created[name] = self._run(name, wtags, dict(spec["docker"]),
                                          ["bash", "-c", script], volumes, env)
                log.info("started worker container %s", name)
        return created

    def terminate_node(self, node_id: str) -> None:
        c = self._get(node_id)
        if c is not None:
            c.remove(force=True, v=True)  # v: its anonymous volumes too
        with self._lock:
            tags = self._load_tags()
            tags.pop(node_id, None)
            self._save_tags(tags)
        if not self._containers():  # the last running node: dead ones go with it
            for dead in self._containers(all_states=True):
                dead.remove(force=True, v=True)
            self._cleanup()

    def nodes_for_teardown(self, tag_filters: dict) -> list[str]:
        """`ray down`'s list: every container of the cluster, exited ones too (a node
        that died, or all of them after a host reboot)."""
        with self._lock:
            saved = self._load_tags()
        return [c.name for c in self._containers(all_states=True)
                if all(self._tags(c, saved).get(k) == v for k, v in tag_filters.items())]

    def cleanup_cluster_resources(self) -> None:
        """After `ray down`: the network, and any container left."""
        for c in self._containers(all_states=True):
            c.remove(force=True, v=True)
        self._cleanup()

    def _cleanup(self) -> None:
        for net in self.client.networks.list(names=[self.network]):
            if net.attrs.get("Labels", {}).get(LABEL) == self.cluster_name:
                net.remove()
        self._tags_file.unlink(missing_ok=True)
        Path(self._lock.lock_file).unlink(missing_ok=True)

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name,
                           process_runner, use_internal_ip, docker_config=None):
        on_head = self.ensure_workers if node_id == f"{self.cluster_name}-head" else None
        return DockerExecRunner(self.client, node_id, log_prefix, on_head)


class DockerExecRunner(CommandRunnerInterface):
    """Ray's command runner over `docker exec` and tar streams."""

    def __init__(self, client: docker.DockerClient, container: str, log_prefix: str = "",
                 on_head=None):
        self.client, self.container, self.log_prefix = client, container, log_prefix
        self._on_head = on_head  # the provider's ensure_workers, for the head's runner

    def _c(self):
        return self.client.containers.get(self.container)

    def _user(self) -> tuple[str, int, int]:
        """The node user's home, uid and gid, asked of the node each time: the head
        may have been replaced since (`ray up` after a lost head). A failed or empty
        answer is an error here, not a file put under / and missing later."""
        res = self._c().exec_run(["sh", "-c", 'printf "%s\\n" "$HOME"; id -u; id -g'])
        lines = res.output.decode(errors="replace").splitlines()
        if res.exit_code or len(lines) != 3 or not lines[0].startswith("/"):
            raise RuntimeError(f"{self.container}: could not read the node user's home and "
                               f"ids (exit code {res.exit_code}): {lines!r}")
        return lines[0], int(lines[1]), int(lines[2])

    @staticmethod
    def _path(path: str, home: str) -> str:
        return home + path[1:] if path.startswith("~") else path

    def run(self, cmd=None, timeout=120, exit_on_fail=False, port_forward=None,
            with_output=False, environment_variables=None, run_env="auto",
            ssh_options_override_ssh_key="", shutdown_after_run=False, silent=False):
        if not cmd:
            return b"" if with_output else None
        cmd = PROBES.get(cmd, cmd)
        if port_forward:
            log.warning("port forwarding is not needed: reach %s by its address on the "
                        "Docker network", self.container)
        env = {k: v if isinstance(v, str) else json.dumps(v)
               for k, v in (environment_variables or {}).items()}
        api = self.client.api
        exec_id = api.exec_create(self.container, ["bash", "-c", cmd], environment=env)["Id"]
        out = []
        for chunk in api.exec_start(exec_id, stream=True):
            out.append(chunk)
            if not with_output and not silent:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
        code = api.exec_inspect(exec_id)["ExitCode"]
        if code:
            from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError

            msg = f"command failed with exit code {code} in {self.container}: {cmd}"
            if exit_on_fail:
                import click

                raise click.ClickException(msg)
            raise ProcessRunnerError(msg, "ssh_command_failed", code=code, command=[cmd])
        return b"".join(out) if with_output else None

    def run_rsync_up(self, source: str, target: str, options=None) -> None:
        home, uid, gid = self._user()
        exclude = _tar.excluding((options or {}).get("rsync_exclude"))

        def owned(info):  # put_archive keeps the tar's owners: make them the node's user
            if exclude(info) is None:
                return None
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            return info
        data, dest = _tar.pack(source, self._path(target, home), owned)
        self.run(f"mkdir -p {shlex.quote(dest)}", silent=True)
        if not self._c().put_archive(dest, data):
            raise RuntimeError(f"{self.container}: Docker did not unpack {source} in {dest}")

    def run_rsync_down(self, source: str, target: str, options=None) -> None:
        home = self._user()[0] if source.startswith("~") else ""
        stream, stat = self._c().get_archive(self._path(source, home).rstrip("/"))
        _tar.unpack(b"".join(stream), stat["name"], target,
                    _tar.excluding((options or {}).get("rsync_exclude")))

    def remote_shell_command_str(self) -> str:
        return f"docker exec -it {self.container} bash\n"

    def run_init(self, *, as_head: bool, file_mounts: dict, sync_run_yet: bool):
        # The node is the container already. On the head, `ray up` brings back any
        # worker container that died since (there is no autoscaler to do it).
        if as_head and self._on_head is not None:
            self._on_head()
        return None
