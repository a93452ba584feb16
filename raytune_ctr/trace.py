"""Phase stamps for finding where a trial's time goes (benchmarks/trial_overhead.py).

With `RAYTUNE_CTR_TRACE=FILE` in the environment of the driver that starts Ray,
every trial and worker process appends one JSON line per phase boundary to FILE:
`{"t": unix seconds, "pid": ..., "phase": ..., "trial": ...}`. Unset, `mark` does
nothing.
"""

from __future__ import annotations

import json
import os
import time

_trial: str | None = None  # the trial this process is working for now


def set_trial(trial_id: str | None) -> None:
    global _trial
    _trial = trial_id


def mark(phase: str, **fields) -> None:
    path = os.environ.get("RAYTUNE_CTR_TRACE")
    if not path:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "phase": phase, "trial": _trial}
                      | fields, default=str)
    with open(path, "a") as f:  # one short write per line: lines from processes don't mix
        f.write(line + "\n")
