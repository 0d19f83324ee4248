"""Reading lm-eval output folders into rows: suites, what makes one row, bad input."""

import pytest
from report_outputs import runs, ruler_results, write_run  # noqa: F401 - runs: the fixture

from lmeval_ctx.report.read import read_runs


def test_a_corrupt_results_file_names_itself(runs):  # noqa: F811
    (results,) = (runs[0] / "__models__tiny").glob("results_*.json")
    results.write_text(results.read_text()[:50])
    with pytest.raises(ValueError, match=f"'{results}' is not an lm-eval results file"):
        read_runs(list(runs))


def test_files_of_one_method_join_one_row(runs):  # noqa: F811
    """The passkey run and the perplexity run of yarn ×2 (two results files) make one row."""
    rows = read_runs(list(runs))
    assert [(row.label, len(row.files)) for row in rows] == [("none", 1), ("yarn ×2", 2)]
    assert sorted(rows[1].tasks) == ["longppl", "passkey_custom"]


def test_runs_differing_in_any_setting_stay_apart(tmp_path):
    """Same folder name, same method: other dtype, other checkpoint, other corpus, a repeat: never one row."""
    results = {"passkey_1k": {"acc,none": 0.5}}
    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}}
    write_run(tmp_path / "a", "none", None, results, config, model_args={"pretrained": "/a/tiny"}, date=1.7e9)
    write_run(tmp_path / "b", "none", None, {"passkey_1k": {"acc,none": 0.75}}, config,
              model_args={"pretrained": "/b/tiny"}, date=1.7e9 + 60)
    write_run(tmp_path / "c", "none", None, results, config, model_args={"pretrained": "/a/tiny", "dtype": "bfloat16"})
    with_identity = {"passkey_1k": {**config["passkey_1k"],
                                    "metadata": {"data_identity": {"kind": "sha256", "value": "0123456789abcdef"}}}}
    write_run(tmp_path / "d", "none", None, results, with_identity, model_args={"pretrained": "/a/tiny"})
    write_run(tmp_path / "e", "none", None, results, config, model_args={"pretrained": "/a/tiny"}, date=1.7e9 + 3600)
    rows = read_runs([tmp_path / name for name in "abcde"])
    assert len(rows) == 5
    notes = sorted(row.note for row in rows)
    assert any("pretrained=/b/tiny" in note for note in notes)
    assert any("dtype=bfloat16" in note for note in notes)
    assert any("passkey_1k.data=0123456789ab" in note for note in notes)
    assert sum("repeat run" in note for note in notes) == 2  # a and e: the same settings, run twice


def test_factors_are_never_collapsed(tmp_path):
    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}}
    write_run(tmp_path / "x", "yarn", 2.0, {"passkey_1k": {"acc,none": 0.5}}, config)
    write_run(tmp_path / "y", "yarn", 2.0000001, {"passkey_1k": {"acc,none": 0.25}}, config)
    rows = read_runs([tmp_path / "x", tmp_path / "y"])
    assert sorted(row.label for row in rows) == ["yarn ×2", "yarn ×2.0000001"]


def test_our_suites_are_ours_by_exact_name(tmp_path):
    """passkey_custom and an older folder's configurable ``passkey`` (lmeval-ctx 0.1.0) are our passkey;
    another benchmark's task that merely starts with "passkey" or "longppl" is a suite of its own."""
    write_run(tmp_path / "new", "none", None, {"passkey_custom": {"acc@1024,none": 0.75}}, {"passkey_custom": {}})
    write_run(tmp_path / "old", "none", None, {"passkey": {"acc@2048,none": 0.5}}, {"passkey": {}},
              stamp="2026-01-02T00-00-00")
    others = {"passkey_with_librusec": {"acc@4096,none": 0.25}, "longppl_books": {"token_perplexity@4096,none": 9.0}}
    write_run(tmp_path / "others", "none", None, others, {task: {} for task in others}, stamp="2026-01-03T00-00-00")
    (row,) = read_runs([tmp_path / "new", tmp_path / "old", tmp_path / "others"])
    assert row.passkey_accuracy == {1024: 0.75, 2048: 0.5}
    suites = {task: result.suite.name for task, result in row.tasks.items()}
    assert suites == {"passkey_custom": "passkey", "passkey": "passkey",
                      "passkey_with_librusec": "passkey_with_librusec", "longppl_books": "longppl_books"}


