#!/usr/bin/env bash
# The report's demo on the embedded SmolLM2-135M (trained 8192): none, yarn and dynamic_ntk (factor 2)
# on lm-eval's RULER tasks niah_single_1 and niah_multikey_2 and on our passkey, at 2k and 4k tokens,
# a few samples (RULER: SAMPLES per length and task, default 1, as one 4k RULER sample takes minutes on a
# busy 2-core CPU; passkey: PASSKEY_SAMPLES, default 3), then `lmeval-ctx report`: table, CSV, plots, page.
# - RULER's niah_multikey_1 hides its needles in Paul Graham essays downloaded from the hub;
#   niah_multikey_2 (a haystack of distractor needles) builds its data offline, so the demo runs it.
# - RULER's samples come ordered by length (500 per length) and --limit would take the first length
#   only, so lm_eval's --samples picks the first SAMPLES of each length; RULER lets the model generate
#   128 tokens after its answer prefix, cut here to 16 (--gen_kwargs) for a CPU.
# - The RULER runs are lm_eval runs and passkey its own `lmeval-ctx sweep`, as the figures in the
#   README were made; a single sweep could now hold both (it takes --samples and --gen_kwargs).
# The report joins the runs into one row per method (they measure different things), pairing each
# samples file with the results file of its own run (the RULER runs share one folder).
# Output: runs/report_smollm2/{ruler,passkey}/ and runs/report_smollm2/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/report_smollm2}"
SAMPLES="${SAMPLES:-1}"
PASSKEY_SAMPLES="${PASSKEY_SAMPLES:-3}"
if [ -z "${MODEL_DIR:-}" ]; then
  . scripts/_smollm2_env.sh
fi
GGUF_FILE="${GGUF_FILE:-SmolLM2-135M-Instruct.Q4_1.gguf}"
MODEL_ARGS="pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,dtype=float32"
DEVICE="${DEVICE:-cpu}"
mkdir -p "$OUT"
picks=$(python -c "n=$SAMPLES; print(list(range(n)) + list(range(500, 500 + n)))")
start=$(date +%s)
for method in "scaling=none" "scaling=yarn,factor=2" "scaling=dynamic_ntk,factor=2"; do
  lm_eval --model ctx-hf --model_args "$MODEL_ARGS,$method" --tasks niah_single_1,niah_multikey_2 \
    --metadata '{"max_seq_lengths": [2048, 4096]}' --gen_kwargs max_gen_toks=16 \
    --samples "{\"niah_single_1\": $picks, \"niah_multikey_2\": $picks}" \
    --log_samples --device "$DEVICE" --output_path "$OUT/ruler" 2>> "$OUT/ruler.log" \
    || { tail -n 30 "$OUT/ruler.log"; exit 1; }
done
echo "=== RULER runs took $(( $(date +%s) - start )) s"
start=$(date +%s)
lmeval-ctx sweep --model_args "$MODEL_ARGS" --methods none,yarn,dynamic_ntk --factor 2 \
  --tasks passkey_2k,passkey_4k --limit "$PASSKEY_SAMPLES" --log_samples --device "$DEVICE" \
  --output_path "$OUT/passkey" 2> "$OUT/passkey.log" || { tail -n 30 "$OUT/passkey.log"; exit 1; }
echo "=== passkey sweep took $(( $(date +%s) - start )) s"
start=$(date +%s)
lmeval-ctx report "$OUT/ruler" "$OUT/passkey" --output "$OUT/report"
echo "=== report took $(( $(date +%s) - start )) s"
