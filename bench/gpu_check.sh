#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): every backbone trains on CUDA in fp32 and bf16, cached
# scoring equals the forward pass on CUDA, prefill + score latency; results in bench/results/gpu_check_cuda.*
# Runs in about 5 minutes on one GPU. Usage: bash bench/gpu_check.sh [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make -s .venv/.stamp-dev >/dev/null 2>&1 || true; PY=.venv/bin/python; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec "$PY" bench/gpu_check.py --device cuda "$@"
