"""Cluster plumbing: KubeRay resources (kuberay.py) and their schema checks (schema.py)."""
