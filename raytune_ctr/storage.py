"""Where results go: a local folder, or a URI such as gs://bucket/prefix.

Tune and Train take a URI storage path themselves (through pyarrow.fs); this
module checks that a URI results folder is new and copies the local folder
(spec, trials tables, Optuna study, report, plots) up to it.
"""

from __future__ import annotations

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


def upload(local_dir: Path, uri: str) -> None:
    """Copy every file under local_dir to the folder `uri` (created as needed)."""
    filesystem, path = fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    fs.copy_files(str(Path(local_dir).resolve()), path,
                  source_filesystem=fs.LocalFileSystem(), destination_filesystem=filesystem)
