#!/usr/bin/env bash
# Download every wheel an image needs into images/wheelhouse/ (git-ignored), for an
# offline build; the folder is emptied first, so one image's torch never leaks into
# the other's. WHEELS=cpu (default): TORCH_WHEEL may name a local torch CPU wheel
# file. WHEELS=gpu: the CUDA torch that this machine's pip serves (pinned).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf images/wheelhouse/*.whl
mkdir -p images/wheelhouse
if [ "${WHEELS:-cpu}" = gpu ]; then
  torch=("${TORCH_GPU:-torch==2.14.1}" "${TORCHVISION_GPU:-torchvision==0.29.1}")
else
  TORCH_WHEEL="${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -1)}"
  [ -n "$TORCH_WHEEL" ] || { echo "wheelhouse: no local torch CPU wheel (/opt/wheels); set TORCH_WHEEL, or build online (see images/Dockerfile)" >&2; exit 1; }
  torch=("$TORCH_WHEEL" "${TORCHVISION:-torchvision==0.28.0}")  # 0.28 matches torch 2.13
fi
# constraints.txt: the versions `make` installs (torch and torchvision are not in it).
python3 -m pip download -q -d images/wheelhouse --only-binary=:all: -c constraints.txt \
  --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  "${torch[@]}" .
du -sh images/wheelhouse
