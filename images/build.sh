#!/usr/bin/env bash
# Build raytune-ctr:latest (CPU) with no registry: the debootstrap base if missing,
# the host's wheelhouse, then the classic builder. Usage: bash images/build.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-raytune-ctr:latest}"
BASE="${BASE:-raytune-base:bookworm}"
docker image inspect "$BASE" >/dev/null 2>&1 || bash images/base.sh "$BASE"
bash images/wheelhouse.sh
docker build -q -f images/Dockerfile --build-arg BASE="$BASE" --build-arg IMAGE_TAG="$TAG" \
  -t "$TAG" .
# The classic builder leaves the build stage and the previous tag untagged: about 4 GB a
# rebuild, which filled CI's disk. Only dangling images with our label go.
docker image prune -f --filter label=raytune-ctr.image >/dev/null
docker image ls "$TAG"
