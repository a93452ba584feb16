"""Cluster plumbing: `ray up` node providers for one Docker host (docker_provider.py)
and GKE through KubeRay (gke.py), the KubeRay resources (kuberay.py) and their schema
checks (schema.py)."""

# Ray probes a new node with `uptime`, which the slim image (no procps) lacks; any
# command that runs proves the node takes commands. Both command runners use this.
PROBES = {"uptime": "cat /proc/uptime"}
