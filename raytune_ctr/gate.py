"""The CPUs of a one-node sweep, handed to its trials first come, first served.

Tune reuses a trial's process only for a trial that asks for the same resources,
so when the worker count is searched, a 1-CPU trial and a 2-CPU trial cannot take
over each other's process, and every change of size starts a fresh one (76
processes for 200 trials in benchmarks/load.py, about 3 s each to import torch).
On a cluster of one node, every trial's process therefore asks Ray for a sliver of
a CPU only (`TOKEN`), and a trial holds its workers' CPUs here, in the coordinator,
while it trains: 1 for a one-worker trial, N for one served by an N-worker pool.
The coordinator holds the node's CPUs from Ray meanwhile (a placement group), so
Ray's accounting stays true; where Ray cannot give them, the sweep goes without.

First come, first served, so a wide trial is never passed over by narrow ones; a
holder or waiter not heard from for `silent_s` (its process died) is dropped.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

TOKEN = {"CPU": 0.001}  # what each trial's process asks Ray for when the gate is on
BEAT_S = 2.0  # a trial holding or waiting beats this often


@dataclass
class _Ask:
    cpus: float
    heard: float


class Gate:
    """First come, first served CPUs. Every method expects `cv` to be held; a
    waiter waits on it, so whoever frees CPUs must `notify_all`."""

    def __init__(self, cpus: float, cv: threading.Condition, silent_s: float):
        self.cpus, self._cv, self._silent_s = cpus, cv, silent_s
        self._held: dict[str, _Ask] = {}
        self._queue: collections.OrderedDict[str, _Ask] = collections.OrderedDict()

    @property
    def free(self) -> float:
        return self.cpus - sum(a.cpus for a in self._held.values())

    def acquire(self, trial_id: str, cpus: float, timeout: float) -> bool:
        """Wait up to `timeout` s for `cpus` CPUs; False: not yet (ask again, which
        keeps the place in the queue). A trial asking again while it holds CPUs
        (Tune restarted it in the same process) gives those back first."""
        if cpus > self.cpus:
            raise ValueError(f"a trial asks for {cpus:g} CPUs; this node has {self.cpus:g}")
        self._release(trial_id)
        end = time.monotonic() + timeout
        ask = self._queue.setdefault(trial_id, _Ask(cpus, time.monotonic()))
        ask.cpus = cpus
        while True:
            ask.heard = time.monotonic()
            if trial_id not in self._queue:  # dropped while it waited: ask again
                return False
            if next(iter(self._queue)) == trial_id and self.free >= cpus - 1e-9:
                del self._queue[trial_id]
                self._held[trial_id] = ask
                self._cv.notify_all()  # the next in line may fit too
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._cv.wait(left)

    def beat(self, trial_id: str) -> bool:
        """A holder is alive; False: it was dropped (silent too long)."""
        if (ask := self._held.get(trial_id)) is None:
            return False
        ask.heard = time.monotonic()
        return True

    def release(self, trial_id: str) -> None:
        self._release(trial_id)
        self._queue.pop(trial_id, None)
        self._cv.notify_all()

    def expire(self) -> list[str]:
        """Drop holders and waiters not heard from for `silent_s`; their ids."""
        now = time.monotonic()
        gone = [t for d in (self._held, self._queue) for t, a in d.items()
                if now - a.heard > self._silent_s]
        for t in gone:
            self._held.pop(t, None)
            self._queue.pop(t, None)
        if gone:
            self._cv.notify_all()
        return gone

    def state(self) -> dict:
        return {"cpus": self.cpus, "held": {t: a.cpus for t, a in self._held.items()},
                "waiting": list(self._queue)}

    def _release(self, trial_id: str) -> None:
        if self._held.pop(trial_id, None) is not None:
            self._cv.notify_all()
