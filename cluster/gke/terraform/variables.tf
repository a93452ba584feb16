variable "project_id" {
  description = "GCP project that holds the cluster, the registry and the bucket."
  type        = string
}

variable "region" {
  description = "Region of the Artifact Registry repository and the bucket."
  type        = string
  default     = "us-central1"
}

variable "zone" {
  description = "Zone of the (zonal) cluster; pick one that has the GPU type (gcloud compute accelerator-types list)."
  type        = string
  default     = "us-central1-a"
}

variable "name" {
  description = "Cluster name, also the prefix of the service accounts."
  type        = string
  default     = "raytune-ctr"
}

variable "bucket" {
  description = "Globally unique name of the results bucket (gs://BUCKET/raytune-ctr in cluster/gke.yaml)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the RayCluster (provider.namespace in cluster/gke.yaml)."
  type        = string
  default     = "raytune"
}

variable "k8s_service_account" {
  description = "Kubernetes service account the Ray pods run as (provider.service_account)."
  type        = string
  default     = "raytune-ctr"
}

# Sizes follow raytune_ctr/cluster/kuberay.py: a pod must fit a node's allocatable
# resources, which are somewhat less than the machine's.
variable "cpu_machine_type" {
  description = "On-demand pool for the Ray head (2 CPU, 8Gi) and system pods."
  type        = string
  default     = "e2-standard-4"
}

variable "spot_cpu_machine_type" {
  description = "Spot pool for the CPU worker group (4 CPU, 16Gi per pod)."
  type        = string
  default     = "e2-standard-8"
}

variable "spot_cpu_max_nodes" {
  type    = number
  default = 4
}

variable "gpu_machine_type" {
  description = "Spot GPU pool for the GPU worker group (8 CPU, 32Gi, 1 GPU per pod); g2 carries L4s."
  type        = string
  default     = "g2-standard-12"
}

variable "gpu_type" {
  description = "Accelerator, as in the GPU group's cloud.google.com/gke-accelerator selector."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_max_nodes" {
  type    = number
  default = 2
}
