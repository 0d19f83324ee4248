"""What several benchmarks share: where the repository and its data are, and the tokenizer of their models.

Benchmarks import the installed ``lmeval_ctx`` package and this module (their folder is on
``sys.path`` when one runs as ``python benchmarks/<name>.py``), never ``tests/``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The six Austen novels, shipped with the repository; provenance in benchmarks/data/README.md.
AUSTEN_NOVELS = REPO / "benchmarks" / "data" / "austen-novels.jsonl.gz"

# The character-level vocabulary of the benchmarks' random-weight models: every printable ASCII
# character and the newline, one token each, after the special tokens.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHARACTERS = [chr(i) for i in range(32, 127)] + ["\n"]
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARACTERS)


def in_repository(path: Path) -> str:
    """``path`` as a result file records it: relative to the repository root when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def char_tokenizer():
    """A character-level fast tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``), loadable by AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=1_000_000,
    )
