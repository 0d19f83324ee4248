"""Tiny random models of every architecture the plugin supports, saved to local folders.

Each folder holds a config, random float32 weights and a character-level tokenizer,
so lm-eval and transformers load it exactly like a hub checkpoint, offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHARACTERS = [chr(i) for i in range(32, 127)] + ["\n"]
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARACTERS)

_COMMON = dict(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=3)

# name -> config; trained lengths are small so tests can go past them cheaply
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, **_COMMON),
    "qwen2": lambda: transformers.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, **_COMMON),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, rotary_pct=0.25, **_COMMON),
    "phi3": lambda: transformers.Phi3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, original_max_position_embeddings=128,
        **_COMMON),
    "bloom": lambda: transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=8, **_COMMON),
    "bloom_6_heads": lambda: transformers.BloomConfig(hidden_size=48, n_layer=2, n_head=6, **_COMMON),
    "mpt": lambda: transformers.MptConfig(d_model=64, n_layers=2, n_heads=8, max_seq_len=128, **_COMMON),
    "falcon_alibi": lambda: transformers.FalconConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=8, alibi=True,
        new_decoder_architecture=False, multi_query=False, max_position_embeddings=128, **_COMMON),
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **_COMMON),
    # for the sliced-scoring table (lmeval_ctx/scoring.py): each forward's processing after the
    # output layer set far from a no-op (a small soft cap, a large scale)
    "mistral": lambda: transformers.MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, **_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, **_COMMON),
    "gemma2": lambda: transformers.Gemma2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, final_logit_softcapping=0.5,
        **_COMMON),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, final_logit_softcapping=0.5,
        sliding_window=16, **_COMMON),
    "cohere": lambda: transformers.CohereConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, logit_scale=8.0, **_COMMON),
    "granite": lambda: transformers.GraniteConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, logits_scaling=0.125, **_COMMON),
    # a vocabulary of realistic size, so a long window's full logits dwarf the model
    "llama_32k_vocab": lambda: transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096,
        **{**_COMMON, "vocab_size": 32768}),
    # per-layer-type RoPE, Gemma-3 style: sliding-window layers (window 32 < the trained 128) with
    # their own RoPE base beside full-attention layers
    "gemma3_layer_types": lambda: transformers.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}},
        **_COMMON),
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=1_000_000,
    )


def save_tiny_model(name: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny ``name`` model with random weights and save it with its tokenizer."""
    config = CONFIGS[name]()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder
