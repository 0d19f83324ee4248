"""Sliced scoring's parts against what transformers and a full log-softmax compute."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from lmeval_ctx.scoring import logprobs as scoring
from tiny_models import CONFIGS

# every class in the table -> a tiny config that loads as that class
TABLE_MODELS = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPT2LMHeadModel": "gpt2",
    "BloomForCausalLM": "bloom",
    "MptForCausalLM": "mpt",
    "FalconForCausalLM": "falcon_alibi",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "CohereForCausalLM": "cohere",
    "GraniteForCausalLM": "granite",
}
# whose forward changes the output layer's result (soft cap, scale)
AFTER_OUTPUT_LAYER_MATTERS = {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "CohereForCausalLM", "GraniteForCausalLM"}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[name](), dtype=torch.float32).eval()


def test_every_class_in_the_table_is_checked_below():
    assert set(scoring.AFTER_OUTPUT_LAYER) == set(TABLE_MODELS)


@pytest.mark.parametrize("class_name", sorted(TABLE_MODELS))
def test_output_layer_on_final_hidden_states_gives_the_forwards_logits(class_name):
    model = build(TABLE_MODELS[class_name])
    assert type(model).__name__ == class_name
    input_ids = torch.randint(4, 100, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids).logits
        hidden = scoring.final_hidden_states(model, input_ids)
        logits = scoring.output_layer(model)(hidden)
        bare = model.get_output_embeddings()(hidden)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    # the table's step after the output layer is needed exactly where the forward has one
    assert torch.allclose(bare, expected) == (class_name not in AFTER_OUTPUT_LAYER_MATTERS)


def test_a_class_outside_the_table_gets_no_output_layer():
    class CustomForCausalLM(transformers.LlamaForCausalLM):  # its forward could do anything
        pass

    assert scoring.output_layer(CustomForCausalLM(CONFIGS["llama"]())) is None


@pytest.mark.parametrize("slice_positions", [1, 5, 37, 100])
@pytest.mark.parametrize("softmax_dtype", [None, torch.float64])
def test_target_logprobs_equal_a_full_log_softmax(slice_positions, softmax_dtype):
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 50)
    hidden = torch.randn(37, 8, generator=generator)
    targets = torch.randint(0, 50, (3, 37), generator=generator)
    with torch.no_grad():
        full = F.log_softmax(head(hidden), dim=-1, dtype=softmax_dtype)  # (37, 50)
        targets[1, ::3] = full.argmax(dim=-1)[::3]  # some targets are the argmax
        log_probs, is_argmax = scoring.target_logprobs(head, hidden, targets, softmax_dtype, slice_positions)
    assert log_probs.dtype == torch.float64 and log_probs.shape == is_argmax.shape == (3, 37)
    torch.testing.assert_close(log_probs, full.gather(-1, targets.T).T.double(), rtol=1e-6, atol=0)
    assert torch.equal(is_argmax, full.argmax(dim=-1)[None, :] == targets)
    assert is_argmax[1, ::3].all()


def test_target_logprobs_reject_a_bad_slice_or_shape():
    head, hidden = torch.nn.Linear(8, 50), torch.randn(4, 8)
    with pytest.raises(ValueError, match="slice_positions"):
        scoring.target_logprobs(head, hidden, torch.zeros(1, 4, dtype=torch.long), slice_positions=0)
    with pytest.raises(ValueError, match="targets"):
        scoring.target_logprobs(head, hidden, torch.zeros(1, 5, dtype=torch.long))


def test_half_precision_logits_are_log_softmaxed_in_float32_and_kept_in_float64():
    generator = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(8, 50).to(torch.bfloat16)
    hidden = torch.randn(300, 8, generator=generator).to(torch.bfloat16)
    targets = torch.randint(0, 50, (2, 300), generator=generator)
    with torch.no_grad():
        logits = head(hidden)  # bfloat16, as a half-precision model's
        log_probs, _ = scoring.target_logprobs(head, hidden, targets, slice_positions=64)
        from_logits, _ = scoring.target_logprobs(None, logits, targets, slice_positions=64)
    # the direct computation: one float32 log-softmax of the same logits, a float64 sum
    exact = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.T).T.double()
    half = F.log_softmax(logits, dim=-1).gather(-1, targets.T).T  # lm-eval's HFLM: bfloat16 throughout
    assert log_probs.dtype == from_logits.dtype == torch.float64
    torch.testing.assert_close(log_probs, exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(from_logits, exact, rtol=1e-6, atol=0)
    assert float(log_probs.sum()) == pytest.approx(float(exact.sum()), rel=1e-9)
    assert abs(float(half.sum()) - float(exact.sum())) > 1e-4 * abs(float(exact.sum()))  # what it fixes


@pytest.mark.parametrize("logits_dtype, softmax_dtype, expected", [
    (torch.bfloat16, None, torch.float32),
    (torch.float16, None, torch.float32),
    (torch.float32, None, torch.float32),
    (torch.float64, None, torch.float64),  # never below the logits' own precision
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),  # an explicit softmax_dtype is honoured
    (torch.float32, torch.float64, torch.float64),
])
def test_log_softmax_dtype(logits_dtype, softmax_dtype, expected):
    assert scoring.log_softmax_dtype(logits_dtype, softmax_dtype) == expected


def test_continuation_scores_sum_each_continuation_at_the_end_of_the_positions():
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(9, 20, generator=generator, dtype=torch.float64)
    continuations = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2]]
    log_softmax = F.log_softmax(logits, dim=-1)
    expected = [float(log_softmax[torch.arange(9), continuations[0]].sum()),
                float(log_softmax[[7, 8], [1, 2]].sum())]
    scores = scoring.continuation_scores(None, logits, continuations, slice_positions=4)
    assert [total for total, _ in scores] == pytest.approx(expected, rel=1e-12)
    assert all(isinstance(total, float) and isinstance(greedy, bool) for total, greedy in scores)
    greedy = log_softmax.argmax(dim=-1).tolist()
    assert scoring.continuation_scores(None, logits, [greedy, greedy[-3:]])[1][1] is True
    with pytest.raises(ValueError, match="hidden must hold the longest continuation's 9 positions; got 8"):
        scoring.continuation_scores(None, logits[:8], continuations)
