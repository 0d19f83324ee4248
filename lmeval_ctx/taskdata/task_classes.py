"""lm-eval task classes shared by the task folders, and what every task checks first.

Imported by lm-eval when it builds one of our tasks, never at plugin start-up.

lm-eval calls a task's ``custom_dataset`` with one dictionary: the task's YAML
metadata, the model args (``--model_args``) and ``--metadata`` merged in that
order, plus the task's own ``dataset_kwargs``. So a task's settings share one
namespace with the model's: :func:`check_task_keys` reports a misspelt task key
by the key it was meant to be, and :func:`check_window` compares the task's
lengths with the window the model will have (:func:`lmeval_ctx.extension.window.model_window`)
before any prompt is built.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import weakref
from collections.abc import Sequence

from lm_eval.api.task import ConfigurableTask
from tqdm import tqdm

from lmeval_ctx.common.args import parse_optional_bool, reject_misspelt_keys
from lmeval_ctx.extension.request import EXTENSION_ARGS
from lmeval_ctx.extension.window import model_window
from lmeval_ctx.taskdata.lengths import per_length_metric
from lmeval_ctx.taskdata.names import LONGPPL_TASK, PASSKEY_TASK

LENGTH_FIELD = "length"
# Keys lm-eval itself puts in a task's metadata.
LM_EVAL_METADATA_KEYS = ("version", "config_source")

# The plugin's tasks alive in this process: a run's tasks are all built before any is evaluated.
_LIVE_TASKS: weakref.WeakSet = weakref.WeakSet()


def dataset_notes(notes: dict) -> str:
    """Encode ``notes`` for a dataset's ``info.description``, for :class:`NotedTask` to record."""
    return json.dumps({"lmeval_ctx_notes": notes})


# -- settings shared with the model args -----------------------------------------------------

