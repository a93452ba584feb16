"""Validate KubeRay resources against the KubeRay CRDs, as the API server would:
schema defaults filled in first, unknown fields rejected.

The CRD files (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml, KubeRay v1.7.0) are
data, not part of this package: point RAYTUNE_CTR_KUBERAY_CRDS at their folder.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jsonschema
import yaml

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
ENV = "RAYTUNE_CTR_KUBERAY_CRDS"


def crd_dir() -> Path | None:
    """$RAYTUNE_CTR_KUBERAY_CRDS, else ../shared/kuberay beside a checkout; None if absent."""
    candidates = [os.environ.get(ENV), Path(__file__).resolve().parents[3] / "shared" / "kuberay"]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in CRD_FILES.values()):
            return Path(c)
    return None


@functools.cache
def openapi_schema(kind: str, version: str = "v1") -> dict:
    folder = crd_dir()
    if folder is None:
        raise FileNotFoundError(f"no KubeRay CRDs: set {ENV} to a folder holding "
                                f"{', '.join(CRD_FILES.values())}")
    # libyaml where PyYAML has it: the CRDs are 1-2 MB, ~10 s in pure Python.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((folder / CRD_FILES[kind]).read_text(), Loader=loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return _strict(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"{kind} has no version {version}")


def _strict(schema: dict) -> dict:
    """Structural-schema pruning as a rule: objects with `properties` and no
    x-kubernetes-preserve-unknown-fields take no other keys."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for sub in s.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties"):
            walk(s.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(key, []):
                walk(sub)

    walk(schema)
    return schema


def with_defaults(obj, schema: dict):
    """A copy of obj with the schema's defaults filled in, the way the API server does."""
    obj = copy.deepcopy(obj)

    def fill(o, s):
        if isinstance(o, dict) and "properties" in s:
            for name, sub in s["properties"].items():
                if name not in o and "default" in sub:
                    o[name] = copy.deepcopy(sub["default"])
                if name in o:
                    fill(o[name], sub)
        elif isinstance(o, list) and isinstance(s.get("items"), dict):
            for item in o:
                fill(item, s["items"])

    fill(obj, schema)
    return obj


def validate(resource: dict) -> dict:
    """Raise jsonschema.ValidationError (naming the path) or return the defaulted resource."""
    kind = resource.get("kind")
    if kind not in CRD_FILES:
        raise ValueError(f"kind: not a KubeRay kind we validate, got {kind!r}")
    schema = openapi_schema(kind)
    body = {k: v for k, v in resource.items() if k != "metadata"}  # ObjectMeta: API server's
    full = with_defaults(body, schema)
    jsonschema.Draft7Validator(schema).validate(full)
    return full
