"""Passkey retrieval prompts sized in the evaluated model's tokens.

The prompt format of Landmark Attention (Mohtashami & Jaggi 2023) and Position
Interpolation (Chen et al. 2023, arXiv:2306.15595): a task description, whole
filler sentences, a 5-digit pass key at a chosen depth, more filler, and the
question. The model must repeat the key; the answer is the first integer it
generates.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lmeval_ctx.taskdata.lengths import validate_lengths

DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
FILLER_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

DEFAULT_NUM_SAMPLES = 50
DEFAULT_DEPTHS = tuple(i / 9 for i in range(10))  # 0, 1/9, ..., 1: five samples per depth by default


@functools.cache
def template_generation_budget() -> int:
    """The generation budget's one source: ``generation_kwargs.max_gen_toks`` of the passkey tasks' template.

    The tasks pass the budget of the run (``--gen_kwargs`` included) as ``gen_tokens``;
    callers outside lm-eval get the template's.
    """
    import yaml

    from lmeval_ctx.common.paths import tasks_path

    class TemplateLoader(yaml.SafeLoader):
        """Reads the template's plain values; lm-eval's ``!function`` tags are not needed here."""

    TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((tasks_path() / "passkey" / "_passkey_template").read_text(), Loader=TemplateLoader)
    return int(template["generation_kwargs"]["max_gen_toks"])


@dataclass(frozen=True)
class PasskeySample:
    input: str  # the prompt
    key: str  # the 5-digit pass key
    length: int  # the target length in tokens (prompt + generation budget)
    depth: float  # where the needle sits, 0 = start of the filler, 1 = end
    prompt_tokens: int  # tokens of the prompt as the model's tokenizer encodes it
    filler_sentences: int

    def as_doc(self) -> dict:
        return asdict(self)


def _filler(n: int) -> list[str]:
    return [FILLER_SENTENCES[i % len(FILLER_SENTENCES)] for i in range(n)]


def render_prompt(n_sentences: int, depth: float, key: str) -> str:
    """The prompt with ``n_sentences`` filler sentences and the needle after ``round(depth*n)`` of them."""
    filler = _filler(n_sentences)
    before = round(depth * n_sentences)
    parts = [DESCRIPTION, " ".join(filler[:before]), NEEDLE.format(key=key), " ".join(filler[before:]), QUESTION]
    return "\n".join(part for part in parts if part)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens the model receives for ``text`` (special tokens such as BOS included)."""
    return len(tokenizer(text).input_ids)


def fill_tolerance(length: int) -> int:
    """How far under ``length`` a prompt may stop: 2% or 64 tokens, whichever is larger."""
    return max(int(0.02 * length), 64)


def build_sample(tokenizer, length: int, depth: float, key: str, gen_tokens: int | None = None) -> PasskeySample:
    """The longest prompt whose tokens plus ``gen_tokens`` (the generation budget) fit in ``length``.

    ``gen_tokens`` defaults to the tasks' :func:`template_generation_budget`.
    """
    if gen_tokens is None:
        gen_tokens = template_generation_budget()
    if isinstance(gen_tokens, bool) or not isinstance(gen_tokens, int) or gen_tokens < 1:
        raise ValueError(f"max_gen_toks={gen_tokens!r}: the passkey generation budget must be a positive whole number.")
    budget = length - gen_tokens
    empty = count_tokens(tokenizer, render_prompt(0, depth, key))
    if empty > budget:
        raise ValueError(
            f"length={length} is too short for a passkey prompt: the instruction, needle and question alone "
            f"take {empty} tokens, plus {gen_tokens} for the answer. Use a length of at least {empty + gen_tokens + 64}."
        )
    # Token counts grow with the number of sentences (not always by the same amount):
    # bracket the largest n that fits by doubling, then bisect.
    low, high = 0, 1
    while count_tokens(tokenizer, render_prompt(high, depth, key)) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if count_tokens(tokenizer, render_prompt(mid, depth, key)) <= budget:
            low = mid
        else:
            high = mid
    prompt = render_prompt(low, depth, key)
    tokens = count_tokens(tokenizer, prompt)
    assert tokens <= budget, (tokens, budget)
    if tokens + gen_tokens < length - fill_tolerance(length):
        raise ValueError(
            f"Could not fill length={length}: the prompt reached {tokens} tokens (+{gen_tokens} to generate). "
            "The tokenizer counts the filler irregularly; report this with the model name."
        )
    return PasskeySample(prompt, key, length, float(depth), tokens, low)


