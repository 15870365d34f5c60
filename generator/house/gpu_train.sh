#!/usr/bin/env bash
# Retrain the house generator v2 on this machine's GPU in one command, from the repository root:
#
#     bash generator/house/gpu_train.sh OUT [gpu_run options, e.g. --minutes 8]
#
# Picks the first Python that imports torch, shows the GPU, and runs generator.house.gpu_run on
# data/house_photos_128.pt (unpacking data/wheels' Pillow wheel there if Pillow is missing),
# keeping a copy of the console output in OUT/console.log.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash generator/house/gpu_train.sh OUT [gpu_run options]" >&2
    exit 2
fi
out=$1
shift
mkdir -p "$out"
if [ ! -f data/house_photos_128.pt ]; then
    echo "data/house_photos_128.pt is missing: make it with pack-house-photos and ship it" >&2
    exit 4
fi
python=""
for candidate in python3 python python3.12; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "no Python here imports torch (tried python3, python, python3.12)" >&2
    exit 3
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$python" -m generator.house.gpu_run --pack data/house_photos_128.pt --out "$out" "$@" 2>&1 | tee "$out/console.log"
exit "${PIPESTATUS[0]}"
