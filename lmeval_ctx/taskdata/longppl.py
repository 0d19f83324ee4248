"""Long-range perplexity: corpora, and token-exact windows of the evaluated model's tokens.

The measure of PI (Chen et al. 2023, arXiv:2306.15595) and YaRN (Peng et al.
2023, arXiv:2309.00071): perplexity of long documents as the window grows.

- Truncation (YaRN's setup, the default): the first ``L`` tokens of each
  document, every token after the first predicted from all tokens before it.
- Sliding window (PI's setup, ``stride`` set): windows of ``L`` tokens whose ends
  advance by ``stride`` over the document's first ``span`` tokens; each window
  scores only the tokens it adds, so every token in the span is scored once.

Each window becomes one lm-eval loglikelihood request ``(context, continuation)``
whose text the model's tokenizer encodes back to exactly the window's tokens
(a cut that would not, e.g. inside a multi-byte character or after whitespace
that lm-eval would move across the split, is moved back by a token or two).
Perplexity is ``exp(total NLL / total scored tokens)``: weighted by tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lmeval_ctx.common.paths import SHIPPED_CORPUS
from lmeval_ctx.taskdata.lengths import validate_lengths

# How far a window's end (or a context's end) may move to reach a token-exact cut.
MAX_CUT_ADJUST = 32

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# A local file of any kind but parquet may be gzip-compressed: ``novels.jsonl.gz``.
COMPRESSED_SUFFIX = ".gz"


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class Window:
    """One scored window: an lm-eval loglikelihood request and what it scores."""

    doc_index: int  # position of the document in the corpus
    title: str
    length: int  # the evaluated length L (model tokens, special tokens included)
    context: str  # text of the window's unscored tokens
    continuation: str  # text of the scored tokens
    window_tokens: int  # tokens the model receives: special + context + continuation
    scored_tokens: int
    first_of_document: bool
    bytes: int  # UTF-8 bytes of the scored text (bits per byte)
    words: int  # whitespace-separated words of the scored text (word perplexity)

    def as_doc(self) -> dict:
        return asdict(self)


# -- corpora ---------------------------------------------------------------------------

def load_corpus(dataset_path: str | None = None, dataset_name: str | None = None, data_files=None,
                text_field: str = "text", split: str = "test", revision: str | None = None,
                num_docs: int | None = None) -> list[Document]:
    """The documents of a corpus, in order: a local file, a hub dataset, or the shipped excerpts.

    ``data_files`` alone may name a local ``.txt`` (the whole file is one document),
    ``.jsonl``/``.json`` (one document per record), ``.csv`` or ``.parquet`` file (any but
    ``.parquet`` may be gzip-compressed: ``novels.jsonl.gz``), or a list of them. With
    neither ``data_files`` nor ``dataset_path``, the shipped corpus.
    """
    return read_corpus(dataset_path, dataset_name, data_files, text_field, split, revision, num_docs)[0]


def read_corpus(dataset_path: str | None = None, dataset_name: str | None = None, data_files=None,
                text_field: str = "text", split: str = "test", revision: str | None = None,
                num_docs: int | None = None) -> tuple[list[Document], dict]:
    """:func:`load_corpus`'s documents and the identity of what was read.

    The identity is ``{"kind": ..., "value": ...}``: ``sha256`` of a local file's bytes
    (of the files' digests joined by newlines, for several files), ``hub_revision`` (the
    commit ``datasets`` resolved) for a hub dataset, ``fingerprint`` (``datasets``'
    fingerprint of the rows) for a dataset folder on disk.
    """
    if num_docs is not None and (isinstance(num_docs, bool) or not isinstance(num_docs, int) or num_docs < 1):
        raise ValueError(f"num_docs must be a positive whole number; got {num_docs!r}.")
    if data_files is None and not dataset_path:
        data_files = str(SHIPPED_CORPUS)
    if data_files is not None and not dataset_path:
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        if not files:
            raise ValueError("corpus_files is an empty list: name at least one file.")
        documents = [doc for name in files for doc in _read_local(Path(name), text_field)]
        digests = [hashlib.sha256(Path(name).read_bytes()).hexdigest() for name in files]
        value = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
        identity = {"kind": "sha256", "value": value, "source": ", ".join(str(name) for name in files)}
        source = ", ".join(files)
    else:
        documents, identity = _read_dataset(dataset_path, dataset_name, data_files, text_field, split, revision)
        source = f"{dataset_path} (split {split!r})"
    if not documents:
        raise ValueError(f"The corpus {source} has no documents.")
    documents = documents[:num_docs] if num_docs else documents
    if not any(document.text.strip() for document in documents):
        which = f"the first {num_docs} (num_docs)" if num_docs else "all"
        raise ValueError(f"The corpus {source} has no text to score: {which} of its documents are empty or blank "
                         f"in the field {text_field!r}. Name the field holding the text with text_field, or choose "
                         "another corpus.")
    return documents, identity


def _local_format(path: Path) -> tuple[str, bool]:
    """(the file's suffix without ``.gz``, whether it is gzip-compressed), or a ValueError naming the file."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == COMPRESSED_SUFFIX
    if compressed:
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in LOCAL_SUFFIXES or (compressed and suffix == ".parquet"):
        raise ValueError(f"corpus_files: {path.name!r} is not a .txt, .jsonl, .json, .csv or .parquet file "
                         "(nor a .gz of a .txt, .jsonl, .json or .csv file).")
    return suffix, compressed


def _read_text(path: Path, compressed: bool) -> str:
    if compressed:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            return file.read()
    return path.read_text(encoding="utf-8")


def _jsonl_records(path: Path, text: str) -> tuple[list, list[str]]:
    """The records of a JSON-lines text and the line of each (blank lines skipped)."""
    records, places = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"corpus_files: {str(path)!r}, line {number}: not a JSON record ({error}).") from error
        places.append(f"line {number}")
    return records, places


