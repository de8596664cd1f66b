#!/usr/bin/env bash
# make gpu-check: the GPU acceptance run on a host with NVIDIA GPUs, in one command.
#   1. no GPU (nvidia-smi missing or listing none): one line, exit 1, before anything is installed;
#   2. the gpu flavour into its own venv (HVDTRAIN_GPU_VENV, default .venv-gpu), idempotent, so a
#      second run reuses it (the first compiles Horovod's NCCL ops: see docs/gpu.md);
#   3. hvdtrain gpu-check: gpu-check-results/gpu-check.json and a table (hvdtrain/cli/gpucheck.py).
# Extra arguments go to hvdtrain gpu-check (e.g. --quick, --out DIR).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HVDTRAIN_GPU_VENV:-$REPO/.venv-gpu}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: no GPU on this machine (no NVIDIA driver: nvidia-smi not found); nothing was checked" >&2
    exit 1
fi
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu-check: no GPU on this machine (nvidia-smi -L lists none); nothing was checked" >&2
    exit 1
fi
HVDTRAIN_FLAVOR=gpu HVDTRAIN_VENV="$VENV" bash "$REPO/scripts/install.sh"
cd "$REPO"
exec "$VENV/bin/hvdtrain" gpu-check "$@"
