"""The ALiBi architecture table against transformers' configs and modules."""

import importlib

import pytest
import torch
import transformers
from transformers.models.mpt import modeling_mpt

from lmeval_ctx.extension.alibi import attention as alibi_attention; from lmeval_ctx.extension.alibi import install as alibi_patch
from lmeval_ctx.extension.architectures import ALIBI_ARCHITECTURES, alibi_architecture
from lmeval_ctx.extension.request import position_family

CONFIGS = {
    "bloom": transformers.BloomConfig(n_head=12),
    "mpt": transformers.MptConfig(n_heads=12, max_seq_len=2048, attn_config={"alibi_bias_max": 6}),
    "falcon": transformers.FalconConfig(num_attention_heads=12, alibi=True, max_position_embeddings=2048),
}


@pytest.mark.parametrize("model_type", sorted(ALIBI_ARCHITECTURES))
def test_each_entry_names_what_transformers_and_this_package_have(model_type):
    arch = ALIBI_ARCHITECTURES[model_type]
    module = importlib.import_module(arch.module)
    assert callable(getattr(module, arch.slope_function))
    assert issubclass(getattr(module, arch.attention_class), torch.nn.Module)
    assert callable(getattr(module, "create_causal_mask"))
    assert callable(getattr(alibi_patch, arch.slope_dispatcher))
    assert callable(getattr(alibi_attention, arch.attention_forward))


@pytest.mark.parametrize("model_type", sorted(ALIBI_ARCHITECTURES))
def test_config_readers(model_type):
    config = CONFIGS[model_type]
    arch = alibi_architecture(config)
    assert arch is ALIBI_ARCHITECTURES[model_type] and position_family(config) == "alibi"
    assert arch.num_heads(config) == 12 and len(arch.base_slopes(config)) == 12
    assert arch.trained_window(config) == (None if model_type == "bloom" else 2048)


def test_mpt_slopes_follow_alibi_bias_max():
    slopes = ALIBI_ARCHITECTURES["mpt"].base_slopes(CONFIGS["mpt"])
    # transformers' own function, not a dispatcher another test may have installed
    build = getattr(modeling_mpt.build_mpt_alibi_tensor, "__wrapped__", modeling_mpt.build_mpt_alibi_tensor)
    torch.testing.assert_close(torch.tensor(slopes), -build(12, 2, alibi_bias_max=6)[:, 0, 0], rtol=1e-6, atol=0)


def test_falcon_is_alibi_only_with_the_flag():
    assert alibi_architecture(transformers.FalconConfig(alibi=False)) is None
    assert position_family(transformers.FalconConfig(alibi=False)) == "rope"
    assert alibi_architecture(transformers.LlamaConfig()) is None
