"""Long-range perplexity windows: token-exact cuts, sliding tiling, corpora and bad input."""

import gzip
import hashlib
import json
import re

import pytest

from lmeval_ctx.taskdata.longppl import (
    SHIPPED_CORPUS,
    Document,
    TokenizedDocument,
    build_windows,
    load_corpus,
    read_corpus,
)
from tiny_models import char_tokenizer


def encoded_request(tokenizer, window) -> tuple[list[int], list[int]]:
    """What lm-eval's HFLM makes of the request: (context tokens, continuation tokens)."""
    whole = tokenizer.encode(window.context + window.continuation)
    context = tokenizer.encode(window.context)
    return context, whole[len(context):]


def test_shipped_corpus_is_six_long_public_domain_excerpts():
    documents = load_corpus()
    assert len(documents) == 6 and documents[0].title == "Emma"
    assert all(len(d.text) > 100_000 for d in documents)
    assert SHIPPED_CORPUS.is_file()


@pytest.mark.parametrize("length", [1024, 4096, 16384])
def test_truncation_windows_are_the_first_tokens_exactly(smollm2_tokenizer, length):
    documents = load_corpus(num_docs=3)
    windows, left_out = build_windows(smollm2_tokenizer, documents, [length])
    assert left_out == {length: 0} and len(windows) == 3
    for window, document in zip(windows, documents):
        ids = smollm2_tokenizer(document.text, add_special_tokens=False).input_ids
        context, continuation = encoded_request(smollm2_tokenizer, window)
        assert context + continuation == ids[:window.window_tokens]
        assert length - 32 <= window.window_tokens <= length
        assert window.scored_tokens == len(continuation) == window.window_tokens - len(context)
        assert window.bytes == len(window.continuation.encode()) and window.first_of_document


def test_contexts_never_end_in_whitespace():
    # lm-eval moves a context's trailing whitespace into the continuation, which would
    # shift the split; such cuts move to the next clean token boundary
    tok = char_tokenizer()
    text = "\n\nabcdefghi jklmnopqrstuvwxyz " * 8
    (window,) = build_windows(tok, [Document("t", text)], [12])[0]
    assert window.context == "\n\na" and window.window_tokens == 12  # the end need not be clean
    doc = TokenizedDocument(tok, text)
    assert doc.exact(0, 0, 12) and not doc.clean_cut(12) and doc.clean_cut(11)
    windows, _ = build_windows(tok, [Document("t", text)], [12], stride=3, span=120)
    assert all(w.context == w.context.rstrip() for w in windows)
    assert "".join(w.continuation for w in windows) == text[3:sum(w.scored_tokens for w in windows) + 3]


def test_sliding_windows_tile_the_span_once(smollm2_tokenizer):
    documents = load_corpus(num_docs=2)
    windows, _ = build_windows(smollm2_tokenizer, documents, [512, 1024], stride=256, span=2048)
    for length in (512, 1024):
        for index, document in enumerate(documents):
            mine = [w for w in windows if w.length == length and w.doc_index == index]
            ids = smollm2_tokenizer(document.text, add_special_tokens=False).input_ids
            scored = []
            for window in mine:
                context, continuation = encoded_request(smollm2_tokenizer, window)
                assert window.window_tokens == len(context) + len(continuation) <= length
                scored += continuation
            assert [w.first_of_document for w in mine] == [True] + [False] * (len(mine) - 1)
            # every token after the first, up to the span's end, scored exactly once, in order
            assert scored == ids[1:len(scored) + 1] and 2048 - 32 <= len(scored) + 1 <= 2048
    # both lengths score the same tokens: only the context differs
    per_length = {n: sum(w.scored_tokens for w in windows if w.length == n) for n in (512, 1024)}
    assert per_length[512] == per_length[1024]


def test_documents_shorter_than_the_length_are_left_out_and_counted():
    tok = char_tokenizer()
    docs = [Document("short", "x" * 100), Document("long", "y" * 500)]
    windows, left_out = build_windows(tok, docs, [80, 300])
    assert left_out == {80: 0, 300: 1}
    assert sorted((w.title, w.length) for w in windows) == [("long", 80), ("long", 300), ("short", 80)]


