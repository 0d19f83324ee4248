"""The architecture table against transformers' configs and modules."""

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.mpt import modeling_mpt

from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.alibi import install as alibi_install
from lmeval_ctx.extension.architectures import (
    ALIBI_ARCHITECTURES,
    ATTENTION_ARCHITECTURES,
    AlibiArchitecture,
    alibi_architecture,
    check_attention_architecture,
)
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
    assert callable(getattr(alibi_install, arch.slope_dispatcher))
    assert callable(getattr(alibi_attention, arch.attention_forward))


@pytest.mark.parametrize("model_type", sorted(ALIBI_ARCHITECTURES))
def test_config_readers(model_type):
    config = CONFIGS[model_type]
    arch = alibi_architecture(config)
    assert arch is ALIBI_ARCHITECTURES[model_type] and position_family(config) == "alibi"
    assert len(arch.base_slopes(config)) == 12


def test_mpt_slopes_follow_alibi_bias_max():
    slopes = ALIBI_ARCHITECTURES["mpt"].base_slopes(CONFIGS["mpt"])
    # transformers' own function, not a dispatcher another test may have installed
    build = getattr(modeling_mpt.build_mpt_alibi_tensor, "__wrapped__", modeling_mpt.build_mpt_alibi_tensor)
    torch.testing.assert_close(torch.tensor(slopes), -build(12, 2, alibi_bias_max=6)[:, 0, 0], rtol=1e-6, atol=0)


def test_falcon_is_alibi_only_with_the_flag():
    assert alibi_architecture(transformers.FalconConfig(alibi=False)) is None
    assert position_family(transformers.FalconConfig(alibi=False)) == "rope"
    assert alibi_architecture(transformers.LlamaConfig()) is None


def test_the_attention_architectures_are_checked_by_name():
    for model_type in ATTENTION_ARCHITECTURES:
        check_attention_architecture("scaling=rerope", model_type)
    with pytest.raises(ValueError, match=r"logn=true changes attention.*llama.*this model is gemma2.*RoPE rescaling"):
        check_attention_architecture("logn=true", "gemma2")


def _attributes_read(tree: ast.AST, of_self: bool) -> set[str]:
    """Attribute names read in ``tree``: ``x.name`` (``self.name`` only if ``of_self``)."""
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
            and (of_self or getattr(node.value, "id", None) != "self")}


def test_every_field_and_method_of_the_table_is_read():
    """A field nothing reads misleads whoever adds an architecture. Each field and method of an
    entry is read somewhere in the package: outside the class (``entry.name``; ``self.name`` there
    is another object's), or inside one of its methods that is."""
    root = Path(__file__).resolve().parents[2]
    inside, outside = {}, set()
    for path in [*(root / "lmeval_ctx").rglob("*.py"), *(root / "model_wrappers").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == AlibiArchitecture.__name__:
                methods = [m for m in node.body if isinstance(m, ast.FunctionDef)]
                inside = {m.name: _attributes_read(m, of_self=True) for m in methods}
                node.body = []  # what the class reads of itself counts only through its methods
        outside |= _attributes_read(tree, of_self=False)
    read, grown = set(outside), True
    while grown:
        more = set().union(*(reads for method, reads in inside.items() if method in read))
        grown = not more <= read
        read |= more
    names = [field.name for field in dataclasses.fields(AlibiArchitecture)] + list(inside)
    assert [name for name in names if name not in read] == []
