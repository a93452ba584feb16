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


def command() -> None:
    """Mark when this process started (before its imports) and, at exit, when it ends:
    registered before Ray's own exit handler, so it runs after Ray's shutdown."""
    import atexit

    if not os.environ.get("RAYTUNE_CTR_TRACE"):
        return
    mark("command_start", t=process_start())
    atexit.register(mark, "command_exit")


def process_start() -> float | None:
    """When this process started (Unix seconds), before its imports; None off Linux."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{os.getpid()}/stat") as f:  # field 22: start, in ticks after boot
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / ticks
        with open("/proc/uptime") as f:
            boot = time.time() - float(f.read().split()[0])
    except (OSError, ValueError):
        return None
    return boot + started


def mark(phase: str, t: float | None = None, **fields) -> None:
    path = os.environ.get("RAYTUNE_CTR_TRACE")
    if not path:
        return
    line = json.dumps({"t": time.time() if t is None else t, "pid": os.getpid(),
                       "phase": phase, "trial": _trial} | fields, default=str)
    with open(path, "a") as f:  # one short write per line: lines from processes don't mix
        f.write(line + "\n")
