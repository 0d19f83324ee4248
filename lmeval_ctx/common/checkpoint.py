"""Load the evaluated model's tokenizer from the model args lm-eval hands to tasks."""

from __future__ import annotations

import functools

from lmeval_ctx.common.args import parse_bool

# model-arg keys that say where the tokenizer is
TOKENIZER_ARG_KEYS = ("tokenizer", "pretrained", "gguf_file", "revision", "trust_remote_code", "subfolder")


def tokenizer_args(kwargs: dict) -> dict:
    """The tokenizer-related subset of task kwargs (model args merged into task metadata)."""
    return {k: kwargs[k] for k in TOKENIZER_ARG_KEYS if kwargs.get(k) not in (None, "")}


def load_tokenizer(args: dict):
    """The evaluated model's tokenizer; a clear error when none is named or it cannot load."""
    source = args.get("tokenizer") or args.get("pretrained")
    if not isinstance(source, str) or not source:
        raise ValueError(
            "This task sizes its prompts in the evaluated model's tokens and needs its tokenizer, "
            "but no model path was passed. Use --model_args pretrained=<model>[,tokenizer=<tokenizer>] "
            "(or tokenizer=... in --metadata when the model has no local path)."
        )
    return _load(
        source,
        args.get("gguf_file") if not args.get("tokenizer") else None,
        str(args.get("revision") or "main"),
        parse_bool(args.get("trust_remote_code", False), "trust_remote_code"),
        str(args.get("subfolder") or ""),
    )


def from_pretrained_kwargs(gguf_file: str | None, revision: str, trust_remote_code: bool, subfolder: str) -> dict:
    """The ``from_pretrained`` keyword arguments a model's files are found by (tokenizer and config alike)."""
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if subfolder:
        kwargs["subfolder"] = subfolder
    return kwargs


@functools.lru_cache(maxsize=8)
def _load(source: str, gguf_file: str | None, revision: str, trust_remote_code: bool, subfolder: str):
    from transformers import AutoTokenizer

    kwargs = from_pretrained_kwargs(gguf_file, revision, trust_remote_code, subfolder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as error:  # transformers raises OSError, ValueError, ... depending on the cause
        raise ValueError(
            f"Could not load the tokenizer of {source!r}"
            + (f" (gguf_file={gguf_file!r})" if gguf_file else "")
            + f": {error}. Pass a loadable one with --model_args tokenizer=<path or name>."
        ) from error
    if not tokenizer("The quick brown fox.").input_ids:
        raise ValueError(f"The tokenizer of {source!r} encodes text to no tokens; pass a real one with tokenizer=...")
    return tokenizer
