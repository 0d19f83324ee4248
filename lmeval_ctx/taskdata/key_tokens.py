"""The key tokens of long-range perplexity windows, chosen once by an evaluator and kept in a file.

Key-token perplexity (LongPPL; Fang et al. 2024, arXiv:2410.23771; the rule and the passes are in
:mod:`lmeval_ctx.scoring.key_tokens`) compares methods on the same tokens only if the tokens
are chosen once, by one evaluator, not by each method's own model. So the ``longppl`` task,
given ``key_tokens: true``, chooses them when it builds its windows:

- the evaluator is ``key_token_model`` when given, else the evaluated checkpoint itself as
  transformers loads it (``pretrained``, ``gguf_file``, ...: no context-extension method);
- an evaluator must read every length as trained: a length beyond its window (its config's
  length field) is refused, since an unscaled model there is no judge of what the far context
  gives. Beyond the evaluated model's window, name a long-context evaluator with
  ``key_token_model`` (the authors use one fixed strong model), or a file it filled, or cap the
  evaluator's context with ``key_long_window`` (each token given at most its last N to N + s - 1
  tokens, read within the evaluator's window: key tokens then gain from K to N tokens of context);
- the choice is written to ``key_tokens_file`` (default: a file in the user's cache named by a
  digest of everything it depends on) and read back by every later run with the same
  evaluator, settings and window tokens, so a sweep over methods pays for it once;
- each window's key tokens go into its document (``key_offsets``, offsets into its scored
  tokens), so they are also in lm-eval's samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmeval_ctx.common.args import parse_optional_bool
from lmeval_ctx.common.checkpoint import from_pretrained_kwargs, load_config, load_tokenizer
from lmeval_ctx.common.logs import plugin_logger
from lmeval_ctx.extension.window import lm_eval_window
from lmeval_ctx.scoring.key_tokens import KEY_OFFSETS_FIELD, evaluator_logprobs, load_evaluator, select_key_tokens
from lmeval_ctx.taskdata.longppl import TokenizedDocument

eval_logger = plugin_logger(__name__)

KEY_TASK_KEYS = ("key_tokens", "key_window", "key_stride", "key_alpha", "key_beta", "key_token_model",
                 "key_tokens_file", "key_long_window")
# The paper's short context and thresholds.
DEFAULT_KEY_WINDOW, DEFAULT_ALPHA, DEFAULT_BETA = 4096, 2.0, -2.0
# Evaluator checkpoint keys taken from the model args when the evaluator is the evaluated checkpoint.
EVALUATOR_ARGS = ("pretrained", "gguf_file", "revision", "subfolder", "trust_remote_code")


@dataclass(frozen=True)
class KeyTokenSettings:
    """What decides the key tokens, checked."""

    window: int | None  # K; None: min(4096, length // 4) per length
    stride: int | None  # None: K // 4 (the authors' 1024 for K = 4096)
    alpha: float
    beta: float
    model: str | None
    file: str | None
    long_window: int | None = None  # N: the evaluator's longest context; None: the whole window

    def short_context(self, length: int) -> tuple[int, int]:
        """``(K, stride)`` at ``length``."""
        window = self.window if self.window is not None else min(DEFAULT_KEY_WINDOW, length // 4)
        if window < 1 or window >= length:
            raise ValueError(f"key_window={window} must be at least 1 and below the length {length}: the short "
                             "context must be shorter than the window. Give a smaller key_window, or longer lengths.")
        if self.long_window is not None and window >= min(self.long_window, length):
            raise ValueError(f"key_window={window} must be below key_long_window={self.long_window}: the short "
                             "context must be shorter than the long one. Give a smaller key_window.")
        return window, self._stride(window)

    def long_context(self) -> tuple[int, int] | None:
        """``(N, stride)`` of the evaluator's capped context, None for the whole window."""
        return None if self.long_window is None else (self.long_window, self._stride(self.long_window))

    def evaluator_reach(self, longest: int) -> int:
        """The most tokens the evaluator reads at once for windows of up to ``longest`` tokens."""
        long = self.long_context()
        return longest if long is None else min(longest, long[0] + long[1] - 1)

    def largest_long_window(self, trained: int) -> int:
        """The largest ``key_long_window`` an evaluator trained to ``trained`` tokens reads within its window."""
        window = trained
        while window > 1 and window + self._stride(window) - 1 > trained:
            window -= 1
        return window

    def _stride(self, window: int) -> int:
        return self.stride if self.stride is not None else max(1, window // 4)


def _number(settings: dict, key: str, default, kind):
    value = settings.get(key)
    if value in (None, ""):
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (kind is int and (number != float(value) or number < 1)):
        what = "a positive whole number of tokens" if kind is int else "a number"
        raise ValueError(f"{key}={value!r} must be {what}.")
    return number


def key_token_settings(settings: dict, stride) -> KeyTokenSettings | None:
    """The key-token settings of a ``longppl`` run, None when ``key_tokens`` is off."""
    enabled = parse_optional_bool(settings.get("key_tokens"), "key_tokens")
    given = [key for key in KEY_TASK_KEYS[1:] if settings.get(key) not in (None, "")]
    if not enabled:
        if given:
            raise ValueError(f"{given[0]}={settings[given[0]]!r} sets up key-token perplexity, which is off: add "
                             '"key_tokens": true to --metadata, or remove it.')
        return None
    if stride is not None:
        raise ValueError(f"key_tokens with stride={stride!r}: key-token perplexity (LongPPL) scores each token given "
                         "the whole document before it, so it runs on the truncation variant only; remove stride.")
    return KeyTokenSettings(_number(settings, "key_window", None, int), _number(settings, "key_stride", None, int),
                            _number(settings, "key_alpha", DEFAULT_ALPHA, float),
                            _number(settings, "key_beta", DEFAULT_BETA, float),
                            settings.get("key_token_model") or None, settings.get("key_tokens_file") or None,
                            _number(settings, "key_long_window", None, int))


def _evaluator(key: KeyTokenSettings, settings: dict) -> dict:
    """The evaluator's checkpoint arguments: ``key_token_model``, else the evaluated checkpoint's."""
    if key.model:
        return {"pretrained": key.model}
    return {name: settings[name] for name in EVALUATOR_ARGS if settings.get(name) not in (None, "")}


def check_evaluator(key: KeyTokenSettings, settings: dict, longest: int, tokenizer) -> dict:
    """The evaluator's arguments, once its window covers what it reads and it tokenizes as the evaluated model."""
    args = _evaluator(key, settings)
    trained = lm_eval_window(load_config(args))
    if key.evaluator_reach(longest) > trained:
        who = f"key_token_model={key.model!r}" if key.model else f"the evaluated checkpoint {args.get('pretrained')!r}"
        largest = key.largest_long_window(trained)
        if key.long_window is not None:
            raise ValueError(
                f"key_long_window={key.long_window}: the evaluator ({who}) would read {key.evaluator_reach(longest)} "
                f"tokens at once (N + stride - 1), past its trained {trained}. Give key_long_window={largest} or less.")
        raise ValueError(
            f"key_tokens at length {longest}: the evaluator ({who}, with no context-extension method) is trained to "
            f"{trained} tokens, so its log-probabilities beyond that say nothing about the far context. Name an "
            "evaluator trained to at least that length with key_token_model=<folder or hub name> (LongPPL's authors "
            "use one fixed long-context model), run lengths up to the evaluator's window, or cap its context with "
            f"key_long_window={largest} (key tokens are then those it predicts better from its last {largest} tokens "
            "than from its last key_window).")
    if key.model and load_tokenizer(args).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"key_token_model={key.model!r} has another vocabulary than the evaluated model: key tokens "
                         "are positions in the evaluated model's tokens. Name an evaluator with the same tokenizer.")
    return args


