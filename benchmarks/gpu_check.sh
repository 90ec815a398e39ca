#!/usr/bin/env bash
# The GPU check, as one command for a machine with one NVIDIA GPU and no network.
#
# Prepare here (with network), in the repository root; both folders are git-ignored and carried:
#   mkdir -p benchmarks/gpu-inputs && cp ../shared/data/cifar10/{cifar10-jpeg.npz,jpeg_bundle.py} benchmarks/gpu-inputs/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl pydantic pydantic-core annotated-types typing-inspection
#   pip wheel --no-deps -w .whl airbench==0.1.8
# Then run there:  bash benchmarks/gpu_check.sh   (about 3 minutes on one H200)
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_check.py --npz benchmarks/gpu-inputs/cifar10-jpeg.npz \
  --bundle benchmarks/gpu-inputs/jpeg_bundle.py --seeds "${SEEDS:-5}" --json "${OUT:-/tmp}/gpu_check.json" "$@"
