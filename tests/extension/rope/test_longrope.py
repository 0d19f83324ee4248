"""LongRoPE (Ding et al. 2024, arXiv:2402.13753; transformers' ``longrope``): the logits of tiny
Llama, GPT-NeoX (partial rotary) and Phi-3 models against a brute-force reference that recomputes
every rotation angle from the factor lists in float64 (``m * theta_j / lambda_j``, the long list for
inputs past the original length, the short one otherwise, cos/sin scaled by the attention factor)
and takes one softmax; the factor lists from --model_args text and from JSON files; the checks;
and models that ship longrope (kept, replaced only with replace_rope_scaling, else refused)."""

import copy
import json
import math

import pytest
import torch
import transformers
from lm_eval.utils import simple_parse_args_string
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.request import resolve_extension
from lmeval_ctx.extension.rope.rotary import rotary_modules
from tiny_models import CONFIGS

ORIGINAL, THETA = 48, 10000.0
SHORT = [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0]
LONG = [1.0, 1.3, 1.8, 2.6, 3.5, 4.4, 5.2, 6.0]


def phi3_shipping_longrope() -> transformers.Phi3Config:
    """A tiny Phi-3 as the long-context checkpoints ship it: longrope lists, no factor (transformers
    takes it as max_position_embeddings / original_max_position_embeddings = 4)."""
    return transformers.Phi3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=4 * ORIGINAL, original_max_position_embeddings=ORIGINAL,
        rope_parameters={"rope_type": "longrope", "rope_theta": THETA, "short_factor": SHORT, "long_factor": LONG},
        vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=3)


def build(config) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


