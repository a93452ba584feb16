"""A trial process's output, read line by line into epochs: tier 3's metric regexes
(a line the first metric matches ends an epoch) and the tagged JSON lines of
`raytune_ctr.report` (tier 2, or any script that prints them). Epoch times are the
times between those lines. A leaf: the spec checks regexes with it before any
compute, and script.py runs it.
"""

from __future__ import annotations

import math
import re
import shlex
import string
import time
from collections.abc import Callable

from raytune_ctr import reporter
from raytune_ctr.errors import SpecError, one_line
from raytune_ctr.metrics import METRICS

# Measured by the runner, not read from the output.
TIMED = ("epoch", "epoch_time_s", "train_time_s", "wall_time_s", "cost_usd")
GROUPS = ({"value"}, {"correct", "total"})
PYTHONS = ("python", "python3")  # a command's python: this one natively, torchrun's with N ranks


def placeholders(template: str, key: str = "script.command") -> list[str]:
    """The field names a command template names in braces, in order."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise SpecError(key, f"is not a template ({err}); write a literal brace as {{{{ or }}}}",
                        template) from None
    fields = []
    for f in names:
        name = f.split("[", 1)[0].split(".", 1)[0]  # {hidden[0]} names hidden
        if not name.isidentifier():
            raise SpecError(key, f"{{{f}}} is not a field name; use {{batch_size}}, {{lr}}, ...",
                            template)
        fields.append(name)
    return list(dict.fromkeys(fields))


def render(template: str, fields: dict, key: str = "script.command") -> list[str]:
    """The command line of one trial: the template's placeholders filled from its
    fields (JSON types: lists, not tuples), split as a shell would."""
    try:
        return shlex.split(template.format(**fields))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise SpecError(key, f"cannot be filled from the trial's fields ({type(err).__name__}: "
                        f"{one_line(err)})", template) from None


def compile_metrics(metrics: dict[str, str]) -> dict[str, re.Pattern]:
    """Each metric's regex, compiled; one line naming the metric when one is not a
    regex or has neither a `value` group nor `correct` and `total`."""
    out = {}
    for name, text in metrics.items():
        key = f"script.metrics.{name}"
        if name not in METRICS:
            raise SpecError(key, f"unknown metric; one of {sorted(set(METRICS) - set(TIMED))}")
        if name in TIMED:
            raise SpecError(key, "is measured by raytune_ctr (the time between matching "
                            "lines), not read from the output")
        try:
            pattern = re.compile(text)
        except re.error as err:
            raise SpecError(key, f"is not a regular expression ({err})", text) from None
        if set(pattern.groupindex) not in GROUPS:
            raise SpecError(key, "needs one named group (?P<value>...), or two, (?P<correct>...) "
                            f"and (?P<total>...); it has {sorted(pattern.groupindex) or 'none'}",
                            text)
        out[name] = pattern
    return out


def value(match: re.Match) -> float:
    """A match's number: `value`, or 100 x correct / total (exact counts, not the
    rounded percentage a script prints)."""
    groups = match.groupdict()
    if "value" in groups:
        return float(groups["value"])
    return 100.0 * float(groups["correct"]) / float(groups["total"])


def check_samples(patterns: dict[str, re.Pattern], samples: tuple[str, ...]) -> dict[str, float]:
    """Each metric's value in the spec's sample lines; one line for a metric that
    matches none of them, or reads no number."""
    found = {}
    for name, pattern in patterns.items():
        for line in samples:
            m = pattern.search(line)
            if m:
                try:
                    found[name] = value(m)
                except (ValueError, ZeroDivisionError) as err:
                    raise SpecError(f"script.metrics.{name}", f"reads no number from the "
                                    f"sample {line!r} ({one_line(err)})",
                                    pattern.pattern) from None
                break
        else:
            if samples:
                raise SpecError(f"script.metrics.{name}", f"matches none of script.sample "
                                f"{list(samples)}", pattern.pattern)
    return found


class Reader:
    """Turns output lines into epochs. `feed` returns an epoch's metrics when a line
    ends one: {epoch, epoch_time_s, <metrics>, [checkpoint]}."""

    def __init__(self, patterns: dict[str, re.Pattern], first_epoch: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.patterns = patterns
        self.first = next(iter(patterns), None)  # its match ends an epoch
        self.clock = clock
        self.started = self.last = clock()
        self.setup_s: float | None = None  # process start to its first line
        self.pending: dict[str, float] = {}
        self.epoch = first_epoch  # a resumed run counts on from its checkpoint's
        self.epochs = 0  # read in this run
        self.train_s = 0.0  # the epochs' times so far in this run
        self.lines = 0
        self.last_line = ""

    def feed(self, line: str, at: float | None = None) -> dict | None:
        """`at`: when the line arrived (default: now)."""
        now = self.clock() if at is None else at
        line = line.rstrip("\n")
        self.lines += 1
        if line.strip():
            self.last_line = line
        obj = reporter.tagged(line)
        if obj is not None and obj.get("event") == "start":  # set-up ends here (so far)
            if self.epochs == 0:
                self.setup_s = None
                self._set_up(now)
            return None
        if obj is not None:
            return self._epoch({k: (float("nan") if v is None else v) for k, v in obj.items()}, now)
        ends = False
        for name, pattern in self.patterns.items():  # every metric on the line, then the epoch
            m = pattern.search(line)
            if m:
                try:
                    self.pending[name] = value(m)
                except (ValueError, ZeroDivisionError):
                    continue  # a number the script printed oddly: not this metric's line
                ends = ends or name == self.first
        if ends:
            got, self.pending = self.pending, {}
            return self._epoch(got, now)
        if self.epochs == 0 and line.strip():
            self._set_up(now)
        return None

    def _set_up(self, now: float) -> None:
        """Start-up ends at the first line a script prints (pytorch/examples print
        the first batch's loss), or when a training function is called; the first
        epoch's time counts from here, as our loop's does from its set-up's end."""
        if self.setup_s is None:
            self.last = now
            self.setup_s = now - self.started

    def _epoch(self, metrics: dict, now: float) -> dict:
        given = metrics.pop("epoch", None)
        ok = isinstance(given, int | float) and math.isfinite(given)
        self.epoch = int(given) if ok else self.epoch + 1  # type: ignore[arg-type]
        self.epochs += 1
        self.train_s += now - self.last
        out = {"epoch": self.epoch, "epoch_time_s": now - self.last} | metrics
        if self.epochs == 1 and self.setup_s is not None:
            out["setup_time_s"] = self.setup_s
        self.last = now
        return out

    def silent(self, what: str) -> str:
        """Why no epoch came: lines read, and the last of them."""
        last = f"; the last: {self.last_line[-200:]!r}" if self.last_line else ""
        return f"no line matched {what}: read {self.lines} lines{last}"
