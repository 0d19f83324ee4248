"""lm-eval hooks of the passkey tasks; the logic is lmeval_ctx.taskdata.passkey."""

from dataclasses import fields
from itertools import islice

from lmeval_ctx.taskdata.passkey import (
    DEFAULT_DEPTHS,
    DEFAULT_NUM_SAMPLES,
    PasskeySample,
    SamplePlan,
    build_sample,
    parse_answer,
)
from lmeval_ctx.taskdata.names import PASSKEY_TASK
from lmeval_ctx.taskdata.task_classes import LazyDocs, NotedTask, PerLengthTask, check_task_keys, check_window, sha256_of_texts
from lmeval_ctx.common.checkpoint import load_tokenizer, tokenizer_args

# The keys a passkey task reads from --metadata (fixed_length is set by the passkey_<N> tasks).
TASK_KEYS = ("lengths", "num_samples", "depths", "seed", "fixed_length")


class PasskeyDocs(LazyDocs):
    """Passkey samples whose prompts are built when first asked for, for a ``gen_tokens`` budget."""

    def __init__(self, tokenizer, specs: SamplePlan):
        self.gen_tokens: int | None = None
        self.lengths = sorted(specs.lengths)

        def build(index: int) -> dict:
            if self.gen_tokens is None:
                raise RuntimeError("PasskeyDocs.gen_tokens (the task's max_gen_toks) must be set before building.")
            spec = specs[index]
            return build_sample(tokenizer, spec.length, spec.depth, spec.key, self.gen_tokens).as_doc()

        super().__init__(len(specs), build, [field.name for field in fields(PasskeySample)])


def passkey_dataset(fixed_length=None, lengths=None, num_samples=DEFAULT_NUM_SAMPLES, depths=DEFAULT_DEPTHS,
                    seed=1234, **kwargs):
    """lm-eval ``custom_dataset``: called with the task metadata, the model args and dataset_kwargs.

    Everything that can be checked without building a prompt is checked first:
    the keys, the lengths, the samples asked for and the model's window.
    """
    given = {"lengths": lengths, "num_samples": num_samples, "depths": depths, "seed": seed, **kwargs}
    check_task_keys(given, TASK_KEYS, task="passkey")
    # a fixed-length task leaves lengths to the configurable tasks of the run (NotedTask.check_lengths_have_a_use)
    lengths = [fixed_length] if fixed_length is not None else lengths
    if lengths is None:
        raise ValueError(f'The {PASSKEY_TASK} task needs its lengths: --tasks {PASSKEY_TASK} '
                         '--metadata \'{"lengths": [4096, 8192]}\' (or run a fixed-length task, e.g. passkey_4k).')
    specs = SamplePlan(lengths, num_samples=num_samples, depths=depths, seed=seed)
    tokenizer = load_tokenizer(tokenizer_args(kwargs))
    check_window("passkey", max(specs.lengths), kwargs, tokenizer)
    return {"test": PasskeyDocs(tokenizer, specs)}


def process_results(doc, results):
    return {"acc": float(parse_answer(results[0]) == doc["key"])}


class PasskeyTask(NotedTask):
    """A passkey task: prompts built for the model's tokenizer, only those evaluated, with progress.

    The generation budget is the task's ``generation_kwargs.max_gen_toks`` as the run
    has it (``--gen_kwargs`` included); the results record a SHA-256 of the prompts
    evaluated under ``metadata.data_identity``.
    """

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        super().download(dataset_kwargs, **kwargs)
        self.dataset[self.config.test_split].gen_tokens = self._generation_budget()

    def _generation_budget(self) -> int:
        budget = (self.config.generation_kwargs or {}).get("max_gen_toks")
        if budget is None:
            raise ValueError(f"{self.config.task}: generation_kwargs.max_gen_toks is not set; the passkey prompts "
                             "are sized so that the prompt plus that many generated tokens fill the length.")
        return int(budget)

    def fewshot_docs(self):
        return None  # zero-shot: lm-eval would otherwise list (build) every test document as few-shot candidates

    def doc_iterator(self, *, rank=0, limit=None, world_size=1, samples=None):
        if not samples:
            return super().doc_iterator(rank=rank, limit=limit, world_size=world_size, samples=samples)
        # lm-eval's --samples path walks every document to pick the chosen ones; build only those
        docs = self.eval_docs
        if any(not 0 <= i < len(docs) for i in samples):
            raise ValueError(f"{self.config.task}: --samples indices must be in [0, {len(docs) - 1}]; got {samples}.")
        return islice(enumerate(docs[i] for i in sorted(set(samples))), rank, None, world_size)  # lm-eval's order

    def build_all_requests(self, *, limit=None, samples=None, **kwargs) -> None:
        self.check_lengths_have_a_use()
        docs = self.dataset[self.config.test_split]
        budget = self._generation_budget()
        if budget != docs.gen_tokens:  # --gen_kwargs changed it after the task was loaded
            docs.gen_tokens = budget
            docs.reset()
        indices = sorted(set(samples)) if samples else range(len(docs) if limit is None else min(int(limit), len(docs)))
        built = docs.build(indices, f"{self.config.task}: building prompts")
        identity = {"kind": "prompts_sha256", "value": sha256_of_texts(doc["input"] for doc in built)}
        self.config.metadata = {**(self.config.metadata or {}), "data_identity": identity}
        super().build_all_requests(limit=limit, samples=samples, **kwargs)


class PerLengthPasskeyTask(PerLengthTask, PasskeyTask):
    """The configurable ``passkey_custom`` task: lengths from ``--metadata``, reported as ``acc@<length>``."""