def _read_local(path: Path, text_field: str) -> list[Document]:
    if not path.is_file():
        raise ValueError(f"corpus_files: {str(path)!r} is not a readable file.")
    suffix, compressed = _local_format(path)
    kind = LOCAL_SUFFIXES[suffix]
    places = None  # where each record is, for error messages
    try:
        if kind == "text":
            title = Path(path.stem).stem if compressed else path.stem
            records = [{text_field: _read_text(path, compressed), "title": title}]
        elif suffix == ".jsonl":
            records, places = _jsonl_records(path, _read_text(path, compressed))
        elif kind == "json":
            loaded = json.loads(_read_text(path, compressed))
            records = loaded if isinstance(loaded, list) else [loaded]
        else:  # datasets' builders read .csv.gz as well
            import datasets

            records = list(datasets.load_dataset(kind, data_files=str(path), split="train"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, EOFError) as error:  # EOFError: a cut-off .gz
        raise ValueError(f"corpus_files: could not read {str(path)!r}: {error}") from error
    except ValueError as error:
        if str(error).startswith("corpus_files:"):
            raise
        raise ValueError(f"corpus_files: could not read {str(path)!r}: {error}") from error
    documents = _documents(records, text_field, str(path), places)
    if not any(document.text.strip() for document in documents):
        raise ValueError(_no_text_message(path, documents, kind, text_field))
    return documents


def _no_text_message(path: Path, documents: list[Document], kind: str, text_field: str) -> str:
    """Why a local corpus file has nothing to score, and what to do about it."""
    if not documents:
        what = "is empty: it holds no records"
    elif not any(document.text for document in documents):
        what = "is empty: it holds no text" if kind == "text" else f"is empty: every record's {text_field!r} is empty"
    else:
        what = "is blank: it holds only whitespace" if kind == "text" else \
            f"is blank: every record's {text_field!r} holds only whitespace"
    field = "" if kind == "text" else ", name the field that holds the text with text_field"
    return (f"corpus_files: {str(path)!r} {what}, so there is nothing to score. Name a file with text in "
            f"corpus_files{field}, or leave corpus_files out to use the shipped Austen excerpts.")


def _read_dataset(dataset_path, dataset_name, data_files, text_field, split, revision) -> tuple[list[Document], dict]:
    import datasets

    kwargs = {}
    if revision:
        kwargs["revision"] = revision
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        builder = datasets.load_dataset_builder(dataset_path, dataset_name or None, **kwargs)
        builder.download_and_prepare()
        rows = builder.as_dataset(split=split)
    except Exception as error:  # datasets raises many types (hub, split, builder errors)
        raise ValueError(f"Could not load the corpus {dataset_path!r}: {error}") from error
    if Path(dataset_path).exists():
        identity = {"kind": "fingerprint", "value": rows._fingerprint}
    else:  # a hub dataset: the builder's hash is the commit datasets resolved
        identity = {"kind": "hub_revision", "value": builder.hash, "fingerprint": rows._fingerprint}
    identity["source"] = f"{dataset_path}" + (f" ({dataset_name})" if dataset_name else "") + f", split {split}"
    return _documents(list(rows), text_field, dataset_path), identity


def _documents(records: list, text_field: str, source: str, places: list[str] | None = None) -> list[Document]:
    documents = []
    for i, record in enumerate(records):
        where = f"{source}, {places[i]}" if places else f"{source}: record {i}"
        if not isinstance(record, dict) or text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where} has no text field {text_field!r} (it has {fields}); "
                             "name the right one with text_field.")
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{where}: {text_field!r} is a {type(text).__name__}, not text.")
        title = record.get("title") or record.get("short_book_title") or f"document {i}"
        documents.append(Document(str(title), text))
    return documents


