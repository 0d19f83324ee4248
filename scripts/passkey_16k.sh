#!/usr/bin/env bash
# Passkey retrieval beyond SmolLM2-135M's trained window (8192): 16384 tokens, as
# shipped (scaling=none, window forced to 16384) and with each RoPE extension
# method at factor 2. Slow on CPU (minutes per sample); a GPU makes it quick
# (add DEVICE=cuda). Results and samples go to runs/passkey_16k/<method>/.
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_SAMPLES="${NUM_SAMPLES:-3}"          # per method; needles at evenly spaced depths
METHODS="${METHODS:-none yarn dynamic_ntk ntk pi}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-runs/passkey_16k}"
. scripts/_smollm2_env.sh
mkdir -p "$OUT"
for method in $METHODS; do
  if [ "$method" = none ]; then scaling="scaling=none,max_length=16384"; else scaling="scaling=$method,factor=2"; fi
  echo "=== SmolLM2-135M, passkey_16k, $scaling ($NUM_SAMPLES samples)"
  start=$(date +%s)
  lm_eval --model ctx-hf \
    --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,$scaling" \
    --tasks passkey_16k --metadata "{\"num_samples\": $NUM_SAMPLES, \"depths\": $NUM_SAMPLES}" \
    --device "$DEVICE" --output_path "$OUT/$method" --log_samples 2> "$OUT/$method.log" \
    || { tail -n 30 "$OUT/$method.log"; exit 1; }
  echo "=== $method took $(( $(date +%s) - start )) s"
done