@functools.cache
def _model_arg_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the context-extension arguments of ``ctx-hf``, lm-eval HF model arguments)."""
    # max_length is HFLM's (accepted as it is), so RULER's max_seq_lengths is not taken for a misspelling of it
    method = [name for name in EXTENSION_ARGS if name != "max_length"]
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:  # its module needs accelerate, which a ctx-vllm install need not have: no HF args in play
        return tuple(method), ()
    hf = [name for name in inspect.signature(HFLM.__init__).parameters if name not in ("self", "kwargs")]
    return tuple(method), tuple(hf)


def check_task_keys(settings: dict, task_keys, *, task: str) -> None:
    """Raise ValueError for a key that looks like a misspelling of a task key or a ``ctx-hf`` argument.

    ``settings`` holds model args too (lm-eval merges them in), so lm-eval's HF
    model arguments and its own metadata keys are accepted as they are.
    """
    method, hf = _model_arg_names()
    reject_misspelt_keys(settings, [*task_keys, *method], where=f"{task} --metadata",
                         accepted=[*hf, *LM_EVAL_METADATA_KEYS])


def check_window(task: str, longest: int, settings: dict, tokenizer=None, what: str = "prompts") -> None:
    """Refuse a task length beyond the model's window, before anything is built.

    A request longer than the window would be cut from the left by lm-eval
    (``truncation=True``) or refused by ``ctx-hf`` after every prompt was built;
    either way the figure would not be that of the length asked for.
    """
    window = model_window(settings, tokenizer)
    if window is None or longest <= window[0]:
        return
    size, source = window
    truncation = parse_optional_bool(settings.get("truncation"), "truncation")
    cut = (" With truncation=True lm-eval would cut their start, so the figure would not be that of the length."
           if truncation else "")
    if source.startswith("max_length="):
        head = f"{source} is smaller than the task's length {longest}"
    else:
        head = f"The model's window is {size} tokens ({source}), smaller than the task's length {longest}"
    raise ValueError(f"{task}: {head}: the {what} would not fit the window.{cut} "
                     "Raise max_length (or factor), or run a shorter length.")


# -- documents built on demand ---------------------------------------------------------------

class LazyDocs(Sequence):
    """A task's documents, each built the first time it is asked for.

    lm-eval reads documents through ``islice(docs, rank, limit, world_size)``,
    so with ``--limit`` only the documents evaluated are built. ``build(index)``
    makes document ``index``; ``fields`` are its keys (lm-eval reads them as
    ``features``).
    """

    def __init__(self, count: int, build, fields, notes: dict | None = None):
        self._count, self._build, self.features = count, build, {name: None for name in fields}
        self.notes = dict(notes or {})
        self._built: dict[int, dict] = {}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        if index not in self._built:
            self._built[index] = self._build(index)
        return self._built[index]

    def reset(self) -> None:
        """Forget the built documents (their recipe changed)."""
        self._built.clear()

    def build(self, indices, description: str) -> list[dict]:
        """Build ``indices`` now, with a progress bar (lm-eval's style) when there are several."""
        indices = list(indices)
        todo = [i for i in indices if i not in self._built]
        for index in tqdm(todo, desc=description, disable=len(todo) < 2):
            self[index]
        return [self[i] for i in indices]


# -- task classes ---------------------------------------------------------------------------

class NotedTask(ConfigurableTask):
    """A YAML task built through ``class:`` whose dataset may carry notes for the results.

    Notes (e.g. how many documents were too short for a length, or what data was
    read) that the ``custom_dataset`` function stored with :func:`dataset_notes`
    (or as ``notes`` of :class:`LazyDocs`) are added to the task's metadata,
    which lm-eval saves under ``configs`` in the results JSON.

    The task's ``dataset_kwargs`` are its fixed settings: the same key in the
    metadata (or the model args) is an error naming both, not a Python
    "multiple values" error.
    """

    def __init__(self, config: dict | None = None, **kwargs):
        # lm-eval hands the whole YAML over, including the "class" key that chose us.
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, **kwargs)
        _LIVE_TASKS.add(self)

    def check_lengths_have_a_use(self) -> None:
        """A fixed-length task refuses ``lengths`` unless a configurable task of the run takes them.

        ``--metadata`` reaches every task of a run, so ``--tasks passkey_1k,longppl``
        with ``lengths`` is fine (longppl reads them); ``--tasks passkey_1k`` alone
        with ``lengths`` would silently run at 1024 tokens instead.
        """
        fixed = (self.config.dataset_kwargs or {}).get("fixed_length")
        lengths = (self.config.metadata or {}).get("lengths")
        if fixed is None or lengths is None:
            return
        if any(isinstance(task, PerLengthTask) and (task.config.metadata or {}).get("lengths") == lengths
               for task in list(_LIVE_TASKS)):
            return
        raise ValueError(f"lengths={lengths!r}: {self.config.task} runs at its fixed length {fixed}, and no task of "
                         "this run takes lengths. For those lengths run the configurable task: --tasks "
                         f"{PASSKEY_TASK} (or {LONGPPL_TASK}) --metadata '{{\"lengths\": {json.dumps(lengths)}}}'; "
                         "else remove lengths.")

    def build_all_requests(self, **kwargs) -> None:
        self.check_lengths_have_a_use()
        super().build_all_requests(**kwargs)

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        if callable(self.config.custom_dataset):
            fixed = dict(self.config.dataset_kwargs or {})
            given = dict(self.config.metadata or {})
            for key in sorted(set(fixed) & set(given)):
                raise ValueError(f"{self.config.task}: {key!r} is fixed by this task ({key}={fixed[key]!r}) and "
                                 f"cannot be set (got {key}={given[key]!r} from --metadata or --model_args).")
            self.dataset = self.config.custom_dataset(**given, **fixed)
        else:
            super().download(dataset_kwargs, **kwargs)
        docs = self.dataset[self.config.test_split]
        notes = getattr(docs, "notes", None)
        if notes is None:
            description = docs.info.description or ""
            try:
                notes = json.loads(description).get("lmeval_ctx_notes") if description.startswith("{") else None
            except json.JSONDecodeError:
                notes = None
        if notes:
            self.config.metadata = {**(self.config.metadata or {}), **notes}


