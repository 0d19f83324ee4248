"""lm-eval hooks of the long-range perplexity tasks; the logic is lmeval_ctx.taskdata.longppl."""

import logging
import math
from pathlib import Path

import datasets

from lmeval_ctx.common.args import parse_optional_bool
from lmeval_ctx.taskdata.lengths import validate_lengths
from lmeval_ctx.scoring.key_tokens import KEY_OFFSETS_FIELD
from lmeval_ctx.taskdata.key_tokens import (KEY_TASK_KEYS, add_key_offsets, choose_key_tokens, key_token_settings,
                                            window_tokens)
from lmeval_ctx.taskdata.longppl import build_windows, read_corpus
from lmeval_ctx.taskdata.task_classes import NotedTask, PerLengthTask, check_task_keys, check_window, dataset_notes
from lmeval_ctx.common.checkpoint import load_tokenizer, tokenizer_args

eval_logger = logging.getLogger(__name__)

# The corpus settings. They carry a corpus_ prefix because lm-eval hands the model args to
# tasks in the same dictionary: "revision" there is the model's revision, never the corpus's.
CORPUS_KEYS = ("corpus_path", "corpus_name", "corpus_split", "corpus_files", "corpus_revision", "text_field")
# Earlier names of corpus settings, still accepted: no model argument uses them.
CORPUS_ALIASES = {"dataset_path": "corpus_path", "dataset_name": "corpus_name", "split": "corpus_split",
                  "data_files": "corpus_files"}
TASK_KEYS = ("lengths", "fixed_length", *CORPUS_KEYS, "num_docs", "stride", "span", *CORPUS_ALIASES, *KEY_TASK_KEYS)


def _corpus_settings(kwargs: dict, fixed: bool) -> dict:
    """The corpus settings under their corpus_ names, earlier names folded in."""
    settings = {key: kwargs.get(key) for key in CORPUS_KEYS}
    for alias, key in CORPUS_ALIASES.items():
        if kwargs.get(alias) is None:
            continue
        if fixed:
            raise ValueError(f"{alias}={kwargs[alias]!r}: the longppl_<N> tasks read PG19; a corpus of your own is "
                             "for the configurable task: --tasks longppl --metadata "
                             f"'{{\"lengths\": [...], \"{key}\": ...}}'.")
        if settings[key] is not None and settings[key] != kwargs[alias]:
            raise ValueError(f"{alias}={kwargs[alias]!r} and {key}={settings[key]!r} disagree: {alias} is the "
                             f"earlier name of {key}; give {key} only.")
        settings[key] = kwargs[alias]
    for key in ("corpus_name", "corpus_files"):
        if fixed and settings[key] is not None:
            raise ValueError(f"{key}={settings[key]!r}: the longppl_<N> tasks read PG19; a corpus of your own is for "
                             "the configurable task: --tasks longppl --metadata '{\"lengths\": [...], ...}'.")
    hub = settings["corpus_path"] and not Path(str(settings["corpus_path"])).exists()
    if hub and settings["corpus_revision"] is None and kwargs.get("revision") not in (None, ""):
        raise ValueError(
            f"revision={kwargs['revision']!r} is the model's revision (lm-eval hands --model_args to tasks too), and "
            f"longppl does not read it as the revision of the corpus {settings['corpus_path']!r}. Say which revision "
            'the corpus loads with corpus_revision: --metadata \'{"corpus_revision": "<commit sha>"}\' '
            '(or "main" for its current revision).')
    return settings


