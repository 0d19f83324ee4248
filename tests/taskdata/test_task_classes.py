"""What every task checks first (keys, the window) and the task classes' own behaviour: documents
built on demand, notes recorded with the results, one figure per length."""

import math
from types import SimpleNamespace

import datasets
import pytest

from lmeval_ctx.taskdata.task_classes import (
    LazyDocs,
    NotedTask,
    _own_length_only,
    check_task_keys,
    check_window,
    dataset_notes,
)

TASK_KEYS = ("lengths", "num_samples", "depths")


# -- keys shared with the model args ----------------------------------------------------------

@pytest.mark.parametrize("key, intended", [("lenghts", "lengths"), ("num_sample", "num_samples"),
                                           ("scalng", "scaling"), ("factr", "factor")])
def test_a_misspelt_task_or_model_key_is_named(key, intended):
    with pytest.raises(ValueError, match=f"passkey --metadata key '{key}': did you mean '{intended}'"):
        check_task_keys({key: 1}, TASK_KEYS, task="passkey")


def test_model_args_and_lm_evals_own_keys_pass():
    check_task_keys({"lengths": [300], "pretrained": "x", "dtype": "float32", "max_length": 512, "scaling": "pi",
                     "factor": 2, "version": 1.0, "config_source": "y", "unrelated_setting": 3},
                    TASK_KEYS, task="passkey")
    # RULER's own setting, in a run of both: not a misspelling of HFLM's max_length
    check_task_keys({"max_seq_lengths": [4096]}, TASK_KEYS, task="passkey")


# -- the window, before anything is built -----------------------------------------------------

def test_a_length_within_the_window_passes(tiny_model_dir):
    check_window("passkey", 512, {"max_length": 512})
    check_window("passkey", 1024, {"pretrained": str(tiny_model_dir("llama")), "scaling": "pi", "factor": 8})
    check_window("passkey", 10**6, {})  # no window known here: ctx-hf checks each request itself


def test_a_length_beyond_the_window_is_refused_with_its_source(tiny_model_dir):
    with pytest.raises(ValueError, match=r"^longppl: max_length=200 is smaller than the task's length 300: the "
                                         r"windows would not fit the window\. Raise max_length"):
        check_window("longppl", 300, {"max_length": 200}, what="windows")
    with pytest.raises(ValueError, match=r"window is 128 tokens \(the model's config\), smaller than the task's "
                                         r"length 300.* With truncation=True lm-eval would cut their start"):
        check_window("passkey", 300, {"pretrained": str(tiny_model_dir("llama")), "truncation": "true"})


# -- documents built on demand ----------------------------------------------------------------

def test_documents_are_built_once_and_only_when_asked_for():
    built = []
    docs = LazyDocs(4, lambda i: built.append(i) or {"index": i}, ["index"], notes={"left_out": 1})
    assert len(docs) == 4 and docs.features == {"index": None} and docs.notes == {"left_out": 1} and built == []
    assert docs[2] == {"index": 2} and docs[-1] == {"index": 3} and docs[2] is docs[2]
    assert docs[1:3] == [{"index": 1}, {"index": 2}]
    assert built == [2, 3, 1]
    with pytest.raises(IndexError):
        docs[4]
    docs.reset()  # the recipe changed: built again on the next ask
    assert [d["index"] for d in docs.build([3, 0], "building")] == [3, 0] and built[-2:] == [3, 0]


def test_notes_of_the_dataset_are_recorded_in_the_task_metadata():
    def task(dataset):
        config = SimpleNamespace(task="longppl", custom_dataset=lambda **kwargs: dataset, dataset_kwargs={},
                                 metadata={"version": 1.0}, test_split="test")
        NotedTask.download(SimpleNamespace(config=config))
        return config.metadata

    lazy = LazyDocs(1, lambda i: {"x": i}, ["x"], notes={"too_short": {"512": 2}})
    assert task({"test": lazy}) == {"version": 1.0, "too_short": {"512": 2}}
    described = datasets.Dataset.from_list([{"x": 1}], info=datasets.DatasetInfo(
        description=dataset_notes({"corpus": {"kind": "sha256", "value": "abc"}})))
    assert task({"test": described})["corpus"] == {"kind": "sha256", "value": "abc"}
    plain = datasets.Dataset.from_list([{"x": 1}], info=datasets.DatasetInfo(description="{not json"))
    assert task({"test": plain}) == {"version": 1.0}


# -- one figure per length --------------------------------------------------------------------

def test_a_per_length_aggregate_reads_its_own_length_only():
    mean = _own_length_only(lambda values: sum(values) / len(values))
    assert mean([1.0, None, 0.0, None]) == 0.5
    assert math.isnan(mean([None, None]))  # no document of this length
