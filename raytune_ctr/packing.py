"""What a trial hands Tune each epoch: the values Tune acts on as they are, and every
other metric packed in one JSON string.

Tune keeps, in the driver and for every trial, running statistics of each number a
trial reports (max, min, mean, two moving averages and their deques) and a JSON copy
of them: about 3 KB a number a trial (benchmarks/tune_record.py), 110 KB of the
147 KB a load.py trial cost the driver. A string it keeps as it is. The driver's
tables and live view unpack it (`unpack`), and so does a results table built from
Tune's record after a resume.

Trial processes import this module: the standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

PACKED = "packed_metrics"


def tune_keys(spec) -> list[str]:
    """What Tune's searcher, scheduler and stopper read from a result: the objectives,
    the epoch, ASHA's time attribute and target mode's metric and clock."""
    s = spec.search
    keys = {"epoch", *s.objectives}
    if s.scheduler == "asha":
        keys.add(s.asha.time_attr)
    if s.goal is not None:
        (metric, _), = s.goal.target.items()
        keys |= {metric, s.goal.minimize}
    return sorted(keys)


def pack(metrics: Mapping[str, Any], keep: Iterable[str]) -> dict:
    """`metrics` with every key not in `keep` moved into one JSON string."""
    keep = set(keep)
    out = {k: v for k, v in metrics.items() if k in keep}
    rest = {k: v for k, v in metrics.items() if k not in keep}
    if rest:
        out[PACKED] = json.dumps(rest, default=_plain)
    return out


def unpack(result: Mapping[str, Any]) -> dict:
    """A result (or a row of Tune's record) with its packed metrics back as keys."""
    out = dict(result)
    packed = out.pop(PACKED, None)
    if isinstance(packed, str):
        # Packed values win: in Tune's record of a sweep resumed across this change,
        # a row's columns from older rows hold NaN. No key is in both otherwise.
        out |= json.loads(packed)
    return out


def _plain(value: Any) -> Any:
    try:
        return value.item()  # a numpy or torch scalar
    except (AttributeError, ValueError, RuntimeError):  # not one, or more than one value
        pass
    raise TypeError(f"a reported metric must be a number, text or bool, not {type(value).__name__}")
