"""The brute-force reference the attention-level methods are tested against, and the tiny models:
each paper's definition of the relative position (and visible keys) of every query-key pair,
scored in full (see docs/attention_methods.md). Shared by test_attention_kernel.py and
test_attention_patch.py."""

import copy
import functools
import math

import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.rope.rotary import rotary_modules
from tiny_models import CONFIGS

ARCHS = ("llama", "qwen2", "gpt_neox")  # GPT-NeoX rotates 4 of 16 dimensions per head
ORIGINAL = 48  # original_max_length passed to the methods, so the tiny inputs reach past it
LENGTH, PAD = 72, 9
IDS = torch.randint(4, 99, (2, LENGTH), generator=torch.Generator().manual_seed(3))

# The definitions, from the papers (docs/attention_methods.md): relative position of query i and
# key j, and which keys are visible. i, j: (Q, 1) and (1, K) tensors of positions.


def rel_rerope(i, j, o):
    return torch.minimum(i - j, torch.tensor(o["window"]))


def rel_leaky_rerope(i, j, o):
    d = (i - j).double()
    return torch.where(d < o["window"], d, o["window"] + (d - o["window"]) / o["leak"])


def rel_self_extend(i, j, o):
    g, w = o["group_size"], o["neighbor_window"]
    return torch.where(i - j < w, i - j, i // g - j // g + w - w // g)


def rel_lm_infinite(i, j, o):
    return torch.minimum(i - j, torch.tensor(ORIGINAL))


def visible_lm_infinite(i, j, o):
    return ((i - j) < o["local_window"]) | (j < o["global_tokens"])


def rel_dual_chunk(i, j, o):
    """DCA: query at i mod s (same chunk), s + i mod s or c - 1 (the chunk before: the first
    local_window queries of a chunk or the rest), c - 1 (earlier); key at j mod s."""
    c = o["original_max_length"]
    s, w = c * 3 // 4, o["local_window"]  # the default chunk size
    apart = i // s - j // s
    succ = torch.where(i % s < w, s + i % s, torch.tensor(c - 1))
    query = torch.where(apart == 0, i % s, torch.where(apart == 1, succ, torch.tensor(c - 1)))
    return query - j % s


CASES = {
    "rerope": (dict(window=20), rel_rerope, None),
    "leaky_rerope": (dict(window=20, leak=3.0), rel_leaky_rerope, None),
    "self_extend": (dict(group_size=3, neighbor_window=16), rel_self_extend, None),
    "lm_infinite": (dict(global_tokens=4, local_window=30), rel_lm_infinite, visible_lm_infinite),
    # a trained length of 24 puts the 72 tokens in four chunks of the default 18 (3/4 of it)
    "dual_chunk": (dict(original_max_length=24, local_window=3), rel_dual_chunk, None),
    "none": ({}, lambda i, j, o: i - j, None),  # with logn=true below
}


@functools.cache
def _built(arch: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[arch](), dtype=torch.float32).eval()


def tiny(arch: str):
    """A fresh copy of the tiny ``arch`` model (random weights, built once)."""
    return copy.deepcopy(_built(arch))


def padded_inputs(padded: bool):
    """The two rows of IDS, the second left-padded by PAD tokens when ``padded``; positions as
    ``generate`` assigns them (cumulative count of real tokens, from 0)."""
    ids = IDS.clone()
    mask = torch.ones_like(ids)
    if padded:
        ids[1, :PAD] = 3
        mask[1, :PAD] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def rotate_pairs(x, rel, inv_freq):
    """x: (b, h, Q, d) queries; rel: (b, Q, K) relative positions -> (b, h, Q, K, d): each query
    rotated by each pair's relative position (rotate-half layout on 2*len(inv_freq) dims)."""
    half = inv_freq.numel()
    angle = rel.double()[..., None] * inv_freq.double()  # (b, Q, K, half)
    cos, sin = angle.cos()[:, None].float(), angle.sin()[:, None].float()
    x = x[:, :, :, None, :].expand(-1, -1, -1, rel.shape[-1], -1)
    a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin, rest), dim=-1)


class Reference:
    """Brute-force attention: the model's rotary embedding made the identity, so the attention
    function gets unrotated queries and keys; each query is then rotated by every pair's relative
    position from the definition (keys stay at 0), scores masked and softmaxed in full."""

    NAME = "lmeval_ctx_test_reference"

    def __init__(self, model, rel, visible, options, logn: bool):
        self.rel, self.visible, self.options, self.logn = rel, visible, options, logn
        (_, rotary), = rotary_modules(model)
        self.inv_freq = rotary.inv_freq.clone()
        rotary.forward = lambda x, position_ids: (torch.ones(*position_ids.shape, 2 * self.inv_freq.numel()),
                                                  torch.zeros(*position_ids.shape, 2 * self.inv_freq.numel()))
        AttentionInterface.register(self.NAME, self.attention)
        AttentionMaskInterface.register(self.NAME, sdpa_mask)
        model.config._attn_implementation = self.NAME

    def attention(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        positions = kwargs["position_ids"].expand(query.shape[0], -1)  # no cache: keys = queries
        i, j = positions[:, :, None], positions[:, None, :]
        heads = query.shape[1]
        key = key.repeat_interleave(heads // key.shape[1], 1)
        value = value.repeat_interleave(heads // value.shape[1], 1)
        if self.logn:
            count = positions.double() + 1
            scale = torch.where(count > ORIGINAL, count.log() / math.log(ORIGINAL), torch.ones_like(count))
            query = query * scale[:, None, :, None].float()
        rotated = rotate_pairs(query, self.rel(i, j, self.options), self.inv_freq)
        scores = (rotated * key[:, :, None]).sum(-1) * scaling
        allowed = attention_mask if attention_mask is not None else torch.ones_like(scores, dtype=torch.bool).tril()
        if self.visible is not None:
            allowed = allowed & self.visible(i, j, self.options)[:, None]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return (scores.softmax(-1) @ value).transpose(1, 2).contiguous(), None


def with_method(arch, method, options, logn=False, engine="blocks"):
    """The tiny ``arch`` model with ``method``; ``engine``: its attention_engine (the block path by
    default: test_attention_flex.py compares FlexAttention with it)."""
    model = tiny(arch)
    extend(model.config, {"scaling": method, "original_max_length": ORIGINAL, "logn": logn or None, **options},
           model=model, alibi_options={"attention": engine})
    return model


def run(model, padded):
    ids, mask, positions = padded_inputs(padded)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=positions).logits


def cached_decoding(model, prefill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a prefill of ``prefill`` tokens of ``IDS[:1]`` and then one token at a time
    from the cache (queries fewer than keys), and the full forward's logits at the same positions."""
    ids = IDS[:1]
    with torch.no_grad():
        full = model(ids).logits[0]
        out = model(ids[:, :prefill], use_cache=True)
        steps = [out.logits[0, -1]]
        for t in range(prefill, LENGTH - 1):
            out = model(ids[:, t:t + 1], cache=out.past_key_values, use_cache=True)
            steps.append(out.logits[0, -1])
    return torch.stack(steps), full[prefill - 1:LENGTH - 1]
