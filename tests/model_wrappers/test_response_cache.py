"""--use_cache cannot mix the responses of two context-extension settings."""

import lm_eval
import pytest

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.response_cache import settings_cache_path


def perplexity(lm, folder, cache=None) -> float:
    out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], use_cache=cache, bootstrap_iters=0,
                                  metadata={"pretrained": str(folder), "lengths": [256], "num_docs": 1})
    return out["results"]["longppl"]["token_perplexity@256,none"]


def test_two_methods_sharing_one_cache_path_get_their_own_results(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    lm = CtxHFLM(pretrained=str(folder), dtype="float32", device="cpu", scaling="pi", factor=4)
    cache = str(tmp_path / "cache" / "responses")
    pi_cached = perplexity(lm, folder, cache)
    pi_key = lm.response_cache_key
    lm.apply_extension("yarn", factor=4)
    yarn_cached = perplexity(lm, folder, cache)  # same --use_cache path as the pi run
    yarn_fresh = perplexity(lm, folder)
    lm.apply_extension("pi", factor=4)
    assert lm.response_cache_key == pi_key
    pi_again = perplexity(lm, folder, cache)  # served from the pi file
    assert yarn_cached == pytest.approx(yarn_fresh, rel=1e-9) and yarn_cached != pi_cached  # a shared cache would return pi_cached exactly
    assert pi_again == pytest.approx(pi_cached, rel=1e-9)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(name.startswith("responses_rank0_ctx-") for name in files)


def test_other_models_keep_lm_evals_cache_path():
    assert settings_cache_path("cache/x_rank0.db", object()) == "cache/x_rank0.db"
