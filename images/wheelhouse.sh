#!/usr/bin/env bash
# Download every wheel the CPU image needs into images/wheelhouse/ (git-ignored), for
# an offline build. TORCH_WHEEL may name a local torch CPU wheel file.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_WHEEL="${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -1)}"
TORCHVISION="${TORCHVISION:-torchvision==0.28.0}"  # the release that matches torch 2.13
mkdir -p images/wheelhouse
python3 -m pip download -q -d images/wheelhouse --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  ${TORCH_WHEEL:+"$TORCH_WHEEL"} "$TORCHVISION" .
du -sh images/wheelhouse
