#!/usr/bin/env bash
# CI: a Docker engine and the CPU image for the `docker` tests (image build, ray up
# cluster/docker.yaml). Exits non-zero, saying why, when this machine can't; the
# tests then skip with their own reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get install -y -q docker.io debootstrap >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker.io debootstrap >/dev/null 2>&1; } \
    || { echo "ci: cannot install docker.io/debootstrap"; exit 1; }
fi
if ! docker info >/dev/null 2>&1; then
  (setsid dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "ci: dockerd did not start: $(tail -1 /tmp/dockerd.log)"; exit 1; }
fi
time bash images/build.sh raytune-ctr:latest
