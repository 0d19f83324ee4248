"""The window a model is evaluated with (its ``max_length``, in tokens), in one place.

The first that applies:

1. ``max_length`` as given;
2. the method's window, ``original_max_length x factor``
   (:func:`lmeval_ctx.extension.request.resolve_extension` resolves 1 and 2 into
   ``ContextExtension.max_length``);
3. lm-eval's default for Hugging Face models (:func:`lm_eval_window`): the config's length
   field, else the tokenizer's ``model_max_length``, else HFLM's 2048.

``ctx-hf`` evaluates with that window and records it (:func:`evaluation_window`, through
:func:`lmeval_ctx.extension.lifecycle.attach`); the tasks compare their lengths with it before
they build a prompt (:func:`model_window`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Callable

from lmeval_ctx.common.args import parse_optional_bool
from lmeval_ctx.common.checkpoint import load_config
from lmeval_ctx.extension.request import EXTENSION_ARGS, ContextExtension, resolve_extension

eval_logger = logging.getLogger(__name__)


def lm_eval_window(config, tokenizer_max_length: int | None = None) -> int:
    """lm-eval's window for a Hugging Face model given neither ``max_length`` nor a method's window.

    lm-eval's own rule (``resolve_max_length``, ``DEFAULT_MAX_LENGTH``, HFLM's default): the config's length
    field (``n_positions``, ``max_position_embeddings``, ``n_ctx``), else the tokenizer's
    ``model_max_length`` (``tokenizer_max_length``: the tokenizer's own, as shipped), else 2048.
    """
    # lm_eval.models.utils, not HFLM's module: ctx-vllm reads this too, and that module needs accelerate
    from lm_eval.models.utils import DEFAULT_MAX_LENGTH, resolve_max_length

    tokenizer = SimpleNamespace(model_max_length=tokenizer_max_length)  # all resolve_max_length reads of it
    return resolve_max_length(config, tokenizer, default=DEFAULT_MAX_LENGTH)


def evaluation_window(extension: ContextExtension, default_window: int | Callable[[], int] | None) -> int | None:
    """The window ``extension`` is evaluated with: ``max_length`` or the method's, else ``default_window``
    (lm-eval's, :func:`lm_eval_window`; a function is called only then)."""
    if extension.max_length is not None:
        return extension.max_length
    return default_window() if callable(default_window) else default_window


def model_window(settings: dict, tokenizer=None) -> tuple[int, str] | None:
    """The window (tokens) the model wrapper will use, and where it comes from; None when not known here.

    ``settings``: a task's settings, the model args merged in. ``max_length`` when given; with a
    context-extension method, the method's window, resolved from the model's config as ``ctx-hf``
    resolves it. With neither, the settings may come from ``--metadata`` alone while the model
    is an already built (perhaps already scaled) object, so lm-eval's default window is used
    only under ``truncation=True``, where nothing later would refuse an over-long request.
    Otherwise None, and ``ctx-hf`` refuses each over-long request itself.
    """
    if settings.get("max_length") not in (None, ""):
        return int(settings["max_length"]), f"max_length={settings['max_length']}"
    request = {key: settings[key] for key in EXTENSION_ARGS if settings.get(key) not in (None, "")}
    scaled = request.get("scaling", "none") not in ("none", None)
    truncation = parse_optional_bool(settings.get("truncation"), "truncation")
    pretrained = settings.get("pretrained")
    if not (scaled or truncation) or not isinstance(pretrained, str) or not pretrained:
        return None
    try:
        config = load_config(settings)
    except ValueError as error:
        eval_logger.warning("%s The window is checked by the model instead, once it is built.", error)
        return None
    if scaled:
        extension = resolve_extension(config, **request)
        if extension.max_length:
            return extension.max_length, (f"scaling={extension.requested} with factor {extension.factor:g} "
                                          f"on original_max_length={extension.original_max_length}")
    limit = getattr(tokenizer, "model_max_length", None)
    return lm_eval_window(config, limit), "the model's config"
