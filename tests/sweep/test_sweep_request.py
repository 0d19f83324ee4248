"""What a sweep asks for and what identifies it (lmeval_ctx/sweep/request.py): the manifest's compared settings,
checkpoint fingerprints, seeds and task folders, each checked before anything loads. Resuming on real runs:
tests/e2e/test_sweep_resume.py."""

from pathlib import Path

import pytest

from lmeval_ctx.common.model_args import RESULT_NEUTRAL_MODEL_ARGS
from lmeval_ctx.sweep.points import sweep_points
from lmeval_ctx.sweep.request import (
    compared_model_args,
    include_folders,
    model_identity,
    parse_seed,
    point_request,
    request_differences,
    sweep_request,
    task_versions,
)

# The model args manifests written before model_args.py recorded under not_compared and left out of
# request.model_args; a resumed sweep must still leave them out, or every old point would conflict.
PLACEMENT_ARGS_OF_OLD_MANIFESTS = ("parallelize", "device_map", "max_memory_per_gpu", "max_cpu_memory",
                                   "offload_folder", "batch_size", "max_batch_size", "device")
PLACEMENT = {"batch_size": 8, "max_batch_size": 64, "device": "cuda:1", "device_map": "auto", "parallelize": True,
             "max_memory_per_gpu": "20GB", "max_cpu_memory": "64GB", "offload_folder": "/tmp/offload"}


def checkpoint(folder: Path) -> Path:
    """A folder that looks like a checkpoint to the fingerprint (no model needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights" * 10)
    (folder / "README.md").write_text("a model card")
    (folder / ".hidden").write_text("editor state")
    return folder


def request(model_args: dict, **changes) -> dict:
    settings = {"limit": 1, "seeds": parse_seed(None), "metadata": {"lengths": [64]}, **changes}
    return sweep_request(model_args, {"longppl": 1.0}, **settings)


def test_placement_and_batching_args_are_recorded_not_compared(tmp_path):
    assert set(PLACEMENT_ARGS_OF_OLD_MANIFESTS) <= RESULT_NEUTRAL_MODEL_ARGS
    model = str(checkpoint(tmp_path / "model"))
    plain = {"pretrained": model, "dtype": "float32", "max_length": 1024}
    assert compared_model_args({**plain, **PLACEMENT}) == {"dtype": "float32", "max_length": 1024}
    # an old manifest's request (placement args left out) matches a sweep that moves or re-batches the model
    assert request_differences(request(plain), request({**plain, **PLACEMENT})) == []
    # what changes a result is compared
    assert request_differences(request(plain), request({**plain, "dtype": "bfloat16"})) == [
        'model_args.dtype: "float32" there, "bfloat16" now']
    assert request_differences(request(plain), request(plain, limit=2)) == ["limit: 1 there, 2 now"]


def test_a_point_adds_its_method_to_the_request(tmp_path):
    shared = request({"pretrained": str(checkpoint(tmp_path / "model"))})
    (point,) = sweep_points("self_extend:group_size=4:neighbor_window=16")
    assert point_request(shared, point)["method"] == {"scaling": "self_extend", "group_size": 4,
                                                       "neighbor_window": 16}
    assert "include_path" not in shared and "samples" not in shared and "gen_kwargs" not in shared
    assert shared["tasks"] == {"longppl": 1.0} and shared["seed"] == [0, 1234, 1234, 1234]
    assert set(shared["versions"]) == {"lm_eval", "lmeval_ctx", "transformers", "torch"}


def test_a_local_checkpoint_is_identified_by_its_files(tmp_path):
    folder = checkpoint(tmp_path / "model")
    identity = model_identity({"pretrained": str(folder)})
    assert identity["source"] == "local" and identity["pretrained"] == str(folder.resolve())
    assert sorted(identity["files"]) == ["config.json", "model.safetensors"]  # no card, no hidden file
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert model_identity({"pretrained": str(folder)})["files"] != identity["files"]
    (folder / "model.gguf").write_bytes(b"gguf")
    assert list(model_identity({"pretrained": str(folder), "gguf_file": "model.gguf"})["files"]) == ["model.gguf"]


def test_a_pretrained_that_is_neither_a_folder_nor_a_hub_name_is_named():
    with pytest.raises(ValueError, match=r"--model_args pretrained=/no/such/model: no such folder, and not a hub "
                                         r"model name"):
        model_identity({"pretrained": "/no/such/model"})


@pytest.mark.parametrize("seed, seeds", [(None, [0, 1234, 1234, 1234]), ("7", [7, 7, 7, 7]), (3, [3, 3, 3, 3]),
                                         ("1,2,3,4", [1, 2, 3, 4])])
def test_seeds_are_read_as_lm_eval_reads_them(seed, seeds):
    assert parse_seed(seed) == seeds


@pytest.mark.parametrize("seed", ["x", "1,2", "1,2,3,4,5", "1.5"])
def test_a_bad_seed_is_an_error_naming_the_flag_and_the_forms(seed):
    with pytest.raises(ValueError, match=rf"--seed '{seed}': give one whole number or four"):
        parse_seed(seed)


def test_task_folders_and_tasks_are_checked_before_anything_loads(tmp_path):
    assert include_folders([str(tmp_path)]) == (str(tmp_path.resolve()),)
    with pytest.raises(ValueError, match=r"--include_path .*missing: no such folder"):
        include_folders([str(tmp_path), str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="--tasks is empty"):
        task_versions([])