# -- token-exact windows ----------------------------------------------------------------

class TokenizedDocument:
    """A document's tokens as lm-eval's HF model will see them, with their character offsets."""

    def __init__(self, tokenizer, text: str, add_special_tokens: bool | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(tokenizer).__name__} is a slow tokenizer: long-range perplexity cuts documents at "
                "token boundaries using a fast tokenizer's offsets. Pass a model or tokenizer= with a fast one."
            )
        self.tokenizer, self.text = tokenizer, text
        # HFLM.tok_encode: the tokenizer's own default unless add_bos_token was given
        self._encode_kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        self.ids: list[int] = list(plain["input_ids"])
        self.offsets: list[tuple[int, int]] = [tuple(o) for o in plain["offset_mapping"]]
        full = self.encode(text)
        start = next((p for p in range(len(full) - len(self.ids) + 1) if full[p:p + len(self.ids)] == self.ids), None)
        if start is None or len(full) - start - len(self.ids) > 0:
            raise ValueError(
                "The tokenizer adds special tokens after the text (or changes it when adding them), so a window "
                "cannot be scored exactly; long-range perplexity supports tokenizers that only prepend tokens."
            )
        self.prefix: list[int] = full[:start]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, **self._encode_kwargs))

    def __len__(self) -> int:
        return len(self.ids)

    def end_char(self, token_end: int) -> int:
        """The character where the text of the first ``token_end`` tokens ends."""
        return self.offsets[token_end - 1][1]

    def exact(self, start_char: int, begin: int, end: int) -> bool:
        """Does ``text[start_char : end of token end-1]`` encode to exactly tokens ``begin:end``?"""
        return self.encode(self.text[start_char:self.end_char(end)]) == self.prefix + self.ids[begin:end]

    def clean_cut(self, token_end: int) -> bool:
        """A context may end here: no trailing whitespace (lm-eval moves it into the continuation)."""
        text = self.text[:self.end_char(token_end)]
        return bool(text) and text == text.rstrip()

    def window_start(self, begin: int) -> int:
        """A start character for a window beginning at token ``begin`` (before or after the space)."""
        if begin == 0:
            return 0
        return self.offsets[begin - 1][1]


def _exact_end(doc: TokenizedDocument, start_char: int, begin: int, end: int, lowest: int,
               clean: bool = True) -> int | None:
    """The largest end <= ``end`` (and > ``lowest``) whose window text round-trips.

    With ``clean``, the end must also be able to end the next window's context.
    """
    for candidate in range(end, max(lowest, end - MAX_CUT_ADJUST), -1):
        if (not clean or doc.clean_cut(candidate)) and doc.exact(start_char, begin, candidate):
            return candidate
    return None


def _first_context(doc: TokenizedDocument) -> int:
    """Tokens of the first context: the first token, or a few if that one cannot end a context."""
    for k in range(1, min(len(doc), MAX_CUT_ADJUST) + 1):
        if doc.clean_cut(k) and doc.exact(0, 0, k):
            return k
    raise ValueError("Could not find a token-exact start in a document: its first tokens do not round-trip "
                     "through the tokenizer. Report this with the model name.")


def truncation_window(doc: TokenizedDocument, doc_index: int, title: str, length: int, first: int) -> Window | None:
    """The first ``length`` model tokens of ``doc`` as one window (context: its first ``first`` tokens)."""
    budget = length - len(doc.prefix)
    if len(doc) < budget:
        return None
    end = _exact_end(doc, 0, 0, budget, first + 1, clean=False)
    if end is None:
        raise ValueError(f"{title}: no token-exact cut within {MAX_CUT_ADJUST} tokens of {length}; "
                         "report this with the model name.")
    return _window(doc, doc_index, title, length, 0, 0, first, end, True)


def span_end(doc: TokenizedDocument, title: str, span: int, first: int) -> int | None:
    """The clean, token-exact end of a document's first ``span`` model tokens; None when it is shorter.

    Found once per document, so every length of a sliding-window run scores the same tokens.
    """
    budget = span - len(doc.prefix)
    if len(doc) < budget:
        return None
    end = _exact_end(doc, 0, 0, budget, first + 1)
    if end is None:
        raise ValueError(f"{title}: no token-exact cut within {MAX_CUT_ADJUST} tokens of the span {span}.")
    return end


