"""The spec's names, resolved where they live: registry names in data.py and
models.py, import paths in the user's code (usercode.py). spec.py checks a spec's
shape and rules without importing any of them, so it stays a leaf for every
section; this is the one module that imports all three.

`load` and `from_dict` are spec's, then these checks: what the CLI and the
benchmarks call before anything runs. A results folder's saved spec is read by
spec's own (results.load): its names were checked when it ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raytune_ctr import data, models, usercode
from raytune_ctr import spec as spec_lib
from raytune_ctr.errors import SpecError
from raytune_ctr.spec import Spec, candidates


def load(path: str | Path, overrides: dict[str, dict] | None = None,
         key: str = "--config") -> Spec:
    spec = spec_lib.load(path, overrides, key)
    check(spec)
    return spec


def from_dict(mapping: Any) -> Spec:
    spec = spec_lib.from_dict(mapping)
    check(spec)
    return spec


def check(spec: Spec) -> None:
    """Every name resolves: the `code:` folder goes on the import path first; a
    training function imports; models and the dataset exist, fit each other (image
    or text) and the input shape; a user's factories are imported (and the dataset's
    called for its shape)."""
    usercode.importable(spec.code)
    if spec.runner == "function":
        usercode.resolve(str(spec.train.function), "train.function")
    if spec.runner != "loop":
        return
    own_data = usercode.is_path(spec.data.dataset)
    shape = data.input_shape(spec.data)
    text = False if own_data else data.entry(spec.data.dataset).text
    for m in candidates(spec)["model"]:
        models.check(m, shape, key="train.model")
        if (models.hf_source(m) is not None) != text:
            raise SpecError("train.model", f"{'a text' if text else 'an image'} dataset "
                            f"({spec.data.dataset}) needs {'a text' if text else 'an image'} "
                            "model", m)
    if text and True in candidates(spec)["channels_last"]:
        raise SpecError("train.channels_last", "is for conv nets; text batches are token ids",
                        True)
    # A user's dataset is in memory when its factory returns tensors: known once loaded.
    if spec.data.data_on_device is True and not own_data \
            and not data.entry(spec.data.dataset).in_memory:
        raise SpecError("data.data_on_device", f"needs an in-memory dataset, one of "
                        f"{sorted(data.IN_MEMORY)}", True)
