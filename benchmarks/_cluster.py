"""A Ray head apart from any sweep, and what a sweep left on it: shared by the load
benchmark (benchmarks/load.py) and the leak tests (tests/test_leaks.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Ray's own, one per cluster and kept on purpose: Train's autoscaling coordinator.
RAYS_OWN = {"_AutoscalingCoordinatorActor"}
# Process titles of what a sweep starts; none may outlive it.
OURS = ("ray::ImplicitFunc", "ray::Coordinator", "ray::TrainController", "ray::RayTrainWorker",
        "ray::PlacementGroupCleaner", "ray::SynchronizationActor", "ray::DatasetManager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """`ray start --head` apart from the sweep; `address` and the state API's `api`."""

    def __init__(self, cpus: int):
        port, dash = free_port(), free_port()
        self.address, self.api = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        subprocess.run([RAY, "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
                        "--include-dashboard=true", f"--dashboard-port={dash}",
                        "--disable-usage-stats"], check=True, capture_output=True, timeout=180)

    def stop(self) -> None:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=180)


def leftovers(api: str) -> dict:
    from ray.util.state import list_actors, list_placement_groups

    groups = [g.placement_group_id for g in list_placement_groups(address=api, limit=10_000)
              if g.state != "REMOVED"]
    actors = [a.class_name for a in list_actors(address=api, limit=10_000)
              if a.state == "ALIVE" and a.class_name not in RAYS_OWN]
    procs = [t.split()[0] for t in _titles() if t.startswith(OURS)]
    return {"placement groups": groups, "actors": actors, "processes": procs}


def settled(api: str, timeout: float = 60.0) -> dict:
    """What is left once teardown has had time to finish (Ray ends processes async)."""
    end = time.monotonic() + timeout
    while True:
        left = leftovers(api)
        if not any(left.values()) or time.monotonic() > end:
            return left
        time.sleep(1.0)


def _titles() -> list[str]:
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmd.read_text().replace("\0", " "))
        except OSError:
            continue
    return out


