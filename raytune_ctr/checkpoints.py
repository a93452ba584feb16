"""Which of a trial's checkpoints stay whole.

Tune keeps every checkpoint a trial reports in its record (CheckpointConfig with no
num_to_keep). With num_to_keep=1 it deleted the old one itself, but then it also
saved its whole experiment record after every checkpoint, a cost that grows with the
trials so far (docs/benchmarks.md), and a driver killed between the delete and the
save left a record naming a deleted checkpoint. Now the record is saved every ten
seconds or so (Tune's own period), and `Replaced`, in the driver, empties each
checkpoint the moment a newer one of its trial is taken: the folder stays, with only
a marker in it, so whatever an older record names still exists. A restarted trial
goes on from the newest whole checkpoint in its folder, whichever one Tune's record
names, or none (`results.last_state`).
"""

from __future__ import annotations

import logging
import posixpath

from pyarrow import fs
from ray.tune import Callback

from raytune_ctr.errors import one_line

log = logging.getLogger(__name__)

MARKER = "replaced"  # what an emptied checkpoint folder holds (an empty one vanishes from a bucket)


class Replaced(Callback):
    """Empty a trial's older checkpoints once Tune has taken a newer one."""

    def __init__(self) -> None:
        self._newest: dict[str, str] = {}  # trial id -> its newest checkpoint's path

    def __getstate__(self):  # saved in Tune's record: nothing of the sweep's
        return {}

    def __setstate__(self, state):
        self.__init__()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        before = self._newest.get(trial.trial_id)
        self._newest[trial.trial_id] = checkpoint.path
        # Whatever fails here must not reach Tune: it would skip recording the checkpoint.
        try:
            filesystem = checkpoint.filesystem
            if before is not None:
                old = [before] if before != checkpoint.path else []
            else:  # its first in this driver: whatever a run before this one left
                old = _others(filesystem, checkpoint.path)
            for path in old:
                empty(filesystem, path)
        except Exception as err:  # noqa: BLE001 - the trial goes on; the space is all that is lost
            log.warning("could not empty the checkpoints %s replaced (%s)", checkpoint.path,
                        one_line(err))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._newest.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._newest.pop(trial.trial_id, None)


def _others(filesystem: fs.FileSystem, path: str) -> list[str]:
    """The trial's other checkpoint folders that still hold more than the marker (not
    the empty stand-ins a resume made, which it removes itself)."""
    out = []
    for info in filesystem.get_file_info(fs.FileSelector(posixpath.dirname(path))):
        if info.type == fs.FileType.Directory and info.base_name.startswith("checkpoint_") \
                and info.path != path:
            inside = filesystem.get_file_info(fs.FileSelector(info.path, recursive=False))
            if [i.base_name for i in inside] not in ([], [MARKER]):
                out.append(info.path)
    return out


def empty(filesystem: fs.FileSystem, path: str) -> None:
    """Leave only the marker in a checkpoint folder (marker first: a kill midway
    leaves an older checkpoint, which is never the newest, not a missing one)."""
    with filesystem.open_output_stream(posixpath.join(path, MARKER)):
        pass
    for info in filesystem.get_file_info(fs.FileSelector(path, recursive=False)):
        if info.base_name == MARKER:
            continue
        if info.type == fs.FileType.Directory:
            filesystem.delete_dir(info.path)
        else:
            filesystem.delete_file(info.path)
