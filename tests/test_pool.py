"""The coordinator's bookkeeping, without Ray: which job goes to which pool, and when
a new pool starts. The pools' Train runs are real in tests/test_leaks.py."""

import pytest

from raytune_ctr import pool

Coordinator = pool.Coordinator.__ray_actor_class__
KEY = pool.PoolKey(2, 0.0, "192.0.2.2")


@pytest.fixture
def coordinator(monkeypatch):
    monkeypatch.setattr(Coordinator, "_watch", lambda self: None)
    c = Coordinator("/nowhere")
    started: list[pool._Pool] = []

    def new_pool(key, ahead=False):  # recorded, not started
        p = pool._Pool(next(c._ids), key, ahead=ahead, up=True)
        c._pools[p.id] = p
        started.append(p)

    monkeypatch.setattr(c, "_new_pool", new_pool)
    return c, started


def _serve(c, started, job_id):
    c.submit(KEY, {"id": job_id, "trial_id": f"t-{job_id}"})
    spec = c.take(started[-1].id, timeout=0)
    assert spec["id"] == job_id


def test_the_next_trial_waits_for_a_pool_ending_a_stopped_trials_job(coordinator):
    c, started = coordinator
    _serve(c, started, "a")
    c.cancel("a")  # ASHA stopped a's trial; its rank 0 is still ending the epoch
    c.submit(KEY, {"id": "b", "trial_id": "t-b"})
    assert len(started) == 1
    assert c.take(started[0].id, timeout=0)["id"] == "b"


def test_a_finished_job_frees_its_pool_for_the_next(coordinator):
    c, started = coordinator
    _serve(c, started, "a")
    c.finish("a", None)
    assert c.next_event("a", timeout=0) == ("done",)  # the trial has its answer
    c.submit(KEY, {"id": "b", "trial_id": "t-b"})
    assert len(started) == 1


def test_two_live_jobs_of_one_size_get_two_pools(coordinator):
    c, started = coordinator
    _serve(c, started, "a")
    c.submit(KEY, {"id": "b", "trial_id": "t-b"})  # a's trial is still training
    assert len(started) == 2


def test_a_pool_stuck_in_a_given_up_job_is_waited_for_only_so_long(coordinator):
    c, started = coordinator
    _serve(c, started, "a")
    c.cancel("a")  # a's trial stopped; its rank 0 is in a long epoch
    c.submit(KEY, {"id": "b", "trial_id": "t-b"})
    assert len(started) == 1
    started[0].given_up -= pool.FREE_SOON_S + 1
    with c._cv:
        c._grow(KEY)  # what the coordinator's watch does every 2 s
    assert len(started) == 2
