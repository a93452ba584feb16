"""Where results go: a local folder, or a URI such as gs://bucket/prefix.

Tune and Train take a URI storage path themselves (through pyarrow.fs); this
module checks that a URI results folder is new and copies the local folder
(spec, trials tables, Optuna study, report, plots) up to it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from pyarrow import fs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(uri: str, name: str) -> str:
    return posixpath.join(uri.rstrip("/"), name)


def exists(uri: str) -> bool:
    """Whether anything is at `uri`; OSError or ValueError when it cannot be reached."""
    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def can_write(uri: str) -> None:
    """Write and delete a small object under `uri`; OSError when it cannot be written."""
    filesystem, path = fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)  # a folder where there are folders
    probe = f"{path.rstrip('/')}/.raytune_ctr-write-probe-{os.getpid()}"
    with filesystem.open_output_stream(probe) as f:
        f.write(b"ok")
    filesystem.delete_file(probe)


def delete(uri: str) -> None:
    """Delete the file at `uri`, if there is one."""
    filesystem, path = fs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(path).type != fs.FileType.NotFound:
        filesystem.delete_file(path)


def upload(local_dir: Path, uri: str) -> None:
    """Copy every file under local_dir to the folder `uri` (created as needed)."""
    filesystem, path = fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    fs.copy_files(str(Path(local_dir).resolve()), path,
                  source_filesystem=fs.LocalFileSystem(), destination_filesystem=filesystem)


def download(uri: str, local_dir: Path) -> None:
    """Copy the files at the top of folder `uri` (the spec, the Optuna study; not the
    checkpoints) into local_dir, leaving files already there alone."""
    filesystem, path = fs.FileSystem.from_uri(uri)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    for info in filesystem.get_file_info(fs.FileSelector(path)):
        dest = local_dir / info.base_name
        if info.type == fs.FileType.File and not dest.exists():
            fs.copy_files(info.path, str(dest), source_filesystem=filesystem,
                          destination_filesystem=fs.LocalFileSystem())
