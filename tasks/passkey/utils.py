"""lm-eval hooks of the passkey tasks; the logic is lmeval_ctx.passkey."""

import datasets

from lmeval_ctx.task_classes import PerLengthTask
from lmeval_ctx.passkey import DEFAULT_DEPTHS, DEFAULT_NUM_SAMPLES, generate_samples, parse_answer
from lmeval_ctx.tokenizers import load_tokenizer, tokenizer_args


def passkey_dataset(fixed_length=None, lengths=None, num_samples=DEFAULT_NUM_SAMPLES, depths=DEFAULT_DEPTHS,
                    seed=1234, max_length=None, **kwargs):
    """lm-eval ``custom_dataset``: called with the task metadata, the model args and dataset_kwargs."""
    lengths = [fixed_length] if fixed_length is not None else lengths
    if lengths is None:
        raise ValueError('The passkey task needs its lengths: --metadata \'{"lengths": [4096, 8192]}\'.')
    tokenizer = load_tokenizer(tokenizer_args(kwargs))
    samples = generate_samples(tokenizer, lengths, num_samples=num_samples, depths=depths, seed=seed)
    if max_length is not None:
        longest = max(s.length for s in samples)
        if int(max_length) < longest:
            raise ValueError(
                f"max_length={max_length} is smaller than the task's length {longest}: the prompts would not fit "
                "the window. Raise max_length (or factor), or run a shorter passkey task."
            )
    return {"test": datasets.Dataset.from_list([s.as_doc() for s in samples])}


def process_results(doc, results):
    return {"acc": float(parse_answer(results[0]) == doc["key"])}


class PerLengthPasskeyTask(PerLengthTask):
    """The configurable ``passkey`` task: lengths from ``--metadata``, reported as ``acc@<length>``."""
