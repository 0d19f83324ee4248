#!/usr/bin/env bash
# A leaderboard on the embedded SmolLM2-135M (trained 8192): every method at factor 2 with
# one model load (lmeval-ctx sweep), then the table and plots (lmeval-ctx report).
# Passkey at 1k and 4k (5 samples each, needles at depths 0, 0.25, ..., 1) and long-range perplexity at 1k ... 8k on two
# documents of the shipped corpus. Output: runs/sweep_smollm2/ and runs/sweep_smollm2/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/sweep_smollm2}"
DEVICE="${DEVICE:-cpu}"
. scripts/_smollm2_env.sh
start=$(date +%s)
lmeval-ctx sweep --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE" \
  --methods none,pi,ntk,dynamic_ntk,yarn --factor 2 --tasks passkey_1k,passkey_4k,longppl \
  --metadata '{"lengths": [1024, 2048, 4096, 8192], "num_docs": 2, "num_samples": 5, "depths": 5}' \
  --log_samples --device "$DEVICE" --output_path "$OUT" 2> "$OUT.log" || { tail -n 30 "$OUT.log"; exit 1; }
echo "=== sweep took $(( $(date +%s) - start )) s"
start=$(date +%s)
lmeval-ctx report "$OUT" --output "$OUT/report"
echo "=== report took $(( $(date +%s) - start )) s"
