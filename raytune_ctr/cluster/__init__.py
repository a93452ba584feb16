"""Cluster plumbing: KubeRay resources (kuberay.py), their schema checks (schema.py) and
`ray up` onto GKE through a KubeRay NodeProvider (gke.py)."""
