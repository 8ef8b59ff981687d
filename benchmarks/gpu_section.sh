#!/usr/bin/env bash
# The GPU section of the throughput benchmark as one short run (a few minutes on one H100/H200 after the
# install): EPG-XL/16 at batch 64 in bf16 with flash attention — a training step and a CFG sampling evaluation,
# torch.compile on, then off for the ratio — with MFU against the GPU's own measured bf16 GEMM peak.
#   bash benchmarks/gpu_section.sh            (writes benchmarks/results/throughput_gpu.{md,json})
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, epg; assert torch.cuda.is_available()" 2>/dev/null; then
  "$PY" -m venv .venv-gpu && PY=.venv-gpu/bin/python
  "$PY" -m pip install -q "torch==2.13.0" && "$PY" -m pip install -q -e .
fi
"$PY" benchmarks/throughput.py --presets --gpu-presets epg-xl-16-in256 --reps 5 --out benchmarks/results/throughput_gpu