def longppl_dataset(fixed_length=None, lengths=None, num_docs=None, stride=None, span=None, **kwargs):
    """lm-eval ``custom_dataset``: called with the task metadata, the model args and dataset_kwargs.

    Keys, lengths and the model's window are checked before the corpus is read.
    """
    check_task_keys({"lengths": lengths, "num_docs": num_docs, "stride": stride, "span": span, **kwargs},
                    TASK_KEYS, task="longppl")
    # a fixed-length task leaves lengths to the configurable tasks of the run (NotedTask.check_lengths_have_a_use)
    if fixed_length is None and lengths is None:
        raise ValueError('The longppl task needs its lengths: --metadata \'{"lengths": [2048, 4096, 8192]}\'.')
    lengths = validate_lengths([fixed_length] if fixed_length is not None else lengths)
    corpus = _corpus_settings(kwargs, fixed=fixed_length is not None)
    key = key_token_settings(kwargs, stride)
    if stride is not None and span is None:
        span = max(lengths)  # the documented default: the span is the longest length
    tokenizer = load_tokenizer(tokenizer_args(kwargs))
    check_window("longppl", max(lengths), kwargs, tokenizer, what="windows")
    documents, identity = read_corpus(corpus["corpus_path"], corpus["corpus_name"], corpus["corpus_files"],
                                      corpus["text_field"] or "text", corpus["corpus_split"] or "test",
                                      corpus["corpus_revision"], num_docs)
    add_special_tokens = parse_optional_bool(kwargs.get("add_bos_token"), "add_bos_token")
    windows, left_out = build_windows(tokenizer, documents, lengths, stride=stride, span=span,
                                      add_special_tokens=add_special_tokens)
    for length, count in left_out.items():
        if count:
            eval_logger.warning("longppl: %d of %d documents are empty or shorter than %s tokens and are left out "
                                "at length %d.", count, len(documents), span if stride else length, length)
    notes = {"documents": len(documents), "documents_left_out": {str(k): v for k, v in left_out.items()},
             "variant": f"sliding window, stride {stride}, span {span}" if stride else "truncation",
             "data_identity": identity}
    rows = [window.as_doc() for window in windows]
    if key is not None:  # LongPPL: every window's key tokens, chosen once by the evaluator
        chosen, notes["key_tokens"] = choose_key_tokens(key, kwargs, tokenizer, rows,
                                                        window_tokens(tokenizer, documents, rows, add_special_tokens))
        add_key_offsets(rows, chosen)
    return {"test": datasets.Dataset.from_list(rows, info=datasets.DatasetInfo(description=dataset_notes(notes)))}


def doc_to_context(doc):
    return doc["context"]


def doc_to_continuation(doc):
    return doc["continuation"]


def process_results(doc, results):
    answer = results[0]
    loglikelihood, _ = answer
    metrics = {
        "token_perplexity": (loglikelihood, doc["scored_tokens"]),
        "word_perplexity": (loglikelihood, doc["words"]),
        "bits_per_byte": (loglikelihood, doc["bytes"]),
        "docs": int(doc["first_of_document"]),
        "tokens": doc["scored_tokens"],
    }
    if doc.get(KEY_OFFSETS_FIELD) is None:
        return metrics
    if not hasattr(answer, "key_logprob"):
        raise ValueError(
            "key_tokens: the model answered with one log-probability sum per window, as lm-eval's loglikelihood "
            "does, and key-token perplexity needs the key tokens' own. Run with --model ctx-hf (scaling=none for the "
            "model as it is), which scores them in the same pass; without --use_cache, whose entries hold sums only.")
    metrics["key_token_perplexity"] = (answer.key_logprob, answer.key_count)
    metrics["key_tokens"] = answer.key_count
    return metrics


def total(items):
    return sum(items)


def key_token_perplexity(items):
    """``exp(-sum of key log-probs / key tokens)``; NaN when no window has a key token."""
    count = sum(n for _, n in items)
    return math.exp(-sum(logprob for logprob, _ in items) / count) if count else float("nan")


class LongPerplexityTask(NotedTask):
    """A fixed-length ``longppl_<L>`` task; records how many documents were too short."""


class PerLengthPerplexityTask(PerLengthTask):
    """The configurable ``longppl`` task: metrics reported as ``token_perplexity@<length>``, ..."""