class PerLengthTask(NotedTask):
    """A task over several lengths that reports each metric once per length.

    The YAML's ``metric_list`` declares the metrics (``acc``, ``token_perplexity``,
    ...) with their aggregation; once the documents are built, each is declared
    again as ``<metric>@<length>`` for every length present, so lm-eval aggregates
    and prints one figure per length, the way its ``ruler`` tasks report
    ``4096``, ``8192``, ...

    Like ruler's, every document reports every per-length metric (None for the
    lengths it is not), because lm-eval's multi-process gathering expects each
    process to hold the same metric names; the aggregations skip the Nones, and so
    do their standard errors (see :func:`install_per_length_stderr`).
    """

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        super().download(dataset_kwargs, **kwargs)
        docs = self.dataset[self.config.test_split]
        lengths = getattr(docs, "lengths", None)
        if lengths is None:
            if LENGTH_FIELD not in docs.column_names:
                raise ValueError(f"{type(self).__name__} needs a {LENGTH_FIELD!r} column in its documents.")
            lengths = docs[LENGTH_FIELD]
        self.lengths = sorted(set(lengths))
        aggregation, higher_is_better = self._aggregation_list, self._higher_is_better
        self._aggregation_list = {
            per_length_metric(metric, length): _own_length_only(fn)
            for metric, fn in aggregation.items() for length in self.lengths
        }
        self._higher_is_better = {
            per_length_metric(metric, length): higher_is_better.get(metric)
            for metric in aggregation for length in self.lengths
        }

    def process_results(self, doc, results):
        metrics = super().process_results(doc, results)
        own = doc[LENGTH_FIELD]
        return {per_length_metric(metric, length): (value if length == own else None)
                for metric, value in metrics.items() for length in self.lengths}


def _own_length_only(aggregate):
    """``aggregate`` over the values documents of that length gave (NaN when there are none)."""

    @functools.wraps(aggregate)
    def aggregate_own_length(items):
        values = [item for item in items if item is not None]
        return aggregate(values) if values else float("nan")

    aggregate_own_length.own_length_aggregate = aggregate
    return aggregate_own_length


def install_per_length_stderr() -> None:
    """Give per-length metrics the standard error lm-eval gives the same metric on a fixed task.

    lm-eval picks a metric's standard error by the identity of its aggregation
    (``mean`` -> the binomial/sample standard error, ``weighted_perplexity`` ->
    none), so the wrapped per-length aggregation would get none ("N/A"). This
    makes lm-eval's lookup see the wrapped aggregation and skip the other lengths'
    Nones; every other metric is looked up exactly as before.
    """
    import lm_eval.evaluator_utils as evaluator_utils

    original = evaluator_utils.stderr_for_metric
    if getattr(original, "_lmeval_ctx", False):
        return

    @functools.wraps(original)
    def stderr_for_metric(metric, bootstrap_iters):
        own = getattr(metric, "own_length_aggregate", None)
        if own is None:
            return original(metric=metric, bootstrap_iters=bootstrap_iters)
        stderr = original(metric=own, bootstrap_iters=bootstrap_iters)
        if stderr is None:
            return None

        def own_length_stderr(items):
            values = [item for item in items if item is not None]
            return stderr(values) if len(values) > 1 else "N/A"

        return own_length_stderr

    stderr_for_metric._lmeval_ctx = True
    evaluator_utils.stderr_for_metric = stderr_for_metric


install_per_length_stderr()


def sha256_of_texts(texts) -> str:
    """SHA-256 of ``texts`` in order, each followed by a NUL byte (so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
