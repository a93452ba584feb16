# A GKE cluster for raytune_ctr: the managed Ray operator (KubeRay), an on-demand
# CPU pool for the Ray head, Spot CPU and Spot GPU pools that scale from 0, an
# Artifact Registry repository for the images, and a results bucket that the Ray
# pods write to through Workload Identity. See docs/gke.md. Never applied to a
# real project by this repository's authors: review before `terraform apply`.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

resource "google_project_service" "apis" {
  for_each           = toset(["container.googleapis.com", "artifactregistry.googleapis.com", "storage.googleapis.com", "iam.googleapis.com"])
  service            = each.key
  disable_on_destroy = false
}

# --- identities -------------------------------------------------------------------

# Nodes: pull images, write logs and metrics; nothing else.
resource "google_service_account" "nodes" {
  account_id   = "${var.name}-nodes"
  display_name = "raytune-ctr GKE nodes"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/monitoring.viewer", "roles/stackdriver.resourceMetadata.writer"])
  project  = var.project_id
  role     = each.key
  member   = "serviceAccount:${google_service_account.nodes.email}"
}

# Ray pods: read and write results in the bucket, as the Kubernetes service account
# var.namespace/var.k8s_service_account (Workload Identity).
resource "google_service_account" "ray" {
  account_id   = "${var.name}-ray"
  display_name = "raytune-ctr Ray pods"
}

resource "google_service_account_iam_member" "ray_workload_identity" {
  service_account_id = google_service_account.ray.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/${var.k8s_service_account}]"
}

# --- images and results -----------------------------------------------------------

resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = "raytune"
  format        = "DOCKER"
  depends_on    = [google_project_service.apis]
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_storage_bucket" "results" {
  name                        = var.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  depends_on                  = [google_project_service.apis]
}

# objectUser: read, list, write and delete objects; legacyBucketReader adds
# storage.buckets.get, which pyarrow's GCS filesystem may ask for.
resource "google_storage_bucket_iam_member" "ray_results" {
  for_each = toset(["roles/storage.objectUser", "roles/storage.legacyBucketReader"])
  bucket   = google_storage_bucket.results.name
  role     = each.key
  member   = "serviceAccount:${google_service_account.ray.email}"
}

# --- the cluster --------------------------------------------------------------------

resource "google_container_cluster" "ray" {
  name                     = var.name
  location                 = var.zone
  deletion_protection      = false
  remove_default_node_pool = true
  initial_node_count       = 1

  release_channel {
    channel = "REGULAR"
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  addons_config {
    # GKE's managed KubeRay operator (ray.io/v1 RayCluster and RayJob).
    ray_operator_config {
      enabled = true
    }
  }

  depends_on = [google_project_service.apis]
}

locals {
  node_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu"
  cluster  = google_container_cluster.ray.id
  location = var.zone

  autoscaling {
    min_node_count = 1
    max_node_count = 2
  }

  node_config {
    machine_type    = var.cpu_machine_type
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_scopes
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "spot_cpu" {
  name     = "spot-cpu"
  cluster  = google_container_cluster.ray.id
  location = var.zone

  autoscaling {
    min_node_count = 0
    max_node_count = var.spot_cpu_max_nodes
  }

  node_config {
    machine_type    = var.spot_cpu_machine_type
    spot            = true
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_scopes
    # Spot nodes take only pods that tolerate this (kuberay.py's worker groups do).
    taint {
      key    = "cloud.google.com/gke-spot"
      value  = "true"
      effect = "NO_SCHEDULE"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "spot_gpu" {
  name     = "spot-gpu"
  cluster  = google_container_cluster.ray.id
  location = var.zone

  autoscaling {
    min_node_count = 0
    max_node_count = var.gpu_max_nodes
  }

  node_config {
    machine_type    = var.gpu_machine_type
    spot            = true
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_scopes
    # GKE adds the nvidia.com/gpu NoSchedule taint to GPU nodes itself.
    taint {
      key    = "cloud.google.com/gke-spot"
      value  = "true"
      effect = "NO_SCHEDULE"
    }
    guest_accelerator {
      type  = var.gpu_type
      count = 1
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}
