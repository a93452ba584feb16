"""How many trials fit side by side, and what each asks Ray for."""

import pytest

from raytune_ctr import checks, plan
from raytune_ctr.spec import ResourceSpec, SpecError


def _spec(**resources_space):
    return checks.from_dict({"search": {"method": "random", "space": {
        k: {"choice": v} for k, v in resources_space.items()}}})


def test_plan_concurrency_never_oversubscribes_and_rejects_what_cannot_fit():
    two = {"CPU": 2.0}
    # Two one-CPU trials fit side by side on 2 cores; 2-worker ones wait their turn.
    assert plan.concurrency(_spec(num_workers=[1, 2]), two, [two]) == 2
    assert plan.concurrency(_spec(num_workers=[2]), two, [two]) == 1
    with pytest.raises(SpecError, match=r"resources.num_workers: 3 workers x 1 CPUs need 3 CPUs but the cluster has 2, got 3"):
        plan.concurrency(_spec(num_workers=[1, 3]), two, [two])
    with pytest.raises(SpecError, match="resources.use_gpu: the cluster has no GPU"):
        plan.concurrency(_spec(use_gpu=[True]), two, [two])
    with pytest.raises(SpecError, match="cpus_per_worker: no node has that many CPUs"):
        plan.concurrency(_spec(cpus_per_worker=[4.0]), {"CPU": 8.0},
                                  [{"CPU": 2.0}] * 4)
    capped = checks.from_dict({"search": {"max_concurrent": 1}})
    assert plan.concurrency(capped, {"CPU": 16.0}, [{"CPU": 16.0}]) == 1


def test_memory_requests_are_planned_per_node_and_rejected_when_they_never_fit():
    gib = 2**30
    nodes = [{"CPU": 8.0, "memory": 10 * gib}, {"CPU": 8.0, "memory": 10 * gib}]
    cluster = {"CPU": 16.0, "memory": 20 * gib}
    # 4 GB workers: two fit on each node, so four one-worker trials run at once.
    assert plan.concurrency(_spec(max_memory_gb=[4.0]), cluster, nodes) == 4
    with pytest.raises(SpecError, match=r"resources.max_memory_gb: no node has that much memory"):
        plan.concurrency(_spec(max_memory_gb=[12.0]), cluster, nodes)
    # 3 workers x 6 GB: 18 GB fits the cluster's 20 in sum, but a trial's workers share a node.
    three = checks.from_dict({"resources": {"num_workers": 3, "max_memory_gb": 6.0},
                                "train": {"batch_size": 64}})
    with pytest.raises(SpecError, match=r"3 workers x 6 GB do not fit"):
        plan.concurrency(three, cluster, nodes)




def test_cpus_per_trial_splits_the_same_cpus_over_the_workers():
    one, two = (ResourceSpec(num_workers=n, cpus_per_trial=2.0) for n in (1, 2))
    assert (one.worker_cpus, one.threads) == (2.0, 2) and (two.worker_cpus, two.threads) == (1.0, 1)
    assert ResourceSpec().worker_cpus == 1.0  # neither set: one CPU per worker
    q = checks.load("experiments/configs/quickstart.yaml")
    # Every quickstart trial holds both cores of a 2-core machine: one at a time.
    assert plan.concurrency(q, {"CPU": 2.0}, [{"CPU": 2.0}]) == 1
    with pytest.raises(SpecError, match="resources.cpus_per_trial: set it or cpus_per_worker, "
                                        "not both, got 2.0"):
        checks.from_dict({"resources": {"cpus_per_trial": 2.0, "cpus_per_worker": 1.0}})


def test_a_multi_worker_trial_must_fit_one_node():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    # 4 CPUs in all, but a trial's DDP workers run beside it, on its node.
    with pytest.raises(SpecError, match=r"3 workers x 1 CPUs need 3 CPUs but a trial's workers "
                                        r"share one node; the largest has 2"):
        plan.concurrency(_spec(num_workers=[3]), {"CPU": 4.0}, nodes)
    assert plan.concurrency(_spec(num_workers=[2]), {"CPU": 4.0}, nodes) == 2


def test_a_trial_reserves_every_cpu_its_workers_use_and_gpus_only_when_it_trains():
    assert plan.trial_resources(ResourceSpec(cpus_per_trial=2.0)) == {"CPU": 2.0}
    assert plan.trial_resources(ResourceSpec(num_workers=2, cpus_per_worker=1.0,
                                        max_memory_gb=1.0)) == {"CPU": 2.0, "memory": 2 * 2**30}
    assert plan.trial_resources(ResourceSpec(use_gpu=True, gpus_per_worker=0.5)) == {"CPU": 1.0,
                                                                                 "GPU": 0.5}
    # A pool's workers hold their own GPUs; the relay holds the CPUs.
    assert plan.trial_resources(ResourceSpec(num_workers=2, use_gpu=True)) == {"CPU": 2.0}
