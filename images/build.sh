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
docker image ls "$TAG"
