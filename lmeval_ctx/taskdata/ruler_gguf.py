"""lm-eval's RULER tasks, sized with the evaluated model's tokenizer when it is a GGUF file.

RULER (Hsieh et al. 2024, arXiv:2404.06654) builds its synthetic samples at run
time and sizes each one in tokens, with a tokenizer that lm-eval loads from the
``tokenizer`` or ``pretrained`` model argument. It loads it without ``gguf_file``,
so for a model given as ``pretrained=<folder>,gguf_file=<file>`` the folder has no
tokenizer files and data generation fails (or, worse, sizes prompts with another
tokenizer). The start-up hook (:mod:`lmeval_ctx.plugin`) calls
:func:`use_gguf_tokenizer` on ``lm_eval.tasks.ruler.common_utils`` right after it
is imported, before the task modules import its functions: when the task's
arguments name a ``gguf_file`` and no explicit ``tokenizer``, the data is built
with the tokenizer stored in that GGUF file, the one ``ctx-hf`` evaluates with.
An explicit ``tokenizer=`` still wins, as in lm-eval.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

logger = logging.getLogger(__name__)

PROBE = "The quick brown fox jumps over the lazy dog."


class GGUFTokenizerSource(NamedTuple):
    """A tokenizer stored in a GGUF file: hashable, so lm-eval's cached loader can key on it."""

    pretrained: str
    gguf_file: str


def tokenizer_source(kwargs: dict, resolve_name) -> str | GGUFTokenizerSource | None:
    """What RULER should load its tokenizer from, given the task's arguments (model args + metadata)."""
    name = resolve_name(kwargs)
    gguf_file = kwargs.get("gguf_file")
    if gguf_file and not kwargs.get("tokenizer") and name is not None and name == kwargs.get("pretrained"):
        return GGUFTokenizerSource(str(name), str(gguf_file))
    return name


def load_gguf_tokenizer(source: GGUFTokenizerSource):
    """The tokenizer stored in ``source.gguf_file`` (as ``ctx-hf``/HFLM load it)."""
    from transformers import AutoTokenizer

    logger.info("RULER data sized with the tokenizer of %s/%s.", source.pretrained, source.gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.pretrained, gguf_file=source.gguf_file)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"RULER could not load the tokenizer of gguf_file={source.gguf_file!r} in pretrained="
            f"{source.pretrained!r} ({error}). Pass tokenizer=<a folder or hub name with the model's "
            "tokenizer files> in --model_args."
        ) from error
    if not tokenizer(PROBE).input_ids:
        raise ValueError(
            f"The tokenizer of gguf_file={source.gguf_file!r} encodes a sentence to 0 tokens, so RULER cannot "
            "size its samples. Pass tokenizer=<the model's tokenizer> in --model_args."
        )
    return tokenizer


def use_gguf_tokenizer(common_utils) -> None:
    """Make ``lm_eval.tasks.ruler.common_utils`` load a GGUF model's own tokenizer (idempotent)."""
    if getattr(common_utils.get_tokenizer, "_lmeval_ctx", False):
        return
    original_resolve = common_utils.resolve_tokenizer_name
    original_get = common_utils.get_tokenizer

    def resolve_tokenizer_name(kwargs: dict):
        return tokenizer_source(kwargs, original_resolve)

    @functools.cache
    def get_tokenizer(tokenizer=None, pretrained=None, **kwargs):
        if isinstance(tokenizer, GGUFTokenizerSource):
            return load_gguf_tokenizer(tokenizer)
        return original_get(tokenizer, pretrained, **kwargs)

    get_tokenizer._lmeval_ctx = True
    get_tokenizer.lm_eval_loader = original_get  # lm-eval's own, for an explicit tokenizer
    resolve_tokenizer_name.__wrapped__ = original_resolve
    common_utils.resolve_tokenizer_name = resolve_tokenizer_name
    common_utils.get_tokenizer = get_tokenizer
