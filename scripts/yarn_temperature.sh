#!/usr/bin/env bash
# YaRN's in-window misses: SmolLM2-135M on passkey at 1024 tokens (inside its trained 8192),
# 20 needles at depths 0 and 1, as shipped, with YaRN x2, and with NTK-by-parts x2 (YaRN's
# frequencies without its attention temperature). Sets itself up in .venv-demo; results and
# samples in runs/yarn_temperature/<setting>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_smollm2_env.sh
for scaling in "scaling=none" "scaling=yarn,factor=2" "scaling=ntk_by_parts,factor=2"; do
  echo "=== SmolLM2-135M, $scaling"
  lm_eval --model ctx-hf --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,$scaling" \
    --tasks passkey_custom --metadata '{"lengths": [1024], "num_samples": 20, "depths": [0, 1]}' \
    --device cpu --log_samples --output_path "runs/yarn_temperature/${scaling//[=,]/_}"
done
