"""KubeRay resources: one source, valid against the KubeRay v1.7.0 CRDs."""

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from raytune_ctr import RAY_VERSION
from raytune_ctr.cluster import kuberay, schema

ROOT = Path(__file__).resolve().parent.parent
needs_crds = pytest.mark.skipif(schema.crd_dir() is None, reason=(
    f"KubeRay CRDs not found: set {schema.ENV} to a folder with ray.io_rayclusters.yaml "
    "and ray.io_rayjobs.yaml (KubeRay v1.7.0)"))


@pytest.mark.parametrize("name", sorted(kuberay.FILES))
def test_manifests_are_rendered_from_the_one_source(name):
    assert (ROOT / "cluster" / "kuberay" / name).read_text() == kuberay.render(name), (
        "regenerate with: python -m raytune_ctr.cluster.kuberay")


def test_ray_version_is_declared_once():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(p for p in pins if p.startswith("ray["))
    assert ray_pin.endswith(f"=={RAY_VERSION}")
    for name in kuberay.FILES:
        doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == RAY_VERSION


@needs_crds
@pytest.mark.parametrize("render", [kuberay.raycluster, kuberay.rayjob])
def test_resources_pass_the_crd_schema_with_defaults(render):
    full = schema.validate(render())
    spec = full["spec"].get("rayClusterSpec", full["spec"])
    ports = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert {p["protocol"] for p in ports} == {"TCP"}  # filled from the schema's default


@needs_crds
def test_unknown_and_mistyped_fields_are_rejected():
    bad = kuberay.raycluster()
    bad["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    with pytest.raises(jsonschema.ValidationError, match="serviceTyp"):
        schema.validate(bad)
    bad = kuberay.raycluster()
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="'four' is not of type 'integer'"):
        schema.validate(bad)
    bad = copy.deepcopy(kuberay.rayjob())
    del bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    with pytest.raises(jsonschema.ValidationError, match="'template' is a required property"):
        schema.validate(bad)


def test_security_defaults():
    spec = kuberay.raycluster()["spec"]
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert all(v.get("hostPath") is None for v in pod["spec"]["volumes"])  # no docker.sock
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0
    assert gpu["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert re.match(r"python experiments/sweep.py .*--address auto --storage-path gs://",
                    kuberay.rayjob()["spec"]["entrypoint"])
    for pod in pods:  # Workload Identity's service account, and where results go
        assert pod["spec"]["serviceAccountName"] == "raytune-ctr"
        assert {"name": "RAYTUNE_CTR_STORAGE", "value": "gs://BUCKET/raytune-ctr"} in \
            pod["spec"]["containers"][0]["env"]


def test_local_ray_up_yaml_passes_rays_own_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    assert config["docker"]["image"].startswith("raytune-ctr")
    assert not any("docker.sock" in o or "--privileged" in o
                   for o in config["docker"].get("run_options", []))
    with pytest.raises(jsonschema.ValidationError):  # the validator does reject junk
        validate_config(prepare_config(copy.deepcopy(raw) | {"bogus_key": 1}))
