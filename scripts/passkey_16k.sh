#!/usr/bin/env bash
# Passkey retrieval beyond SmolLM2-135M's trained window (8192): 16384 tokens, as shipped
# (scaling=none, window forced to 16384), with each RoPE rescaling at factor 2 and with the
# attention-level methods at parameters that reach 16k, in one `lmeval-ctx sweep` (one model load;
# a re-run skips the points already done), then `lmeval-ctx report`. Slow on CPU: 4-10 minutes per
# RoPE rescaling, about twice that per attention-level method; a GPU makes it quick
# (DEVICE=cuda). METHODS takes the sweep's syntax (method[:key=value...], comma-separated).
# Results: runs/passkey_16k/<point>/, leaderboard: runs/passkey_16k/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_SAMPLES="${NUM_SAMPLES:-3}"          # per method; needles at evenly spaced depths
METHODS="${METHODS:-none,yarn,dynamic_ntk,ntk,pi,ntk_by_parts,llama3,ntk:logn=true,self_extend:group_size=4:neighbor_window=1024,dual_chunk,rerope:window=2048,leaky_rerope:window=2048,lm_infinite}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-runs/passkey_16k}"
. scripts/_smollm2_env.sh
mkdir -p "$OUT"
start=$(date +%s)
lmeval-ctx sweep --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,max_length=16384" \
  --methods "$METHODS" --factor 2 --tasks passkey_16k \
  --metadata "{\"num_samples\": $NUM_SAMPLES, \"depths\": $NUM_SAMPLES}" \
  --log_samples --device "$DEVICE" --output_path "$OUT" 2>> "$OUT/sweep.log" \
  || { tail -n 30 "$OUT/sweep.log"; exit 1; }
echo "=== sweep took $(( $(date +%s) - start )) s"
lmeval-ctx report "$OUT" --output "$OUT/report"
