"""lm-eval hooks of the long-range perplexity tasks; the logic is lmeval_ctx.longppl."""

import logging

import datasets

from lmeval_ctx.lengths import validate_lengths
from lmeval_ctx.longppl import build_windows, load_corpus
from lmeval_ctx.task_classes import NotedTask, PerLengthTask, dataset_notes
from lmeval_ctx.tokenizers import load_tokenizer, tokenizer_args

eval_logger = logging.getLogger(__name__)


def longppl_dataset(fixed_length=None, lengths=None, dataset_path=None, dataset_name=None, data_files=None,
                    text_field="text", split="test", revision=None, num_docs=None, stride=None, span=None,
                    max_length=None, add_bos_token=None, **kwargs):
    """lm-eval ``custom_dataset``: called with the task metadata, the model args and dataset_kwargs."""
    if fixed_length is None and lengths is None:
        raise ValueError('The longppl task needs its lengths: --metadata \'{"lengths": [2048, 4096, 8192]}\'.')
    lengths = validate_lengths([fixed_length] if fixed_length is not None else lengths)
    if max_length is not None and int(max_length) < max(lengths):
        raise ValueError(
            f"max_length={max_length} is smaller than the task's length {max(lengths)}: the windows would not fit. "
            "Raise max_length (or factor), or run a shorter length."
        )
    tokenizer = load_tokenizer(tokenizer_args(kwargs))
    documents = load_corpus(dataset_path, dataset_name, data_files, text_field, split, revision, num_docs)
    windows, left_out = build_windows(tokenizer, documents, lengths, stride=stride, span=span,
                                      add_special_tokens=_as_bool(add_bos_token))
    for length, count in left_out.items():
        if count:
            eval_logger.warning("longppl: %d of %d documents are shorter than %s tokens and are left out at length %d.",
                                count, len(documents), span if stride else length, length)
    notes = {"documents": len(documents), "documents_left_out": {str(k): v for k, v in left_out.items()},
             "variant": f"sliding window, stride {stride}" if stride else "truncation"}
    rows = [window.as_doc() for window in windows]
    return {"test": datasets.Dataset.from_list(rows, info=datasets.DatasetInfo(description=dataset_notes(notes)))}


def _as_bool(value):
    if value is None or isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


def doc_to_context(doc):
    return doc["context"]


def doc_to_continuation(doc):
    return doc["continuation"]


def process_results(doc, results):
    loglikelihood, _ = results[0]
    return {
        "token_perplexity": (loglikelihood, doc["scored_tokens"]),
        "word_perplexity": (loglikelihood, doc["words"]),
        "bits_per_byte": (loglikelihood, doc["bytes"]),
        "docs": int(doc["first_of_document"]),
        "tokens": doc["scored_tokens"],
    }


def total(items):
    return sum(items)


class LongPerplexityTask(NotedTask):
    """A fixed-length ``longppl_<L>`` task; records how many documents were too short."""


class PerLengthPerplexityTask(PerLengthTask):
    """The configurable ``longppl`` task: metrics reported as ``token_perplexity@<length>``, ..."""