def test_model_args_are_read_as_lm_eval_parses_them(tmp_path):
    """lm-eval records ``--model_args`` as the string given (a dict from its Python API): the report reads it
    with lm-eval's parser, so ``true`` is True and ``4096`` the number, and the two records are one model."""
    config = {task: {"dataset_kwargs": {"fixed_length": n}} for task, n in (("passkey_1k", 1024), ("passkey_4k", 4096))}
    write_run(tmp_path / "cli", "none", None, {"passkey_1k": {"acc,none": 1.0}}, config,
              model_args="pretrained=/models/tiny,dtype=bfloat16,trust_remote_code=true,max_length=4096")
    write_run(tmp_path / "api", "none", None, {"passkey_4k": {"acc,none": 0.5}}, config, stamp="2026-01-02T00-00-00",
              model_args={"pretrained": "/models/tiny", "dtype": "bfloat16", "trust_remote_code": True,
                          "max_length": 4096})
    (row,) = read_runs([tmp_path / "cli", tmp_path / "api"])
    assert row.passkey_accuracy == {1024: 1.0, 4096: 0.5}
    assert row.model_args == {"pretrained": "/models/tiny", "dtype": "bfloat16", "trust_remote_code": True,
                              "max_length": 4096}
    assert row.window == 4096


def test_ruler_tasks_and_their_group(tmp_path):
    results, configs = ruler_results({"niah_single_1": {1024: 0.9, 2048: 0.86},
                                      "niah_multikey_2": {1024: 0.8, 2048: 0.852}}, [1024, 2048])
    results["ruler"] = {"1024,none": 0.85, "alias": "ruler"}  # a group's line is not a task
    write_run(tmp_path / "r", "none", None, results, configs,
              extra={"group_subtasks": {"ruler": ["niah_single_1", "niah_multikey_2"]}})
    (row,) = read_runs([tmp_path / "r"])
    assert "ruler" not in row.tasks
    values = row.suite_values(row.tasks["niah_single_1"].suite)
    assert {task: sorted(v) for task, v in values.items()} == {"niah_multikey_2": [1024, 2048],
                                                              "niah_single_1": [1024, 2048]}  # 4096: -1, not run
    assert row.suite_average(row.tasks["niah_single_1"].suite) == pytest.approx({1024: 0.85, 2048: 0.856})


def test_babilong_reads_one_length_per_run(tmp_path):
    """Results shaped as lm-eval's babilong tasks write them (metric acc; the length in max_seq_lengths)."""
    for split, scores in (("2k", (0.5, 1.0)), ("4k", (0.25, 0.5))):
        results = {f"babilong_qa{i}": {"alias": f"babilong_qa{i}", "acc,none": v, "acc_stderr,none": 0.1}
                   for i, v in zip((1, 2), scores)}
        configs = {f"babilong_qa{i}": {"dataset_kwargs": {"qa_split": f"qa{i}"}, "metric_list": [{"metric": "acc"}],
                                       "metadata": {"version": 0.0, "max_seq_lengths": split}} for i in (1, 2)}
        n = {"babilong_qa1": {"original": 100, "effective": 4}, "babilong_qa2": {"original": 100, "effective": 12}}
        write_run(tmp_path / split, "none", None, results, configs, stamp=f"2026-01-0{len(split)}T00-00-00" + split,
                  n_samples=n)
    (row,) = read_runs([tmp_path / "2k", tmp_path / "4k"])
    values = row.suite_values(row.tasks["babilong_qa1"].suite)
    assert {task: {n: m.value for n, m in v.items()} for task, v in values.items()} == {
        "babilong_qa1": {2048: 0.5, 4096: 0.25}, "babilong_qa2": {2048: 1.0, 4096: 0.5}}
    # lm-eval's babilong group weighs its tasks by their sample counts
    assert row.suite_average(row.tasks["babilong_qa1"].suite) == pytest.approx(
        {2048: (4 * 0.5 + 12 * 1.0) / 16, 4096: (4 * 0.25 + 12 * 0.5) / 16})


def test_bad_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no lm-eval results"):
        read_runs([empty])
    with pytest.raises(ValueError, match="is not a folder"):
        read_runs([tmp_path / "missing"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results_x.json").write_text('{"accuracy": 1}')
    with pytest.raises(ValueError, match="is not an lm-eval results file"):
        read_runs([foreign])
    other = tmp_path / "other"
    write_run(other, "none", None, {"hellaswag": {"acc,none": 0.3}}, {})
    with pytest.raises(ValueError, match="No per-length results"):
        read_runs([other])
