"""The one-node CPU gate (gate.py), through the coordinator's calls, without Ray:
first come, first served, and a dead trial's CPUs come back. A gated sweep runs
for real in tests/test_load.py (its load has 1- and 2-worker trials)."""

import threading
import time

import pytest

from raytune_ctr import gate, pool

Coordinator = pool.Coordinator.__ray_actor_class__


@pytest.fixture
def coordinator(monkeypatch):
    monkeypatch.setattr(Coordinator, "_watch", lambda self: None)
    c = Coordinator("/nowhere")
    c._gate = gate.Gate(2.0, c._cv, pool.SILENT_S)  # open_gate's, without its placement group
    return c


def _ask_in_thread(c, trial_id, cpus):
    got = threading.Event()

    def ask():
        while not c.acquire(trial_id, cpus, 0.05):
            pass
        got.set()

    threading.Thread(target=ask, daemon=True).start()
    return got


def test_a_wide_trial_is_not_passed_over_by_narrow_ones(coordinator):
    c = coordinator
    assert c.acquire("narrow-1", 1.0, 0)
    wide = _ask_in_thread(c, "wide", 2.0)
    time.sleep(0.2)  # the wide trial is in line
    # One CPU is free, but the wide trial asked first.
    assert not c.acquire("narrow-2", 1.0, 0.2)
    assert not wide.is_set()
    c.release("narrow-1")
    assert wide.wait(2)
    assert c.gate()["held"] == {"wide": 2.0}
    c.release("wide")
    assert c.acquire("narrow-2", 1.0, 1)


def test_trials_that_fit_side_by_side_hold_cpus_at_once(coordinator):
    c = coordinator
    assert c.acquire("a", 1.0, 0) and c.acquire("b", 1.0, 0)
    assert c.gate()["held"] == {"a": 1.0, "b": 1.0}
    assert not c.acquire("c", 1.0, 0.05)


def test_a_silent_holder_gives_its_cpus_back(coordinator, monkeypatch):
    c = coordinator
    assert c.acquire("dead", 2.0, 0)
    assert c.beat("dead")
    later = time.monotonic() + pool.SILENT_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    with c._cv:
        assert c._gate.expire() == ["dead"]
    assert not c.beat("dead")  # its process hears it was dropped
    assert c.acquire("next", 2.0, 0)


def test_a_trial_restarted_in_the_same_process_does_not_hold_twice(coordinator):
    c = coordinator
    assert c.acquire("t", 2.0, 0)
    assert c.acquire("t", 2.0, 0)  # Tune restarted it; its first hold ended with it
    assert c.gate()["held"] == {"t": 2.0}


def test_an_ask_beyond_the_node_is_an_error_not_a_wait(coordinator):
    with pytest.raises(ValueError, match="asks for 3 CPUs; this node has 2"):
        coordinator.acquire("huge", 3.0, 10)
