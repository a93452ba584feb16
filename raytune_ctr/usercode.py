"""The user's own code, named by import path ("mypkg.nets:build") in the spec, and
the `code:` folder that holds it: put on this process's import path, and shipped to
every node of a cluster through Ray's runtime_env. A leaf: imports only errors.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from raytune_ctr.errors import SpecError, one_line

# module.path:attribute (the form of setuptools' entry points).
_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_path(name: str) -> bool:
    """Whether a spec name is an import path rather than a registry name (hf:gpt2
    is a Hugging Face model)."""
    return not name.startswith("hf:") and bool(_PATH.match(name))


def folder(code: str | None) -> Path | None:
    """The `code:` folder, absolute; None when the spec names none."""
    if code is None:
        return None
    path = Path(code).expanduser().resolve()
    if not path.is_dir():
        raise SpecError("code", "is not a folder", code)
    return path


def importable(code: str | None) -> None:
    """Put the `code:` folder first on this process's import path (once)."""
    path = folder(code)
    if path is not None and str(path) not in sys.path:
        sys.path.insert(0, str(path))
        importlib.invalidate_caches()


def local_env(code: str | None) -> None:
    """A Ray started by this process runs its workers from this machine's disk and
    inherits this environment: PYTHONPATH is enough, nothing is uploaded."""
    path = folder(code)
    if path is not None:
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if str(path) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(path), *filter(None, paths)])


def runtime_env(code: str | None) -> dict:
    """What ships the `code:` folder to every node of a cluster: Ray's working_dir,
    uploaded once per job and put on each worker's import path."""
    path = folder(code)
    return {"working_dir": str(path)} if path is not None else {}


def resolve(path: str, key: str) -> Callable:
    """The callable an import path names; a one-line SpecError naming `key` if it
    does not resolve."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - an import can raise anything; the user's line
        raise SpecError(key, f"cannot import {module_name} ({one_line(err)}); is it under "
                        "`code:` or installed?", path) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(key, f"{module_name} has no {attr}", path)
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(key, f"{attr} is not callable", path)
    return obj


def call(path: str, key: str, *args):
    """Call the user's factory; whatever it raises becomes one line naming `key`."""
    fn = resolve(path, key)
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - the user's code: any error is their answer
        line = one_line(err)
        if not line.startswith(type(err).__name__):
            line = f"{type(err).__name__}: {line}"
        raise SpecError(key, f"{path} raised {line}", path) from None
