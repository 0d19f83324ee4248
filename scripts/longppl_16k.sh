#!/usr/bin/env bash
# Long-range perplexity of SmolLM2-135M (trained 8192) on the shipped Jane Austen
# excerpts at 1k ... 16k tokens: as shipped (window forced to 16384) and with RoPE
# extension methods at factor 2. Static methods score every length in one pass per
# document; dynamic NTK scores each length on its own. Results: runs/longppl_16k/<method>/.
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_DOCS="${NUM_DOCS:-3}"
METHODS="${METHODS:-none yarn pi ntk dynamic_ntk}"
LENGTHS="${LENGTHS:-[1024, 2048, 4096, 8192, 16384]}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-runs/longppl_16k}"
. scripts/_smollm2_env.sh
mkdir -p "$OUT"
for method in $METHODS; do
  if [ "$method" = none ]; then scaling="scaling=none,max_length=16384"; else scaling="scaling=$method,factor=2"; fi
  echo "=== SmolLM2-135M, longppl $LENGTHS, $scaling ($NUM_DOCS documents)"
  start=$(date +%s)
  lm_eval --model ctx-hf --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,$scaling" \
    --tasks longppl --metadata "{\"lengths\": $LENGTHS, \"num_docs\": $NUM_DOCS}" \
    --device "$DEVICE" --output_path "$OUT/$method" 2> "$OUT/$method.log" \
    || { tail -n 30 "$OUT/$method.log"; exit 1; }
  echo "=== $method took $(( $(date +%s) - start )) s"
done