def sliding_windows(doc: TokenizedDocument, doc_index: int, title: str, length: int, stride: int,
                    first: int, end_of_span: int) -> list[Window]:
    """Windows of ``length`` model tokens whose ends advance by ``stride`` up to ``end_of_span``.

    Each scores the tokens after the previous window's end; the first scores from token ``first``.
    """
    budget = length - len(doc.prefix)
    windows, scored_to, target = [], first, min(budget, end_of_span)
    while scored_to < end_of_span:
        begin = max(0, target - budget)
        window = None
        for start in range(begin, min(begin + MAX_CUT_ADJUST, scored_to)):
            start_char = doc.window_start(start)
            end = _exact_end(doc, start_char, start, target, scored_to)
            if end is not None and doc.exact(start_char, start, scored_to):
                window = _window(doc, doc_index, title, length, start_char, start, scored_to, end, not windows)
                break
        if window is None:
            raise ValueError(f"{title}: no token-exact window near tokens {begin}..{target}; "
                             "report this with the model name.")
        windows.append(window)
        scored_to = end
        target = min(target + stride, end_of_span)
    return windows


def _window(doc, doc_index, title, length, start_char, begin, cut, end, first) -> Window:
    cut_char, end_char = doc.end_char(cut), doc.end_char(end)
    continuation = doc.text[cut_char:end_char]
    return Window(doc_index, title, length, doc.text[start_char:cut_char], continuation,
                  len(doc.prefix) + end - begin, end - cut, first, len(continuation.encode("utf-8")),
                  len(continuation.split()))


def _sliding_span(lengths: list[int], stride, span):
    """The checked span of a sliding-window run (the longest length unless given); None without ``stride``."""
    if stride is None:
        if span is not None:
            raise ValueError("span only applies to the sliding-window variant: set stride too.")
        return None
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive whole number of tokens; got {stride!r}.")
    too_short = [length for length in lengths if stride > length]
    if too_short:
        raise ValueError(f"stride={stride} is larger than the length {too_short[0]}: windows would skip tokens. "
                         "Use a stride no larger than the shortest length.")
    span = max(lengths) if span is None else span
    if isinstance(span, bool) or not isinstance(span, int) or span < max(lengths):
        raise ValueError(f"span={span!r} must be a whole number of tokens at least the longest length "
                         f"({max(lengths)}).")
    return span


def build_windows(tokenizer, documents: list[Document], lengths, stride: int | None = None,
                  span: int | None = None, add_special_tokens: bool | None = None):
    """Every window of every document at every length, and how many documents each length left out.

    Returns ``(windows, left_out)`` with ``left_out[length]`` the number of documents
    shorter than the length (or, with ``stride``, than the span), empty or
    whitespace-only documents included.
    """
    lengths = validate_lengths(lengths)
    span = _sliding_span(lengths, stride, span)
    windows, left_out, longest = [], {length: 0 for length in lengths}, 0
    for index, document in enumerate(documents):
        if not document.text.strip():  # nothing to score: left out like a document too short
            for length in lengths:
                left_out[length] += 1
            continue
        doc = TokenizedDocument(tokenizer, document.text, add_special_tokens)
        longest = max(longest, len(doc) + len(doc.prefix))
        minimum = len(doc.prefix) + 2
        if min(lengths) < minimum:
            raise ValueError(f"length {min(lengths)} is too short: a window needs at least {minimum} tokens.")
        if len(doc) + len(doc.prefix) < min(lengths):
            for length in lengths:
                left_out[length] += 1
            continue
        first = _first_context(doc)
        if stride is None:
            for length in lengths:
                window = truncation_window(doc, index, document.title, length, first)
                if window is None:
                    left_out[length] += 1
                else:
                    windows.append(window)
            continue
        end_of_span = span_end(doc, document.title, span, first)
        for length in lengths:
            if end_of_span is None:
                left_out[length] += 1
            else:
                windows.extend(sliding_windows(doc, index, document.title, length, stride, first, end_of_span))
    scored = {w.length for w in windows}
    empty = [length for length in lengths if length not in scored]
    if empty:
        need = span if stride is not None else max(empty)
        raise ValueError(
            f"No document of the corpus reaches {need} tokens of this model (the longest has {longest}); "
            f"lengths {empty} would score nothing. Use shorter lengths or a corpus of longer documents."
        )
    return windows, left_out