def test_bad_input_is_a_clear_error(tmp_path):
    tok = char_tokenizer()
    docs = [Document("a", "z" * 200)]
    with pytest.raises(ValueError, match=r"No document of the corpus reaches 1000 tokens .*the longest has 200"):
        build_windows(tok, docs, [100, 1000])
    with pytest.raises(ValueError, match="stride=300 is larger than the length 100"):
        build_windows(tok, docs, [100], stride=300)
    with pytest.raises(ValueError, match="positive whole numbers"):
        build_windows(tok, docs, [0])
    with pytest.raises(ValueError, match="span only applies"):
        build_windows(tok, docs, [100], span=150)
    with pytest.raises(ValueError, match="is not a readable file"):
        load_corpus(data_files=str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(data_files=str(empty))
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ValueError, match=r"has no text field 'text' \(it has \['body'\]\)"):
        load_corpus(data_files=str(records))
    assert load_corpus(data_files=str(records), text_field="body")[0].text == "hello"
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="could not read"):
        load_corpus(data_files=str(binary))
    with pytest.raises(ValueError, match="num_docs must be a positive"):
        load_corpus(num_docs=0)


def test_a_local_text_file_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Call me Ishmael. " * 50)
    (document,) = load_corpus(data_files=str(path))
    assert document.title == "book" and document.text.startswith("Call me Ishmael.")


@pytest.mark.parametrize("name, content, says", [
    ("empty.txt", "", "is empty: it holds no text"),
    ("blank.txt", " \n\n\t ", "is blank: it holds only whitespace"),
    ("blank.jsonl", '{"text": " "}\n{"text": "\\n"}\n', "is blank: every record's 'text' holds only whitespace"),
    ("empty.jsonl", '{"text": ""}\n', "is empty: every record's 'text' is empty"),
])
def test_a_corpus_file_without_text_is_named_with_the_fix(tmp_path, name, content, says):
    # before: no error here, and the windows failed later with "the longest has 0 tokens"
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"corpus_files: '{path}' {says}, so there is nothing to score. "
                                                   "Name a file with text in corpus_files") + ".*leave corpus_files out"):
        read_corpus(data_files=str(path))


def test_one_blank_file_among_several_is_named(tmp_path):
    text, blank = tmp_path / "book.txt", tmp_path / "blank.txt"
    text.write_text("Call me Ishmael. " * 50)
    blank.write_text("   ")
    with pytest.raises(ValueError, match=r"'.*blank\.txt' is blank"):
        read_corpus(data_files=[str(text), str(blank)])


def test_blank_documents_beside_text_are_kept_for_counting(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"text": " "}) + "\n" + json.dumps({"text": "Some words."}) + "\n")
    assert [d.text for d in load_corpus(data_files=str(path))] == [" ", "Some words."]
    with pytest.raises(ValueError, match=r"the first 1 \(num_docs\) of its documents are empty or blank"):
        load_corpus(data_files=str(path), num_docs=1)


def test_gzip_compressed_files_read_like_plain_ones(tmp_path):
    records = [{"title": "one", "text": "First document."}, {"title": "two", "text": "Second document."}]
    plain = tmp_path / "novels.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    compressed = tmp_path / "novels.jsonl.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    documents, identity = read_corpus(data_files=str(compressed))
    assert documents == load_corpus(data_files=str(plain))
    assert identity["value"] == hashlib.sha256(compressed.read_bytes()).hexdigest()  # the bytes on disk
    book = tmp_path / "book.txt.gz"
    book.write_bytes(gzip.compress(b"Call me Ishmael."))
    assert load_corpus(data_files=str(book)) == [Document("book", "Call me Ishmael.")]
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(compressed.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"could not read '.*cut\.jsonl\.gz'"):
        load_corpus(data_files=str(cut))
    parquet = tmp_path / "x.parquet.gz"
    parquet.touch()
    with pytest.raises(ValueError, match=r"'x\.parquet\.gz' is not a \.txt, \.jsonl"):
        load_corpus(data_files=str(parquet))
