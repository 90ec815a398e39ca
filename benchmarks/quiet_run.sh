#!/usr/bin/env bash
# The key CPU comparison, for a quiet machine (nothing else running): the `seed` preset against the
# blog's code, images/s and end to end (CLI wall time, 2 epochs), natively and on emulated AVX2
# (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2: torch's and oneDNN's AVX2 kernels on this CPU,
# no bf16). About 12 minutes on 2 cores (native ~5 min, emulated AVX2 ~7 min); full-epoch trials.
#   ARCHIVE=/work/shared/data/cifar10/cifar-10-python.tar.gz bash benchmarks/quiet_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${ARCHIVE:-../shared/data/cifar10/cifar-10-python.tar.gz}
MD5=${MD5:-d9faace0e3ee83e5d384d7816e454f7b}
OUT=${OUT:-/tmp}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD
common=(--archive "$ARCHIVE" --md5 "$MD5" --parts seed,e2e --trials 2 --images 50000 --e2e-epochs 2)
"$PY" benchmarks/cpu_benchmark.py "${common[@]}" --json "$OUT/bench-native.json"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
  "$PY" benchmarks/cpu_benchmark.py "${common[@]}" --json "$OUT/bench-avx2-emulated.json"
