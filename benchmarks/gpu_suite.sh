#!/usr/bin/env bash
# The one prepared GPU run (device machine: one GPU, 15 minutes in all for a session).
# Installs the project into a fresh venv on that machine when needed, then runs every GPU
# check the open issues ask for (benchmarks/gpu_suite.py: CUDA vs CPU correctness, bf16
# inference images/s at batch 1 and 8 with and without torch.compile, a bf16 training step's
# images/s and peak memory, for kMaX, MaX-DeepLab, K-Net and semantic K-Net) within a 7-minute budget, and
# writes the report to $OUT/gpu_suite.md (or ./gpu_suite.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_suite.md"
py=python3
if ! $py -c "import torch, kmax_deeplab" 2>/dev/null; then
  # The machine's own CUDA torch is kept: plain `pip install -e .` never replaces it.
  $py -m pip install -q -e . >/dev/null
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out.hw"
PYTHONPATH=src timeout 450 $py benchmarks/gpu_suite.py --budget-s "${BUDGET_S:-400}" "$@" | tee "$out"