def validate_depths(depths) -> list[float]:
    """A list of depths in [0, 1], or a count ``n`` meaning ``n`` depths evenly spaced over [0, 1]."""
    if isinstance(depths, str) and depths.strip().isdigit():
        depths = int(depths)
    if isinstance(depths, int) and not isinstance(depths, bool):
        if depths < 1:
            raise ValueError(f"depths={depths}: give a positive number of depths, or a list of depths in [0, 1].")
        return [0.5] if depths == 1 else [i / (depths - 1) for i in range(depths)]
    if isinstance(depths, (float, str)):
        depths = [depths]
    out = []
    for value in depths or []:
        try:
            depth = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"depths must be numbers in [0, 1]; got {value!r}.") from None
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth {value!r} is outside [0, 1] (0 = needle first, 1 = needle last).")
        out.append(depth)
    if not out:
        raise ValueError("depths is empty: pass e.g. [0, 0.25, 0.5, 0.75, 1].")
    return out


@dataclass(frozen=True)
class SampleSpec:
    """What one sample will be, before its prompt is built."""

    length: int
    depth: float
    key: str


class SamplePlan(Sequence):
    """``num_samples`` samples per length, depths cycling through ``depths``; deterministic in ``seed``.

    Samples alternate between lengths (and keys come from one generator per
    length), so ``--limit`` keeps every length represented and adding a length
    does not change the prompts of the others. Keys are drawn when a sample is
    first asked for, so a plan of a million samples costs nothing until used.
    """

    def __init__(self, lengths, num_samples: int = DEFAULT_NUM_SAMPLES, depths=DEFAULT_DEPTHS, seed: int = 1234):
        self.lengths = validate_lengths(lengths)
        self.depths = validate_depths(depths)
        if isinstance(num_samples, str) and num_samples.strip().isdigit():
            num_samples = int(num_samples)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive whole number; got {num_samples!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, str)):
            raise ValueError(f"seed must be a whole number; got {seed!r}.")
        self.num_samples = num_samples
        self._rngs = {length: random.Random(f"{seed}-{length}") for length in self.lengths}
        self._keys: dict[int, list[str]] = {length: [] for length in self.lengths}

    def __len__(self) -> int:
        return self.num_samples * len(self.lengths)

    def __getitem__(self, index: int) -> SampleSpec:
        if not 0 <= index < len(self):
            raise IndexError(index)
        i, which = divmod(index, len(self.lengths))
        length = self.lengths[which]
        keys = self._keys[length]
        while len(keys) <= i:
            keys.append(str(self._rngs[length].randint(10000, 99999)))
        return SampleSpec(length, self.depths[i % len(self.depths)], keys[i])


def generate_samples(tokenizer, lengths, num_samples: int = DEFAULT_NUM_SAMPLES, depths=DEFAULT_DEPTHS,
                     seed: int = 1234, gen_tokens: int | None = None) -> list[PasskeySample]:
    """Every sample of :class:`SamplePlan`, built with ``tokenizer`` for a ``gen_tokens`` budget."""
    return [build_sample(tokenizer, spec.length, spec.depth, spec.key, gen_tokens)
            for spec in SamplePlan(lengths, num_samples, depths, seed)]


_INTEGER = re.compile(r"\d+")


def parse_answer(text: str) -> str | None:
    """The first integer in the model's output, or None."""
    match = _INTEGER.search(text or "")
    return match.group(0) if match else None