def _cache_file(identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lmeval_ctx" / "key_tokens" / f"{digest}.json"


def _read(path: Path, identity: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"key_tokens_file={str(path)!r} is not a key-token file ({error}).") from error
    if stored.get("identity") != identity:
        old = stored.get("identity") or {}
        differ = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        raise ValueError(f"key_tokens_file={str(path)!r} holds key tokens chosen with other {', '.join(differ)}; "
                         "name a new file, or delete this one to choose again.")
    return stored["key_tokens"]


def choose_key_tokens(key: KeyTokenSettings, settings: dict, tokenizer, windows: list[dict],
                      tokens: dict[int, list[int]]) -> tuple[dict[str, list[int]], dict]:
    """Key tokens of every window, ``{"<doc>:<length>": [positions in the window's tokens]}``, and a record.

    ``windows`` are the task's rows; ``tokens[doc]`` the longest window's tokens of that document
    (a shorter window's are a prefix). Read from the key-token file when it holds them.
    """
    evaluator = check_evaluator(key, settings, max(row["length"] for row in windows), tokenizer)
    contexts = {row["length"]: key.short_context(row["length"]) for row in windows}
    identity = {"method": "LongPPL (Fang et al. 2024, arXiv:2410.23771)", "evaluator": evaluator,
                "evaluator_dtype": settings.get("dtype") or "float32", "alpha": key.alpha, "beta": key.beta,
                "short_context": {str(length): list(pair) for length, pair in sorted(contexts.items())},
                "tokens_sha256": hashlib.sha256(json.dumps([tokens[d] for d in sorted(tokens)]).encode()).hexdigest()}
    if key.long_window is not None:  # absent otherwise, so files chosen with the whole window keep their digest
        identity["long_context"] = list(key.long_context())
    path = Path(key.file) if key.file else _cache_file(identity)
    chosen = _read(path, identity)
    if chosen is None:
        chosen = _run_evaluator(evaluator, settings, windows, tokens, contexts, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"identity": identity, "key_tokens": chosen}), encoding="utf-8")
        eval_logger.info("longppl: key tokens chosen and written to %s", path)
    else:
        eval_logger.info("longppl: key tokens read from %s", path)
    return chosen, {"key_tokens_file": str(path), **identity}


