"""Where results go: a local folder, or a URI such as gs://bucket/prefix.

Tune and Train take a URI storage path themselves (through pyarrow.fs); this
module checks that a URI results folder is new and copies the local folder
(spec, trials tables, Optuna study, report, plots) up to it. A local (or mounted)
folder is given to Tune as `whole_files()`, so a driver killed while Tune copies
its record over the stored one leaves the last whole copy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pickletools
import posixpath
import uuid
from pathlib import Path

import pyarrow as pa
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


# Tune's own state at the top of a sweep's folder, written anew by each session (a
# resume is one) and copied there every few seconds; it reads the newest of each.
TUNE_RECORD = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
               "basic-variant-state-*.json", "callback-states-*.pkl")


def is_record(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in TUNE_RECORD)


def readable(data: bytes) -> bool:
    """Whether a record file holds one whole JSON document or pickle (Tune writes both
    under .json names). The pickle is walked, not loaded: nothing in it runs."""
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        for _ in pickletools.genops(data):
            pass
        return bool(data)
    except ValueError:
        return False


def whole_files() -> fs.PyFileSystem:
    """The local filesystem, but Tune's record there is only ever replaced whole.

    Tune copies its record (experiment_state, the searcher's state) from the driver's
    staging folder to the stored one every few seconds, and pyarrow truncates each
    file before it writes it. A head node lost mid-copy left them empty, and Tune's
    resume then starts the sweep afresh. Here a file is written beside its place under
    a hidden name, and renamed over it when closed (rename is atomic on POSIX and NFS)
    if it is whole: a record file must parse (Tune rewrites its staging copy in place,
    so a copy can catch it half written) and is synced to disk first. A new file in a
    checkpoint folder is written in place, at native speed: a checkpoint cut short is
    passed over (results.newest_checkpoint). Object stores (gs://) need none of this:
    an object appears whole or not at all."""
    return fs.PyFileSystem(_WholeFiles())


class _WholeFiles(fs.FileSystemHandler):
    def __init__(self) -> None:
        self._fs = fs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, _WholeFiles)

    def __reduce__(self):  # Tune pickles the filesystem into every trial
        return _WholeFiles, ()

    def open_output_stream(self, path, metadata):
        folder = posixpath.basename(posixpath.dirname(path))
        if folder.startswith("checkpoint_") and not os.path.lexists(path):
            return self._fs.open_output_stream(path)
        return pa.PythonFile(_Renamed(path, is_record(posixpath.basename(path))), mode="w")

    def get_type_name(self):
        return "local-whole-files"

    def normalize_path(self, path):
        return self._fs.normalize_path(path)

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("will not delete the contents of /")

    def delete_file(self, path):
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._fs.move(src, dest)

    def copy_file(self, src, dest):
        self._fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._fs.open_input_file(path)

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path)


class _Renamed:
    """A file written under a hidden name and renamed to `path` once closed whole. One
    whose write failed, a record that does not parse, or one dropped unclosed (pyarrow
    drops the stream of a copy that failed) is removed instead."""

    def __init__(self, path: str, record: bool) -> None:
        self.path, self._record = path, record
        self._part = posixpath.join(posixpath.dirname(path),
                                    f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.part")
        # Unbuffered: a write that fails (a full disk) fails here, not in a later flush.
        self._f = open(self._part, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self.closed, self._failed = False, False

    def write(self, data) -> int:
        try:
            view, done = memoryview(data), 0
            while done < len(view):
                done += self._f.write(view[done:])
            return done
        except BaseException:
            self._failed = True
            raise

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            whole = not self._failed
            if whole and self._record:
                os.fsync(self._f.fileno())  # the record survives the host's reboot too
                with open(self._part, "rb") as f:
                    whole = readable(f.read())
            if whole:
                self._f.close()
                os.replace(self._part, self.path)
        finally:
            self._f.close()
            if os.path.lexists(self._part):
                os.unlink(self._part)

    def __del__(self) -> None:
        if not self.closed:
            self._failed = True
            self.close()
