"""The errors raytune_ctr raises for bad input: each message is one line."""

from __future__ import annotations

import dataclasses
from typing import Any


class SpecError(ValueError):
    """A spec (or a command-line value) that breaks a rule; the message is one line."""

    def __init__(self, key: str, rule: str, value: Any = dataclasses.MISSING):
        self.key, self.rule, self.value = key, rule, value
        got = "" if value is dataclasses.MISSING else f", got {value!r}"
        super().__init__(f"{key}: {rule}{got}")


class DataError(RuntimeError):
    """A dataset (or pretrained weights) that cannot be found, fetched or read; the
    message is one line."""


def one_line(err: BaseException) -> str:
    """The most specific line of a (possibly wrapped, multi-line) error: Ray and Tune
    wrap a trial's error in tracebacks, whose last `SomethingError: ...` line is it;
    a plain message's first line is its headline."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return ln
    return lines[0] if lines else type(err).__name__
