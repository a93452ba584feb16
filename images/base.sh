#!/usr/bin/env bash
# A Debian bookworm base image with python3.11 and venv, made without any registry:
# debootstrap, then docker import. Usage: bash images/base.sh [TAG]
set -euo pipefail
TAG="${1:-raytune-base:bookworm}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,libgomp1 bookworm "$root" \
  http://deb.debian.org/debian
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$TAG"
docker image ls "$TAG"
