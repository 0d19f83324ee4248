"""A run's logged samples: heatmap cells, pairing with the run's own results, corrupt files."""

import json

import pytest
from report_outputs import passkey_samples, runs, write_run  # noqa: F401 - runs: the fixture

from lmeval_ctx.report.read import read_runs
from lmeval_ctx.report.samples import passkey_grid


def test_heatmap_cells_are_mean_accuracy_by_length_and_depth(runs):  # noqa: F811
    by_method = {run.method: run for run in read_runs(list(runs))}
    assert passkey_grid(by_method["none"]) == ([1024, 4096], [0.0, 1.0], [[1.0, 0.0], [1.0, 0.5]])
    assert passkey_grid(by_method["yarn"]) == ([1024, 4096], [0.0, 1.0], [[1.0, 1.0], [1.0, 0.0]])


def test_sample_counts_give_the_intervals(runs):  # noqa: F811
    by_method = {run.method: run for run in read_runs(list(runs))}
    measure = by_method["none"].suite_values(by_method["none"].tasks["passkey_4k"].suite)["passkey"][4096]
    assert (measure.n, measure.binary) == (4, True)
    assert measure.interval == pytest.approx((0.0456, 0.6994), abs=1e-4)  # Wilson, 1 of 4


def test_samples_pair_with_the_results_of_the_same_run(tmp_path):
    """Two methods run by plain lm_eval into one folder: each heatmap reads its own run's samples."""
    folder = tmp_path / "shared"
    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}}
    write_run(folder, "none", None, {"passkey_1k": {"acc,none": 1.0}}, config,
              {"passkey_1k": passkey_samples({(1024, 0.0): [1, 1]})}, stamp="2026-01-01T00-00-00.1")
    write_run(folder, "pi", 2.0, {"passkey_1k": {"acc,none": 0.0}}, config,
              {"passkey_1k": passkey_samples({(1024, 0.0): [0, 0, 0]})}, stamp="2026-01-01T00-00-00.2")
    grids = {run.method: passkey_grid(run) for run in read_runs([folder])}
    assert grids == {"none": ([1024], [0.0], [[1.0]]), "pi": ([1024], [0.0], [[0.0]])}
    # samples that are not the run's own (lm-eval's task hash differs) are an error naming both files
    other = folder / "__models__tiny" / "samples_passkey_1k_2026-01-01T00-00-00.1.jsonl"
    other.write_text(json.dumps({**passkey_samples({(1024, 0.0): [1]})[0], "doc_hash": "x", "prompt_hash": "y",
                                 "target_hash": "z", "filter": "none"}))
    with pytest.raises(ValueError, match="does not hold the samples of .*results_2026-01-01T00-00-00.1.json"):
        read_runs([folder])


def test_a_corrupt_samples_file_names_itself(runs):  # noqa: F811
    (samples,) = (runs[0] / "__models__tiny").glob("samples_passkey_4k_*.jsonl")
    samples.write_text(samples.read_text()[:-20])
    with pytest.raises(ValueError, match=f"'{samples}' line 4 is not an lm-eval sample"):
        read_runs(list(runs))
