"""Files up and down as tar streams, as `docker cp` and `kubectl cp` move them: the
one copy both command runners (docker exec, pod exec) use for `ray rsync-up/down`."""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
from collections.abc import Callable

Keep = Callable[[tarfile.TarInfo], "tarfile.TarInfo | None"]


def excluding(patterns: list[str] | None) -> Keep:
    """A tar filter that drops members matching rsync_exclude's glob patterns."""
    patterns = patterns or []

    def keep(info: tarfile.TarInfo):
        base = info.name.rsplit("/", 1)[-1]
        hit = any(fnmatch.fnmatch(info.name, p) or fnmatch.fnmatch(base, p) for p in patterns)
        return None if hit else info
    return keep


def pack(source: str, target: str, keep: Keep | None = None) -> tuple[bytes, str]:
    """A local file or folder as (tar bytes, folder to unpack them in on the node).
    A folder's contents go into target (rsync's `src/ dst`); a file becomes target."""
    buf = io.BytesIO()
    target = target.rstrip("/") or "/"
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if os.path.isdir(source):
            tar.add(source, arcname=".", filter=keep)
            dest = target
        else:
            tar.add(source, arcname=os.path.basename(target), filter=keep)
            dest = os.path.dirname(target) or "."
    return buf.getvalue(), dest


def unpack(data: bytes, root: str, target: str, keep: Keep | None = None) -> None:
    """Unpack a stream whose top member is `root` (a folder's contents go into target;
    a file goes to target, or into it if target is a folder)."""
    keep = keep or (lambda info: info)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        top = next((m for m in members if os.path.normpath(m.name) == os.path.normpath(root)),
                   members[0] if members else None)
        if top is None:
            raise FileNotFoundError(f"empty archive for {root!r}")
        if top.isdir():
            os.makedirs(target, exist_ok=True)
            for m in members:
                m.name = os.path.relpath(m.name, top.name)
                if m.name != "." and keep(m):
                    tar.extract(m, target, filter="data")
            return
        dest = os.path.join(target, os.path.basename(top.name)) if os.path.isdir(target) \
            else target
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        src = tar.extractfile(top)
        if src is None:  # a link or device, not a file
            raise FileNotFoundError(f"{top.name!r} in the archive of {root!r} is not a regular file")
        with open(dest, "wb") as f:
            f.write(src.read())
