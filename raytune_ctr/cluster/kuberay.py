"""KubeRay resources for raytune_ctr, rendered from one source.

`cluster/kuberay/raycluster.yaml` and `rayjob.yaml` are this module's output
(`python -m raytune_ctr.cluster.kuberay`); tests check the files still equal it.

The cluster: a head that does no training (num-cpus 0), a CPU worker group and a
Spot GPU worker group that scales from 0, KubeRay's in-tree autoscaler, every
container non-root, and the head's services on a ClusterIP only (reach the
dashboard with `kubectl port-forward`). Pods run as a Kubernetes service account
meant for Workload Identity, so sweeps write results to `storage` (gs://).
The same `raycluster(cfg)` is what `ray up cluster/gke.yaml` creates (gke.py).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import yaml
from pydantic import ConfigDict, NonNegativeInt, StrictBool, StrictStr, ValidationError
from pydantic.dataclasses import dataclass

from raytune_ctr import RAY_VERSION
from raytune_ctr.errors import SpecError, from_pydantic

_STRICT = ConfigDict(extra="forbid")
UID = 1000  # the image's non-root user (images/Dockerfile)


@dataclass(frozen=True, config=_STRICT)
class WorkerGroup:
    """One KubeRay worker group: its replicas and each pod's size."""
    name: StrictStr
    min_replicas: NonNegativeInt
    max_replicas: NonNegativeInt
    replicas: NonNegativeInt
    cpu: StrictStr  # Kubernetes quantities, quoted in YAML: "4", "500m"
    memory: StrictStr
    gpus: NonNegativeInt = 0
    accelerator: StrictStr | None = None  # GKE accelerator label, e.g. nvidia-l4
    spot: StrictBool = False

    def __post_init__(self):
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(f"needs min_replicas <= replicas <= max_replicas, got "
                             f"{self.min_replicas} <= {self.replicas} <= {self.max_replicas}")


@dataclass(frozen=True, config=_STRICT)
class ClusterConfig:
    name: StrictStr = "raytune-ctr"
    namespace: StrictStr = "raytune"
    image: StrictStr = "REGION-docker.pkg.dev/PROJECT/raytune/raytune-ctr:latest"
    gpu_image: StrictStr = "REGION-docker.pkg.dev/PROJECT/raytune/raytune-ctr-gpu:latest"
    head_cpu: StrictStr = "2"
    head_memory: StrictStr = "8Gi"
    # Results go here (sweep.py's default via RAYTUNE_CTR_STORAGE); pods write to it
    # as this Kubernetes service account, bound to a GCP one by Workload Identity.
    storage: StrictStr = "gs://BUCKET/raytune-ctr"
    service_account: StrictStr = "raytune-ctr"
    groups: tuple[WorkerGroup, ...] = (
        WorkerGroup("cpu", 0, 4, 1, cpu="4", memory="16Gi", spot=True),
        WorkerGroup("gpu", 0, 2, 0, cpu="8", memory="32Gi", gpus=1, accelerator="nvidia-l4",
                    spot=True),
    )

    @classmethod
    def from_dict(cls, d: dict, prefix: str = "provider") -> ClusterConfig:
        """From a mapping (gke.yaml's provider section); a bad key is a SpecError."""
        try:
            return cls(**d)
        except ValidationError as err:
            raise from_pydantic(err, prefix, _known) from None
        except TypeError as err:  # not a mapping of keywords
            raise SpecError(prefix, str(err), d) from None


DEFAULT = ClusterConfig()


def _known(loc: tuple) -> list[str]:
    return [f.name for f in dataclasses.fields(WorkerGroup if "groups" in loc else ClusterConfig)]


def _container(name: str, image: str, cpu: str, memory: str, storage: str, gpus: int = 0,
               ports: list[dict] | None = None) -> dict:
    limits = {"cpu": cpu, "memory": memory} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})  # a quantity: a string
    c = {
        "name": name,
        "image": image,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID,
                            "allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "env": [{"name": "RAYTUNE_CTR_STORAGE", "value": storage}],
    }
    if ports:
        c["ports"] = ports
    return c


def _pod(container: dict, service_account: str, group: WorkerGroup | None = None) -> dict:
    spec: dict = {"serviceAccountName": service_account, "containers": [container],
                  "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "fsGroup": UID},
                  "volumes": [{"name": "data", "emptyDir": {}}]}
    if group is not None:
        selector, tolerations = {}, []
        if group.accelerator:
            selector["cloud.google.com/gke-accelerator"] = group.accelerator
            tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"})
        if group.spot:
            selector["cloud.google.com/gke-spot"] = "true"
            tolerations.append({"key": "cloud.google.com/gke-spot", "operator": "Equal",
                                "value": "true", "effect": "NoSchedule"})
        if selector:
            spec["nodeSelector"] = selector
        if tolerations:
            spec["tolerations"] = tolerations
    return {"spec": spec}


def raycluster_spec(cfg: ClusterConfig = DEFAULT) -> dict:
    head = _container("ray-head", cfg.image, cfg.head_cpu, cfg.head_memory, cfg.storage, ports=[
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"}])
    workers = []
    for g in cfg.groups:
        image = cfg.gpu_image if g.gpus else cfg.image
        workers.append({
            "groupName": g.name,
            "replicas": g.replicas,
            "minReplicas": g.min_replicas,
            "maxReplicas": g.max_replicas,
            "rayStartParams": {},
            "template": _pod(_container("ray-worker", image, g.cpu, g.memory, cfg.storage,
                                        g.gpus), cfg.service_account, g),
        })
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 120},
        "headGroupSpec": {
            # ClusterIP only: the dashboard and GCS never get a public address.
            "serviceType": "ClusterIP",
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(head, cfg.service_account),
        },
        "workerGroupSpecs": workers,
    }


def raycluster(cfg: ClusterConfig = DEFAULT) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                         "labels": {"app": "raytune-ctr"}},
            "spec": raycluster_spec(cfg)}


def rayjob(cfg: ClusterConfig = DEFAULT, entrypoint: str | None = None) -> dict:
    entrypoint = entrypoint or ("python experiments/sweep.py --config "
                                "experiments/configs/s1_batch_lr.yaml --address auto "
                                f"--storage-path {cfg.storage}")
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": f"{cfg.name}-sweep", "namespace": cfg.namespace,
                         "labels": {"app": "raytune-ctr"}},
            "spec": {"entrypoint": entrypoint,
                     "shutdownAfterJobFinishes": True,
                     "ttlSecondsAfterFinished": 600,
                     "rayClusterSpec": copy.deepcopy(raycluster_spec(cfg))}}


HEADER = "# Generated by `python -m raytune_ctr.cluster.kuberay`; edit raytune_ctr/cluster/kuberay.py.\n"
FILES = {"raycluster.yaml": raycluster, "rayjob.yaml": rayjob}


def render(name: str) -> str:
    return HEADER + yaml.safe_dump(FILES[name](), sort_keys=False)


def main(out_dir: str = "cluster/kuberay") -> None:
    for name in FILES:
        (Path(out_dir) / name).write_text(render(name))


if __name__ == "__main__":
    main(*sys.argv[1:])