def _run_evaluator(evaluator: dict, settings: dict, windows, tokens, contexts, key: KeyTokenSettings) -> dict:
    gguf, revision = evaluator.get("gguf_file"), str(evaluator.get("revision") or "main")
    trust = parse_optional_bool(evaluator.get("trust_remote_code"), "trust_remote_code") or False
    model = load_evaluator(evaluator["pretrained"], from_pretrained_kwargs(gguf, revision, trust,
                                                                          str(evaluator.get("subfolder") or "")),
                           settings.get("dtype"), settings.get("device"))
    chosen = {}
    for doc in sorted(tokens):
        full, shorts = evaluator_logprobs(model, tokens[doc], sorted(set(contexts.values())), key.long_context())
        for row in (row for row in windows if row["doc_index"] == doc):
            n = row["window_tokens"]
            short = shorts[contexts[row["length"]]]
            chosen[f"{doc}:{row['length']}"] = select_key_tokens(full[:n], short[:n], key.alpha, key.beta)
    del model
    return chosen


def add_key_offsets(rows: list[dict], chosen: dict[str, list[int]]) -> None:
    """Write each window's key tokens into its row as offsets into its scored tokens."""
    for row in rows:
        first_scored = row["window_tokens"] - row["scored_tokens"]
        # a key token in the window's first, unscored tokens (possible only with a tiny key_window) is
        # scored by no request, as in plain perplexity
        row[KEY_OFFSETS_FIELD] = [p - first_scored for p in chosen[f"{row['doc_index']}:{row['length']}"]
                                  if p >= first_scored]


def window_tokens(tokenizer, documents, rows: list[dict], add_special_tokens: bool | None) -> dict[int, list[int]]:
    """``{document: the tokens of its longest window}`` (special tokens included), as the model receives them."""
    longest: dict[int, int] = {}
    for row in rows:
        longest[row["doc_index"]] = max(longest.get(row["doc_index"], 0), row["window_tokens"])
    tokens = {}
    for doc, size in longest.items():
        tokenized = TokenizedDocument(tokenizer, documents[doc].text, add_special_tokens)
        tokens[doc] = (tokenized.prefix + tokenized.ids)[:size]
    return tokens
