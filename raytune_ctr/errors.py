"""The errors raytune_ctr raises for bad input: each message is one line."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any


class SpecError(ValueError):
    """A spec (or a command-line value) that breaks a rule; the message is one line."""

    def __init__(self, key: str, rule: str, value: Any = dataclasses.MISSING):
        self.key, self.rule, self.value = key, rule, value
        got = "" if value is dataclasses.MISSING else f", got {value!r}"
        super().__init__(f"{key}: {rule}{got}")

    def __reduce__(self):  # Ray pickles a trial's error to the driver
        args = (self.key, self.rule) if self.value is dataclasses.MISSING else \
            (self.key, self.rule, self.value)
        return (type(self), args)


class DataError(RuntimeError):
    """A dataset (or pretrained weights) that cannot be found, fetched or read; the
    message is one line."""


class StorageError(RuntimeError):
    """The results folder cannot be written mid-sweep (a full disk, a lost mount); the
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


def from_pydantic(err, prefix: str = "",
                  known: Callable[[tuple], list[str]] | None = None) -> SpecError:
    """One line for pydantic's ValidationError: the first problem's key (under
    `prefix`), rule and value; for an unknown key, a "did you mean" from `known(loc)`,
    the field names at the key's parent."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if p not in ("function-after", "tuple[...]", "[key]"))
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    if e["type"] == "unexpected_keyword_argument":
        hint = difflib.get_close_matches(str(loc[-1]), known(loc[:-1]) if known else [], n=1)
        return SpecError(key, "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
                         e.get("input"))
    if e["type"] == "missing":  # the input is the parent mapping: no value to show
        return SpecError(key, "required key")
    rule = e["msg"].removeprefix("Value error, ")
    rule = rule[0].lower() + rule[1:]
    if e["type"] == "value_error" and ", got " in rule:  # our own check named the value
        return SpecError(key, rule)
    return SpecError(key, rule, e.get("input"))
