#!/usr/bin/env bash
# The prepared GPU check (issue 21, item 5; docs/gpu.md): every method on tiny models in bfloat16 on
# CUDA against float32, timed against scaling=none, peak memory, one results JSON.
#
#   bash scripts/gpu_check.sh                 # on a CUDA machine: 8k and 32k tokens, under 8 minutes
#   bash scripts/gpu_check.sh --dry-run       # on CPU, tiny lengths, under a minute (the CI test runs it)
#
# Needs python3 with torch and transformers only (no lm-eval, no network, nothing installed): the
# package is imported from this checkout (PYTHONPATH), the models are built from a seed. Writes
# $OUT/gpu_check_result.json when $OUT is set (the device machine's folder that comes back), else
# benchmarks/gpu_check_result.json; --output PATH overrides. Other arguments go to benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
output="${OUT:-benchmarks}/gpu_check_result.json"
args=("$@")
for arg in "$@"; do
  if [[ "$arg" == "--output" || "$arg" == --output=* ]]; then output=""; fi
done
if [[ -n "$output" ]]; then args+=(--output "$output"); fi
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "available", torch.cuda.is_available(), "| transformers", transformers.__version__)'
# A hard stop past the script's own budget (it starts no case after --budget-s, 420 s by default):
# the results file is written after each model, so a stop keeps what was measured.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 470 python3 benchmarks/gpu_check.py "${args[@]}"
