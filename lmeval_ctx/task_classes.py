"""lm-eval task classes shared by the task folders.

Imported by lm-eval when it builds one of our tasks, never at plugin start-up.
"""

from __future__ import annotations

import functools
import json

from lm_eval.api.task import ConfigurableTask

from lmeval_ctx.lengths import per_length_metric

LENGTH_FIELD = "length"


def dataset_notes(notes: dict) -> str:
    """Encode ``notes`` for a dataset's ``info.description``, for :class:`NotedTask` to record."""
    return json.dumps({"lmeval_ctx_notes": notes})


class NotedTask(ConfigurableTask):
    """A YAML task built through ``class:`` whose dataset may carry notes for the results.

    Notes (e.g. how many documents were too short for a length) that the
    ``custom_dataset`` function stored with :func:`dataset_notes` are added to the
    task's metadata, which lm-eval saves under ``configs`` in the results JSON.
    """

    def __init__(self, config: dict | None = None, **kwargs):
        # lm-eval hands the whole YAML over, including the "class" key that chose us.
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, **kwargs)

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        super().download(dataset_kwargs, **kwargs)
        description = self.dataset[self.config.test_split].info.description or ""
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
    process to hold the same metric names; the aggregations skip the Nones.
    """

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        super().download(dataset_kwargs, **kwargs)
        split = self.config.test_split
        if LENGTH_FIELD not in self.dataset[split].column_names:
            raise ValueError(f"{type(self).__name__} needs a {LENGTH_FIELD!r} column in its documents.")
        self.lengths = sorted(set(self.dataset[split][LENGTH_FIELD]))
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

    return aggregate_own_length
