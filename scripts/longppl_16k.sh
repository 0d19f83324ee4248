#!/usr/bin/env bash
# Long-range perplexity of SmolLM2-135M (trained 8192) on the shipped Jane Austen excerpts at
# 1k ... 16k tokens: as shipped (window forced to 16384), with each RoPE rescaling at factor 2 and
# with the attention-level methods, in one `lmeval-ctx sweep` (one model load; a re-run skips the
# points already done), then `lmeval-ctx report`. Static methods score every length in one pass per
# document; dynamic NTK scores each length on its own. METHODS takes the sweep's syntax.
# Results: runs/longppl_16k/<point>/, leaderboard: runs/longppl_16k/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_DOCS="${NUM_DOCS:-3}"
METHODS="${METHODS:-none,yarn,pi,ntk,dynamic_ntk,ntk_by_parts,llama3,ntk:logn=true,self_extend:group_size=4:neighbor_window=1024,dual_chunk,rerope:window=2048,leaky_rerope:window=2048,lm_infinite}"
LENGTHS="${LENGTHS:-[1024, 2048, 4096, 8192, 16384]}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-runs/longppl_16k}"
. scripts/_smollm2_env.sh
mkdir -p "$OUT"
start=$(date +%s)
lmeval-ctx sweep --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,max_length=16384" \
  --methods "$METHODS" --factor 2 --tasks longppl \
  --metadata "{\"lengths\": $LENGTHS, \"num_docs\": $NUM_DOCS}" \
  --device "$DEVICE" --output_path "$OUT" 2>> "$OUT/sweep.log" \
  || { tail -n 30 "$OUT/sweep.log"; exit 1; }
echo "=== sweep took $(( $(date +%s) - start )) s"
lmeval-ctx report "$OUT" --output "$OUT/report"
