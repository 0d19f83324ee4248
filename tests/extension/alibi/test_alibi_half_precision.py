"""The ALiBi attention in bfloat16 (the block path and FlexAttention): its error against float32
does not grow with the position.

The bias is formed from relative positions in float32 (lmeval_ctx/extension/alibi/attention.py,
``AlibiBias``), not from ``slope x absolute position`` rounded to bfloat16, where at position
8,000 one bfloat16 step is 32 positions (docs/alibi_attention.md, "Precision"). References are
independent: the same model in float32, the bias written here from its definition in float64,
and transformers' own attention in bfloat16.

The tiny models are tests/tiny_models.py's, with weights drawn at ``initializer_range=0.2``
(not 0.02) so that attention and log-probabilities are far from uniform and a bias error shows.
"""

import copy
import math

import pytest
import torch
import transformers

from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.alibi.install import install_alibi_scaling
from lmeval_ctx.extension.alibi.scaling import AlibiScaling
from lmeval_ctx.extension.architectures import alibi_architecture
from tiny_models import CONFIGS

ARCHS = ("bloom", "mpt", "falcon_alibi")
METHODS = ("none", "pi", "ntk", "dynamic_ntk", "lm_infinite")
TRAINED, FACTOR = 256, 32.0
LENGTH = 8192
EDGE = 512  # positions averaged at each end
GROWTH = 1.5  # mean error over the last EDGE positions / over the first EDGE, at most


def scaling(method: str) -> AlibiScaling:
    if method == "lm_infinite":
        return AlibiScaling(method, None, TRAINED, {"global_tokens": 10, "local_window": TRAINED})
    return AlibiScaling(method, None if method in ("none", "dynamic_ntk") else FACTOR, TRAINED)


@pytest.fixture(scope="module")
def models():
    """``models(arch)``: (float32, bfloat16) copies of one tiny model with sharp random weights."""
    built = {}

    def get(arch: str):
        if arch not in built:
            config = CONFIGS[arch]()
            config.initializer_range = 0.2
            torch.manual_seed(0)
            full = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
            built[arch] = full, copy.deepcopy(full).to(torch.bfloat16)
        return built[arch]

    return get


def random_ids(length: int) -> torch.Tensor:
    return torch.randint(4, 100, (1, length), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def target_logprobs(model, ids) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for every position, in float32."""
    logits = model(ids, attention_mask=torch.ones_like(ids)).logits.float()
    return torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]


def bfloat16_error(models, arch, method, ids, attention="blocks") -> torch.Tensor:
    """|log-prob in bfloat16 (with ``attention``) - log-prob in float32 (the blocks)| per position."""
    full, half = models(arch)
    install_alibi_scaling(full, scaling(method), attention="blocks")
    install_alibi_scaling(half, scaling(method), attention=attention)
    return (target_logprobs(half, ids) - target_logprobs(full, ids)).abs()


@pytest.mark.parametrize("engine", ["blocks", "flex"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method, length", [("ntk", 4096)] + [
    pytest.param(method, LENGTH, marks=pytest.mark.slow) for method in METHODS])  # 8k: 10-35 s each
def test_the_error_does_not_grow_with_the_position(models, monkeypatch, arch, method, length, engine):
    """Both engines: the block path and FlexAttention (its bias formed in float32 inside the kernel)."""
    calls = []
    for name in ("flex_alibi_attention", "blocked_alibi_attention"):
        original = getattr(alibi_attention, name)
        monkeypatch.setattr(alibi_attention, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    error = bfloat16_error(models, arch, method, random_ids(length), attention=engine)
    assert f"{'flex' if engine == 'flex' else 'blocked'}_alibi_attention" in calls, f"{engine} did not run"
    first, last = error[:EDGE].mean().item(), error[-EDGE:].mean().item()
    assert first > 1e-4, "bfloat16 and float32 agree exactly: the half-precision model did not run"
    assert last <= GROWTH * first, f"mean error {first:.4f} over the first {EDGE} positions, {last:.4f} over the last"


@pytest.mark.parametrize("arch", ARCHS)
def test_closer_to_float32_than_transformers_attention(models, arch):
    """transformers' attention (BLOOM, MPT eager; Falcon SDPA with its dense mask) in bfloat16 at
    2,048 tokens (its ``heads x L x L`` tensors stay small), against the same float32 reference."""
    ids = random_ids(2048)
    ours = bfloat16_error(models, arch, "ntk", ids).mean().item()
    theirs = bfloat16_error(models, arch, "ntk", ids, attention="transformers").mean().item()
    assert ours < theirs, f"blocked attention {ours:.4f} nats from float32, transformers' {theirs:.4f}"


def reference_bias(arch: str, config, slopes: list[float], query: int, keys: torch.Tensor) -> torch.Tensor:
    """``(heads, keys)`` float64: the float32 model's bias of ``query`` on ``keys``, relative to the
    query itself, from its definition: ``-m_h (i - j)``; Falcon: its bfloat16 slopes times integer
    positions in bfloat16, in every dtype (the expression of transformers' ``build_alibi_tensor``:
    the position is rounded to bfloat16 too), over ``sqrt(head_dim)``."""
    if arch != "falcon_alibi":
        return -torch.tensor(slopes, dtype=torch.float64)[:, None] * (query - keys.double())[None]
    # over all positions at once, as the model forms it
    falcon = (torch.tensor(slopes)[:, None].bfloat16() * torch.arange(query + 1)[None]).double()
    return (falcon[:, keys] - falcon[:, query:query + 1]) / math.sqrt(config.hidden_size // config.num_attention_heads)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_mask_near_the_diagonal_is_the_bias_rounded_once(models, monkeypatch, arch):
    """At 4,096 tokens, the bfloat16 mask SDPA gets for the last block, minus each row's value on
    its diagonal, is the float32 model's bias rounded once to bfloat16, for the 64 nearest keys
    (with ``slope x absolute position`` rounded first, neighbouring keys there share one value)."""
    length, near = 4096, 64
    _, half = models(arch)
    install_alibi_scaling(half, scaling("ntk"), attention="blocks")
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recorded(query, key, value, *args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(query, key, value, *args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
    target_logprobs(half, random_ids(length))
    mask = masks[len(masks) // 2 - 1][0].double()  # the first layer's last block: (heads, rows, keys)
    assert masks[0].dtype == torch.bfloat16
    rows = mask.shape[1]
    slopes = scaling("ntk").slopes(alibi_architecture(half.config).base_slopes(half.config), length)
    for row in range(rows):
        query = length - rows + row
        keys = torch.arange(query - near + 1, query + 1)
        ours = mask[:, row, keys] - mask[:, row, query:query + 1]
        expected = reference_bias(arch, half.config, slopes, query, keys)
        torch.testing.assert_close(ours, expected, rtol=2**-8, atol=1e-6, msg=lambda m: f"row {query}: {m}")

