"""Keep lm-eval's response cache (``--use_cache``) from mixing context-extension settings.

lm-eval keys a cached response on the request alone (``hash_args(method, args)``),
not on the model's settings, so a ``pi`` run and a ``yarn`` run pointed at the
same ``--use_cache`` path would silently reuse each other's answers. For models
that name their settings (``ctx-hf``'s ``response_cache_key``), the cache file
gets that key in its name: each setting has its own file, other models keep
lm-eval's path unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging

eval_logger = logging.getLogger(__name__)


def settings_digest(model_name: str, record: dict) -> str:
    """A short digest of a model and its recorded context-extension settings (a ``response_cache_key``)."""
    identity = {"model": model_name, "extension": record}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings_cache_path(cache_db: str, lm) -> str:
    """``cache_db`` with the model's settings key before ``.db``; unchanged for other models."""
    key = getattr(lm, "response_cache_key", None)
    if not key:
        return cache_db
    stem = cache_db[:-3] if cache_db.endswith(".db") else cache_db
    return f"{stem}_ctx-{key}.db"


def install() -> None:
    """Make ``lm_eval.api.model.CachingLM`` open a per-setting file for such models (idempotent)."""
    from lm_eval.api import model as lm_model

    original = lm_model.CachingLM.__init__
    if getattr(original, "_lmeval_ctx", False):
        return

    @functools.wraps(original)
    def __init__(self, lm, cache_db: str) -> None:
        path = settings_cache_path(cache_db, lm)
        if path != cache_db:
            eval_logger.info("lmeval-ctx: responses of these context-extension settings are cached in %s", path)
        original(self, lm, path)

    __init__._lmeval_ctx = True
    lm_model.CachingLM.__init__ = __init__
