output "get_credentials" {
  description = "Writes the kubeconfig entry that kubectl and ray up use."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.ray.name} --zone ${var.zone} --project ${var.project_id}"
}

output "image" {
  description = "provider.image in cluster/gke.yaml (built from images/Dockerfile)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/raytune-ctr:latest"
}

output "gpu_image" {
  description = "provider.gpu_image in cluster/gke.yaml (built from images/Dockerfile.gpu)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/raytune-ctr-gpu:latest"
}

output "storage" {
  description = "provider.storage in cluster/gke.yaml and sweep.py's --storage-path."
  value       = "gs://${google_storage_bucket.results.name}/raytune-ctr"
}

output "ray_gcp_service_account" {
  description = "Annotate the Kubernetes service account with this (iam.gke.io/gcp-service-account)."
  value       = google_service_account.ray.email
}
