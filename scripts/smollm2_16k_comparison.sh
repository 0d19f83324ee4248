#!/usr/bin/env bash
# SmolLM2-135M at 16,384 tokens, twice its trained 8192, without fine-tuning: STRING, StreamingLLM
# and the strongest earlier methods (ReRoPE, SelfExtend, YaRN x2, NTK-by-parts x2) against `none`
# (window forced), on two tasks, each one resumable `lmeval-ctx sweep` (one model load; a re-run
# skips the points already done) and its `lmeval-ctx report` (Wilson intervals for passkey):
#   passkey  passkey_16k, NUM_SAMPLES prompts (default 20) with distinct keys, the needles at as
#            many depths spread evenly over the window, the same prompts for every method;
#   longppl  token perplexity at 16384 on NUM_DOCS documents (default 1) of the shipped corpus,
#            with key-token perplexity (LongPPL, docs/tasks.md): the key tokens are chosen once by
#            SmolLM2 itself, unscaled, its context capped at KEY_LONG_WINDOW tokens (default 6144;
#            K = 4096), because no evaluator with SmolLM2's tokenizer and a 16k window loads
#            offline. They are the tokens SmolLM2 predicts better from its last 6144 tokens than
#            from its last 4096, and every method is scored on the same ones.
# Usage: bash scripts/smollm2_16k_comparison.sh [passkey|longppl|all]   (default: all)
# Results: runs/smollm2_16k/<task>/<point>/, reports: runs/smollm2_16k/<task>/report/.
# Slow on CPU: one 16k forward of SmolLM2 takes minutes on 2 cores, once per passkey prompt and
# method (see docs/measurements.md); a GPU makes it quick (DEVICE=cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
PART="${1:-all}"
case "$PART" in passkey|longppl|all) ;; *) echo "usage: $0 [passkey|longppl|all]" >&2; exit 2 ;; esac
NUM_SAMPLES="${NUM_SAMPLES:-20}"
NUM_DOCS="${NUM_DOCS:-1}"
KEY_LONG_WINDOW="${KEY_LONG_WINDOW:-6144}"
METHODS="${METHODS:-none,string,streaming_llm,rerope:window=2048,self_extend:group_size=4:neighbor_window=1024,yarn,ntk_by_parts}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-runs/smollm2_16k}"
. scripts/_smollm2_env.sh

sweep() {  # task folder, tasks, metadata, extra sweep arguments
  local out="$OUT/$1" start
  mkdir -p "$out"
  start=$(date +%s)
  lmeval-ctx sweep --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,max_length=16384" \
    --methods "$METHODS" --factor 2 --tasks "$2" --metadata "$3" "${@:4}" \
    --device "$DEVICE" --output_path "$out" 2>> "$out/sweep.log" \
    || { tail -n 30 "$out/sweep.log"; exit 1; }
  echo "=== $1: sweep took $(( $(date +%s) - start )) s"
  lmeval-ctx report "$out" --output "$out/report"
}

if [ "$PART" != passkey ]; then
  sweep longppl longppl "{\"lengths\": [16384], \"num_docs\": $NUM_DOCS, \"key_tokens\": true, \"key_long_window\": $KEY_LONG_WINDOW, \"key_tokens_file\": \"$OUT/longppl/key_tokens.json\"}"
fi
if [ "$PART" != longppl ]; then
  sweep passkey passkey_16k "{\"num_samples\": $NUM_SAMPLES, \"depths\": $NUM_SAMPLES}" --log_samples
fi