class BruteForce:
    """The model with its rotary embedding made the identity; the attention rotates queries and keys
    itself by angles recomputed in float64 from the factor lists, and takes one softmax."""

    NAME = "lmeval_ctx_test_longrope_reference"

    def __init__(self, model, rotary_dim: int, short, long, factor: float):
        self.rotary_dim, self.short, self.long = rotary_dim, torch.tensor(short, dtype=torch.float64), \
            torch.tensor(long, dtype=torch.float64)
        # LongRoPE's attention factor (transformers' default, the paper's sqrt(1 + ln s / ln L))
        self.scale = math.sqrt(1 + math.log(factor) / math.log(ORIGINAL)) if factor > 1 else 1.0
        (_, rotary), = rotary_modules(model)
        rotary.forward = lambda x, position_ids: (torch.ones(*position_ids.shape, rotary_dim),
                                                  torch.zeros(*position_ids.shape, rotary_dim))
        AttentionInterface.register(self.NAME, self.attention)
        AttentionMaskInterface.register(self.NAME, sdpa_mask)
        model.config._attn_implementation = self.NAME

    def rotate(self, x, positions):
        lists = self.long if int(positions.max()) + 1 > ORIGINAL else self.short
        half = self.rotary_dim // 2
        theta = THETA ** (-torch.arange(half, dtype=torch.float64) * 2 / self.rotary_dim) / lists
        angle = positions.double()[:, None, :, None] * theta  # (batch, 1, n, half)
        x = x.double()
        a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat(((a * angle.cos() - b * angle.sin()) * self.scale,
                          (b * angle.cos() + a * angle.sin()) * self.scale, rest), dim=-1)

    def attention(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        positions = kwargs["position_ids"].expand(query.shape[0], -1)
        groups = query.shape[1] // key.shape[1]
        query, key = self.rotate(query, positions), self.rotate(key.repeat_interleave(groups, 1), positions)
        scores = query @ key.transpose(-1, -2) * scaling
        n = scores.shape[-1]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
        out = scores.softmax(-1) @ value.repeat_interleave(groups, 1).double()
        return out.to(value.dtype).transpose(1, 2).contiguous(), None


def _text(numbers) -> str:
    return ";".join(repr(x) for x in numbers)


CASES = {  # name: (config, request, rotary dimensions, the lists and factor the reference uses)
    "llama": (lambda: CONFIGS["llama"](), dict(scaling="longrope", factor=4, original_max_length=ORIGINAL,
                                              short_factor=_text(SHORT), long_factor=_text(LONG)), 16, SHORT, LONG, 4),
    # GPT-NeoX rotates 4 of its 16 dimensions: two frequencies, two factors each
    "gpt_neox": (lambda: CONFIGS["gpt_neox"](), dict(scaling="longrope", factor=3, original_max_length=ORIGINAL,
                                                    short_factor="1.1;1.4", long_factor="2;5"), 4,
                 [1.1, 1.4], [2.0, 5.0], 3),
    # a checkpoint's own longrope kept with scaling=none
    "phi3_shipped": (phi3_shipping_longrope, dict(scaling="none"), 16, SHORT, LONG, 4),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", [72, 40])  # past the original 48 (long factors), and within it (short)
def test_logits_match_the_brute_force_reference(case, length):
    make_config, request, rotary_dim, short, long, factor = CASES[case]
    model = build(make_config())
    extend(model.config, request, model=model)
    reference = copy.deepcopy(model)
    BruteForce(reference, rotary_dim, short, long, factor)
    ids = torch.randint(4, 99, (2, length), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert (got - want).abs().max() <= 1e-5
    plain = build(make_config())
    extend(plain.config, {"scaling": "pi", "factor": 1, "replace_rope_scaling": True,
                          "original_max_length": ORIGINAL}, model=plain)  # RoPE as trained, no factor
    with torch.no_grad():
        assert (plain(ids).logits - got).abs().max() > 1e-4  # the factors do change the logits


def test_lists_survive_lm_evals_model_args_parser():
    args = simple_parse_args_string("pretrained=x,scaling=longrope,factor=4,short_factor=1.0;1.05,long_factor=2;4.5")
    assert args["short_factor"] == "1.0;1.05" and args["long_factor"] == "2;4.5"
    config = CONFIGS["gpt_neox"]()
    ext = resolve_extension(config, **{k: v for k, v in args.items() if k != "pretrained"})
    assert ext.options == {"short_factor": [1.0, 1.05], "long_factor": [2.0, 4.5]} and ext.length_dependent
    assert ext.max_length == 4 * 128 and ext.factor == 4.0


def test_lists_from_a_json_file(tmp_path):
    plain = tmp_path / "factors.json"
    plain.write_text(json.dumps({"short_factor": SHORT, "long_factor": LONG}))
    checkpoint = tmp_path / "config.json"  # a Phi-3 config.json holds them under rope_scaling
    checkpoint.write_text(json.dumps({"model_type": "phi3", "rope_scaling": {"type": "longrope",
                                                                            "short_factor": SHORT,
                                                                            "long_factor": LONG}}))
    for path in (plain, checkpoint):
        config = CONFIGS["llama"]()
        ext = resolve_extension(config, scaling="longrope", max_length=512, longrope_factors=str(path),
                                attention_factor=1.25)
        assert ext.options == {"short_factor": SHORT, "long_factor": LONG, "attention_factor": 1.25}
        extend(config, {"scaling": "longrope", "max_length": 512, "longrope_factors": str(path),
                        "attention_factor": 1.25})
        assert config.rope_parameters == {"rope_theta": THETA, "rope_type": "longrope", "factor": 4.0,
                                          "original_max_position_embeddings": 128, "short_factor": SHORT,
                                          "long_factor": LONG, "attention_factor": 1.25}


@pytest.mark.parametrize("request_, message", [
    (dict(factor=2), r"scaling=longrope needs both factor lists.*longrope_factors=<a JSON file"),
    (dict(factor=2, short_factor="1;1"), r"needs both factor lists"),
    (dict(factor=2, short_factor="1;x", long_factor="1;2"), r"short_factor='1;x' is not a list of positive numbers"
                                                           r".*separated by ';'"),
    (dict(factor=2, short_factor="1;-1", long_factor="1;2"), r"short_factor='1;-1' is not a list of positive"),
    (dict(factor=2, short_factor="1;1", long_factor="1;2;3"), r"short_factor has 2 numbers and long_factor 3"),
    (dict(factor=2, short_factor="1;1", long_factor="1;2", longrope_factors="f.json"),
     r"short_factor, long_factor and longrope_factors='f.json' both give LongRoPE factors"),
    (dict(factor=2, longrope_factors="/no/such/file.json"), r"longrope_factors='/no/such/file.json' cannot be read"),
    (dict(factor=2, short_factor="1;1;1", long_factor="1;2;3"), r"short_factor has 3 numbers, but this model rotates "
                                                               r"4 dimensions per head.*rotary_dim / 2 = 2"),
    (dict(factor=2, short_factor="1;1", long_factor="1;2", attention_factor=0), r"attention_factor=0 must be > 0"),
    (dict(short_factor="1;1", long_factor="1;2"), r"scaling='longrope' needs a scale: pass factor"),
    (dict(factor=2, short_factor="1;1", long_factor="1;2", beta_fast=4), r"beta_fast only apply to scaling=yarn"),
])
def test_bad_requests_name_the_argument_and_the_fix(request_, message):
    config = CONFIGS["gpt_neox"]()
    with pytest.raises(ValueError, match=message):
        extend(config, {"scaling": "longrope", **request_})


def test_a_file_without_the_lists_or_not_json(tmp_path):
    empty, broken = tmp_path / "empty.json", tmp_path / "broken.json"
    empty.write_text(json.dumps({"rope_scaling": {"type": "yarn"}}))
    broken.write_text("{short_factor: [1")
    with pytest.raises(ValueError, match=r"holds no short_factor and long_factor lists"):
        resolve_extension(CONFIGS["llama"](), scaling="longrope", factor=2, longrope_factors=str(empty))
    with pytest.raises(ValueError, match=r"broken.json' is not JSON"):
        resolve_extension(CONFIGS["llama"](), scaling="longrope", factor=2, longrope_factors=str(broken))


def test_a_model_shipping_longrope_is_kept_replaced_on_request_or_refused():
    config = phi3_shipping_longrope()
    shipped = copy.deepcopy(config.rope_parameters)
    ext = resolve_extension(config)  # scaling=none: as shipped, and its loss depends on the input length
    assert ext.length_dependent and ext.original_max_length == ORIGINAL
    extend(config, {})
    assert config.rope_parameters == shipped
    for method, extra in (("yarn", {}), ("longrope", {"short_factor": "1;" * 7 + "1", "long_factor": "2;" * 7 + "2"})):
        with pytest.raises(ValueError, match=r"already ships a RoPE scaling \(rope_type=longrope\).*"
                                             r"replace_rope_scaling=True"):
            resolve_extension(config, scaling=method, factor=2, **extra)
    extend(config, {"scaling": "longrope", "factor": 2, "replace_rope_scaling": True,
                    "short_factor": "1;" * 7 + "1", "long_factor": "2;" * 7 + "2"})
    assert config.rope_parameters["short_factor"] == [1.0] * 8 and config.rope_parameters["factor"] == 2.0
    assert config.rope_parameters["original_max_position_embeddings"] == ORIGINAL
    with pytest.raises(ValueError, match=r"longrope.*ALiBi"):
        resolve_extension(transformers.BloomConfig(), scaling="longrope", factor=2, original_max_length=2048)
