#!/usr/bin/env bash
# The key CPU comparisons, for a quiet machine (nothing else running): the `seed` preset against the
# blog's script, each in its own process, for the blog's 10 epochs (what `make run` trains: images/s
# over full epochs and end-to-end wall time), the FLOP floor, the `cpu` preset's budget plan per width,
# and a run's fixed cost beside its references. With AVX2=1, the seed comparison again on emulated
# AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2: torch's, oneDNN's
# and MKL's AVX2 kernels on this CPU, no bf16), 2 epochs.
#   ARCHIVE=/work/shared/data/cifar10/cifar-10-python.tar.gz bash benchmarks/quiet_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${ARCHIVE:-../shared/data/cifar10/cifar-10-python.tar.gz}
MD5=${MD5:-d9faace0e3ee83e5d384d7816e454f7b}
OUT=${OUT:-/tmp}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD
"$PY" benchmarks/cpu_benchmark.py --archive "$ARCHIVE" --md5 "$MD5" --parts fixed,seed,floor,budget \
  --seed-epochs 10 --budget-widths 64,48,32 --json "$OUT/bench-native.json"
if [ "${AVX2:-0}" = 1 ]; then
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
    "$PY" benchmarks/cpu_benchmark.py --archive "$ARCHIVE" --md5 "$MD5" --parts seed,floor --seed-epochs 2 \
    --json "$OUT/bench-avx2-emulated.json"
fi
