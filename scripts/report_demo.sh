#!/usr/bin/env bash
# The report's demo on the embedded SmolLM2-135M (trained 8192): none, yarn and dynamic_ntk (factor 2)
# on lm-eval's RULER tasks niah_single_1 and niah_multikey_2 and on our passkey, at 2k and 4k tokens,
# SAMPLES per length and task (default 3), in one `lmeval-ctx sweep` (one model load), then
# `lmeval-ctx report`: table, CSV, plots, page.
# - RULER's niah_multikey_1 hides its needles in Paul Graham essays downloaded from the hub, which
#   this offline machine cannot reach; niah_multikey_2 (a haystack of distractor needles) builds its
#   data offline, so the demo runs it.
# - RULER's samples come ordered by length (500 per length) and --limit would take the first length
#   only, so --samples picks the first SAMPLES of each length; passkey builds SAMPLES prompts per
#   length itself (--metadata num_samples). RULER lets the model generate 128 tokens after its
#   answer prefix, cut here to 16 (--gen_kwargs) for a CPU.
# Output: runs/report_smollm2/<point>/ and runs/report_smollm2/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/report_smollm2}"
SAMPLES="${SAMPLES:-3}"
if [ -z "${MODEL_DIR:-}" ]; then
  . scripts/_smollm2_env.sh
fi
GGUF_FILE="${GGUF_FILE:-SmolLM2-135M-Instruct.Q4_1.gguf}"
DEVICE="${DEVICE:-cpu}"
mkdir -p "$OUT"
picks=$(python -c "n=$SAMPLES; print(list(range(n)) + list(range(500, 500 + n)))")
start=$(date +%s)
lmeval-ctx sweep --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF_FILE,dtype=float32" \
  --methods none,yarn,dynamic_ntk --factor 2 \
  --tasks niah_single_1,niah_multikey_2,passkey_2k,passkey_4k \
  --metadata "{\"max_seq_lengths\": [2048, 4096], \"num_samples\": $SAMPLES, \"depths\": $SAMPLES}" \
  --samples "{\"niah_single_1\": $picks, \"niah_multikey_2\": $picks}" --gen_kwargs max_gen_toks=16 \
  --log_samples --device "$DEVICE" --output_path "$OUT" 2>> "$OUT/sweep.log" \
  || { tail -n 30 "$OUT/sweep.log"; exit 1; }
echo "=== sweep took $(( $(date +%s) - start )) s"
start=$(date +%s)
lmeval-ctx report "$OUT" --output "$OUT/report"
echo "=== report took $(( $(date +%s) - start )) s"
# The page in a real headless browser, with the README's screenshot (needs the test extra and
# Debian's chromium + chromium-driver; skipped with a note otherwise).
if python -c "import pytest, selenium" 2>/dev/null && command -v chromedriver >/dev/null; then
  REPORT_PAGE="$OUT/report/index.html" REPORT_SCREENSHOT="${SCREENSHOT:-docs/img/report_page.png}" \
    python -m pytest -q -p no:cacheprovider tests/report/test_report_page.py -k given_page
else
  echo "=== no screenshot: pip install '.[test]' and apt-get install chromium chromium-driver, then re-run"
fi
