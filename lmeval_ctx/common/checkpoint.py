"""Read the evaluated checkpoint's config and tokenizer from the model args, once per checkpoint.

Model args name a checkpoint by ``pretrained`` (a folder or hub name), ``gguf_file`` (a GGUF
file inside it), ``revision``, ``trust_remote_code`` and ``subfolder``; lm-eval hands them to
tasks merged into their metadata, and to the model wrappers as keyword arguments. Each
checkpoint's config and tokenizer are read once per process (the tasks and the wrappers ask
for them again and again) and every caller gets them the same way, ``gguf_file`` included.
"""

from __future__ import annotations

import copy
import functools

from lmeval_ctx.common.args import parse_bool

# transformers' key for its one-time warning that a text is longer than the tokenizer's model_max_length
TOO_LONG_WARNING = "sequence-length-is-longer-than-the-specified-maximum"
# model-arg keys that say where the tokenizer is
TOKENIZER_ARG_KEYS = ("tokenizer", "pretrained", "gguf_file", "revision", "trust_remote_code", "subfolder")


def tokenizer_args(kwargs: dict) -> dict:
    """The tokenizer-related subset of task kwargs (model args merged into task metadata)."""
    return {k: kwargs[k] for k in TOKENIZER_ARG_KEYS if kwargs.get(k) not in (None, "")}


def from_pretrained_kwargs(gguf_file: str | None, revision: str, trust_remote_code: bool, subfolder: str) -> dict:
    """The ``from_pretrained`` keyword arguments a model's files are found by (tokenizer and config alike)."""
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if subfolder:
        kwargs["subfolder"] = subfolder
    return kwargs


def _location(args: dict) -> tuple[str | None, str, bool, str]:
    """``(gguf_file, revision, trust_remote_code, subfolder)`` from model args as lm-eval passes them (strings)."""
    return (args.get("gguf_file") or None, str(args.get("revision") or "main"),
            parse_bool(args.get("trust_remote_code") or False, "trust_remote_code"), str(args.get("subfolder") or ""))


# -- the config ----------------------------------------------------------------------------------

def load_config(args: dict):
    """The checkpoint's transformers config, read from the model args (``pretrained``, ``gguf_file``,
    ``revision``, ``trust_remote_code``, ``subfolder``). Each caller gets its own copy to edit.

    Raises ValueError naming the checkpoint when it names none or its config cannot be read.
    """
    source = args.get("pretrained")
    if not isinstance(source, str) or not source:
        raise ValueError(f"pretrained={source!r} names no checkpoint; pass --model_args "
                         "pretrained=<folder or hub name>.")
    return copy.deepcopy(_load_config(source, *_location(args)))


@functools.lru_cache(maxsize=8)
def _load_config(source: str, gguf_file: str | None, revision: str, trust_remote_code: bool, subfolder: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **from_pretrained_kwargs(gguf_file, revision, trust_remote_code,
                                                                           subfolder))
    except (OSError, ValueError) as error:  # transformers' errors for a missing or unreadable checkpoint
        raise ValueError(
            f"Could not read the config of {source!r}" + (f" (gguf_file={gguf_file!r})" if gguf_file else "")
            + f": {error}. Pass pretrained=<a folder or hub name with a config> (and gguf_file=<file> for a GGUF)."
        ) from error


def text_config(config):
    """The decoder's config for composite (multimodal) configs, else the config itself."""
    getter = getattr(config, "get_text_config", None)
    if getter is None:
        return config
    try:
        return getter(decoder=True)
    except TypeError:
        return getter()


# -- the tokenizer -------------------------------------------------------------------------------

def load_tokenizer(args: dict):
    """The evaluated model's tokenizer; a clear error when none is named or it cannot load."""
    source = args.get("tokenizer") or args.get("pretrained")
    if not isinstance(source, str) or not source:
        raise ValueError(
            "This task sizes its prompts in the evaluated model's tokens and needs its tokenizer, "
            "but no model path was passed. Use --model_args pretrained=<model>[,tokenizer=<tokenizer>] "
            "(or tokenizer=... in --metadata when the model has no local path)."
        )
    gguf_file, revision, trust_remote_code, subfolder = _location(args)
    return _load(source, gguf_file if not args.get("tokenizer") else None, revision, trust_remote_code, subfolder)


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
    # This tokenizer measures and cuts the tasks' texts; it never feeds the model (whose wrapper
    # checks each request against its window), so transformers' warning that a text longer than
    # model_max_length "will result in indexing errors" is not so here: it is marked as given.
    tokenizer.deprecation_warnings[TOO_LONG_WARNING] = True
    return tokenizer
