"""--use_cache cannot mix the responses of two runs whose settings differ."""

import lm_eval
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM
from tiny_models import save_tiny_model

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.scoring.response_cache import settings_cache_path


def perplexity(lm, folder, cache=None) -> float:
    # the model args lm-eval's CLI would merge into the metadata: the tokenizer's path and the window
    out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], use_cache=cache, bootstrap_iters=0,
                                  metadata={"pretrained": str(folder), "max_length": lm.max_length,
                                            "lengths": [256], "num_docs": 1})
    return out["results"]["longppl"]["token_perplexity@256,none"]


@pytest.mark.slow
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


# Two runs differing only in one setting: one entry per setting that can change a response.
BASE = dict(dtype="float32", device="cpu", scaling="yarn", factor=2)
ONE_SETTING_CHANGED = {
    "truncation": dict(truncation=True),
    "window": dict(max_length=192),
    "dtype": dict(dtype="bfloat16"),
    "method": dict(scaling="pi"),
    "factor": dict(factor=4),
    "original_max_length": dict(original_max_length=64),
    "beta_fast": dict(beta_fast=16),
    "beta_slow": dict(beta_slow=2),
    "attention_factor": dict(attention_factor=1.5),
    "add_bos_token": dict(add_bos_token=True),
    "prefix_token_id": dict(prefix_token_id=2),
    "softmax_dtype": dict(softmax_dtype="float64"),
    "think_end_token": dict(think_end_token="x"),
}
REQUESTS = [("The quick brown fox", " jumps"), ("", "Lorem ipsum")]


class SmallerBudget(CtxHFLM):
    """ctx-hf with another default generation budget (HFLM holds it as a property)."""

    max_gen_toks = 16


def answer_through_cache(lm, cache: str) -> tuple[list, int]:
    """(answers to REQUESTS through --use_cache's CachingLM at ``cache``, how many reached the model)."""
    reached = []
    score = type(lm).loglikelihood
    lm.loglikelihood = lambda requests, **kwargs: reached.extend(requests) or score(lm, requests, **kwargs)
    try:
        instances = [Instance("loglikelihood", {}, request, i) for i, request in enumerate(REQUESTS)]
        answers = CachingLM(lm, cache).loglikelihood(instances)
    finally:
        del lm.loglikelihood
    return answers, len(reached)


def two_runs(first, second, cache) -> tuple[int, int, list, list]:
    """Requests that reached each model, and the second model's answers through the cache and fresh."""
    _, first_reached = answer_through_cache(first, cache)
    cached, second_reached = answer_through_cache(second, cache)
    fresh = second.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)])
    return first_reached, second_reached, cached, fresh


@pytest.fixture(scope="module")
def base_run(tiny_model_dir):
    return CtxHFLM(pretrained=str(tiny_model_dir("llama")), **BASE)


@pytest.mark.parametrize("setting", ONE_SETTING_CHANGED)
def test_runs_differing_in_one_setting_do_not_share_answers(tiny_model_dir, base_run, tmp_path, setting):
    second = CtxHFLM(pretrained=str(tiny_model_dir("llama")), **{**BASE, **ONE_SETTING_CHANGED[setting]})
    first_reached, second_reached, cached, fresh = two_runs(base_run, second, str(tmp_path / "responses"))
    assert (first_reached, second_reached) == (len(REQUESTS), len(REQUESTS))  # nothing served from the first run
    assert cached == fresh


def test_runs_differing_in_the_layer_types_scaled_do_not_share_answers(tiny_model_dir, tmp_path):
    folder = str(tiny_model_dir("gemma3_layer_types"))  # sliding layers are kept unless asked
    first = CtxHFLM(pretrained=folder, **BASE)
    second = CtxHFLM(pretrained=folder, **BASE, scale_layer_types="all")
    first_reached, second_reached, cached, fresh = two_runs(first, second, str(tmp_path / "responses"))
    assert (first_reached, second_reached) == (len(REQUESTS), len(REQUESTS))
    assert cached == fresh


def test_runs_differing_in_generation_budget_do_not_share_answers(tiny_model_dir, base_run, tmp_path):
    second = SmallerBudget(pretrained=str(tiny_model_dir("llama")), **BASE)
    assert (base_run.max_gen_toks, second.max_gen_toks) == (256, 16)
    assert two_runs(base_run, second, str(tmp_path / "responses"))[:2] == (len(REQUESTS), len(REQUESTS))


def test_another_checkpoint_behind_the_same_path_does_not_share_answers(tmp_path):
    # as another gguf_file, subfolder or adapter in one folder would be: only the weights differ
    folder = save_tiny_model("llama", tmp_path / "model", seed=0)
    first = CtxHFLM(pretrained=str(folder), **BASE)
    save_tiny_model("llama", folder, seed=1)
    second = CtxHFLM(pretrained=str(folder), **BASE)
    first_reached, second_reached, cached, fresh = two_runs(first, second, str(tmp_path / "responses"))
    assert (first_reached, second_reached) == (len(REQUESTS), len(REQUESTS))
    assert cached == fresh and cached != answer_through_cache(first, str(tmp_path / "responses"))[0]


def test_runs_with_the_same_settings_do_share_answers(tiny_model_dir, base_run, tmp_path):
    # the check above can fail: the same settings are served from the cache
    second = CtxHFLM(pretrained=str(tiny_model_dir("llama")), **BASE)
    first_reached, second_reached, cached, fresh = two_runs(base_run, second, str(tmp_path / "responses"))
    assert (first_reached, second_reached) == (len(REQUESTS), 0)
    assert cached == fresh


def test_a_refusing_run_is_not_completed_from_a_truncating_runs_cache(tiny_model_dir, tmp_path):
    folder = str(tiny_model_dir("llama"))
    cache = str(tmp_path / "responses")
    over_long = [Instance("loglikelihood", {}, ("a" * 80, "bc"), 0)]
    truncating = CtxHFLM(pretrained=folder, dtype="float32", device="cpu", max_length=64, truncation=True)
    (answer,) = CachingLM(truncating, cache).loglikelihood(over_long)
    assert answer[0] < 0
    refusing = CtxHFLM(pretrained=folder, dtype="float32", device="cpu", max_length=64)
    with pytest.raises(ValueError, match="does not fit the window max_length=64"):
        CachingLM(refusing, cache).loglikelihood(over_long)
