"""How many trials fit side by side on the connected cluster, and what one asks Ray for.

A trial's Tune actor reserves every CPU its workers use (and its GPU when it trains
itself) as one bundle on one node; a multi-worker trial's DDP workers run beside it
on that node holding only a token (pool.py). So a trial's whole request is one
bundle, and a request no node can hold fails before anything runs.
"""

from __future__ import annotations

import math

from raytune_ctr.errors import SpecError
from raytune_ctr.spec import ResourceSpec, Spec, all_resources


def trial_resources(res: ResourceSpec, own_process: bool = False) -> dict[str, float]:
    """What a trial's Tune actor reserves: every CPU (and memory) its workers use; the
    GPUs too when it trains itself or starts the user's process (a pool's workers
    hold their own GPUs)."""
    n = res.num_workers
    req = {"CPU": n * res.worker_cpus}
    if res.use_gpu and (n == 1 or own_process):
        req["GPU"] = n * res.gpus_per_worker
    if res.max_memory_gb:
        req["memory"] = n * res.max_memory_gb * 2**30  # Ray counts memory in bytes
    return req


def plan(spec: Spec) -> int:
    """Check the spec against the running cluster; return how many trials may run at once."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return concurrency(spec, ray.cluster_resources(), nodes)


def concurrency(spec: Spec, cluster: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many trials may run at once; raises `SpecError` when a trial can never fit.

    Each trial asks for `trial_resources` as one bundle, so no trial ever holds part
    of what another needs: trials that do not fit side by side wait for their turn.
    Tune may start as many trials as the smallest fit side by side.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    node_cpus = max((n.get("CPU", 0.0) for n in nodes), default=cpus)
    node_gpus = max((n.get("GPU", 0.0) for n in nodes), default=gpus)
    fits = []
    for res in all_resources(spec):
        need_cpu = res.num_workers * res.worker_cpus
        need_gpu = res.num_workers * res.gpus_per_worker if res.use_gpu else 0.0
        if res.use_gpu and gpus == 0:
            raise SpecError("resources.use_gpu", "the cluster has no GPU", True)
        if res.worker_cpus > node_cpus:
            raise SpecError("resources.cpus_per_worker",
                            f"no node has that many CPUs (largest: {node_cpus:g})",
                            res.worker_cpus)
        if res.use_gpu and res.gpus_per_worker > node_gpus:
            raise SpecError("resources.gpus_per_worker",
                            f"no node has that many GPUs (largest: {node_gpus:g})",
                            res.gpus_per_worker)
        where = "the cluster has" if len(nodes) <= 1 else "a trial's workers share one node; the largest has"
        if need_cpu > node_cpus + 1e-9:
            raise SpecError("resources.num_workers",
                            f"{res.num_workers} workers x {res.worker_cpus:g} CPUs need "
                            f"{need_cpu:g} CPUs but {where} {node_cpus:g}", res.num_workers)
        if need_gpu > node_gpus + 1e-9:
            raise SpecError("resources.num_workers",
                            f"{res.num_workers} workers x {res.gpus_per_worker:g} GPUs need "
                            f"{need_gpu:g} GPUs but {where} {node_gpus:g}", res.num_workers)
        if res.max_memory_gb is not None:
            node_mem = max((n.get("memory", 0.0) for n in nodes), default=0.0) / 2**30
            if node_mem and res.max_memory_gb > node_mem:
                raise SpecError("resources.max_memory_gb", f"no node has that much memory for "
                                f"Ray to give (largest: {node_mem:.1f} GB)", res.max_memory_gb)
        fit = sum(math.floor(n.get("CPU", 0.0) / need_cpu + 1e-9) for n in nodes) \
            if nodes else math.floor(cpus / need_cpu + 1e-9)
        if need_gpu:
            fit = min(fit, math.floor(gpus / need_gpu + 1e-9))
        if res.max_memory_gb and cluster.get("memory"):
            # The trial's actor reserves all its workers' memory, on its one node.
            need_mem = res.num_workers * res.max_memory_gb
            slots = sum(math.floor(n.get("memory", 0.0) / 2**30 / need_mem + 1e-9)
                        for n in nodes)
            if slots < 1:
                raise SpecError("resources.max_memory_gb", f"{res.num_workers} workers x "
                                f"{res.max_memory_gb:g} GB do not fit on one node: a trial's "
                                f"workers share one, and the largest gives Ray "
                                f"{node_mem:.1f} GB", res.max_memory_gb)
            fit = min(fit, slots)
        fits.append(fit)
    if spec.train.deterministic and spec.search.method == "optuna":
        return 1  # TPE's suggestions depend on the order results come back in
    return max(1, min(max(fits), spec.search.max_concurrent or max(fits)))
