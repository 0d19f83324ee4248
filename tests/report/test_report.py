"""lmeval-ctx report on small lm-eval output folders shaped as lm-eval writes them."""

import csv
import hashlib
import json

import pytest

from lmeval_ctx.cli import main
from lmeval_ctx.report.write import (
    factor_text,
    leaderboard,
    passkey_grid,
    read_runs,
    weighted_average,
    wilson_interval,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"
QUIET = {"log": lambda message: None}


def write_run(folder, method, factor, results, configs, samples=None, stamp="2026-01-01T00-00-00",
              model_args=None, n_samples=None, extension=None, date=None, extra=None):
    """An lm-eval output folder as lm_eval --output_path (--log_samples) writes it."""
    model_dir = folder / "__models__tiny"
    model_dir.mkdir(parents=True, exist_ok=True)
    record = {"scaling": method, "original_max_length": 2048, **(extension or {})}
    if factor is not None:
        record["factor"] = factor
    payload = {"results": results, "configs": configs, "n-samples": n_samples or {},
               "config": {"model": "ctx-hf", "model_args": model_args or {"pretrained": "/models/tiny"},
                          "context_extension": record}}
    if date is not None:
        payload["date"] = date
    payload.update(extra or {})
    task_hashes = {}
    for task, rows in (samples or {}).items():
        for i, row in enumerate(rows):
            row.setdefault("doc_hash", f"d{i}"), row.setdefault("prompt_hash", f"p{i}"), row.setdefault("target_hash", "t")
            row.setdefault("filter", "none")
        joined = "".join(r["doc_hash"] + r["prompt_hash"] + r["target_hash"] for r in rows)
        task_hashes[task] = hashlib.sha256(joined.encode()).hexdigest()
        (model_dir / f"samples_{task}_{stamp}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    payload["task_hashes"] = task_hashes
    path = model_dir / f"results_{stamp}.json"
    path.write_text(json.dumps(payload))
    return path


def passkey_samples(accuracy_by_length_and_depth, per_length_metric=False):
    rows = []
    for (length, depth), values in accuracy_by_length_and_depth.items():
        for value in values:
            name = f"acc@{length}" if per_length_metric else "acc"
            rows.append({"doc": {"length": length, "depth": depth, "key": "12345"}, name: value})
    return rows


@pytest.fixture
def runs(tmp_path):
    none, yarn = tmp_path / "none", tmp_path / "yarn"
    # a plain run of fixed tasks, with samples
    write_run(none, "none", None,
              {"passkey_1k": {"acc,none": 1.0, "acc_stderr,none": 0.0},
               "passkey_4k": {"acc,none": 0.25, "acc_stderr,none": 0.2},
               "longppl_1k": {"token_perplexity,none": 12.5, "docs,none": 3},
               "longppl_4k": {"token_perplexity,none": 250.0, "docs,none": 3}},
              {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}},
               "passkey_4k": {"dataset_kwargs": {"fixed_length": 4096}},
               "longppl_1k": {"dataset_kwargs": {"fixed_length": 1024}},
               "longppl_4k": {"dataset_kwargs": {"fixed_length": 4096}}},
              {"passkey_1k": passkey_samples({(1024, 0.0): [1, 1], (1024, 1.0): [1, 1]}),
               "passkey_4k": passkey_samples({(4096, 0.0): [0, 0], (4096, 1.0): [1, 0]})})
    # a configurable run (per-length metrics), perplexity in a second results file of the same settings
    write_run(yarn, "yarn", 2.0,
              {"passkey": {"acc@1024,none": 1.0, "acc@4096,none": 0.5}},
              {"passkey": {"dataset_kwargs": {}}},
              {"passkey": passkey_samples({(1024, 0.0): [1], (1024, 1.0): [1], (4096, 0.0): [1], (4096, 1.0): [0]},
                                          per_length_metric=True)})
    write_run(yarn, "yarn", 2.0,
              {"longppl": {"token_perplexity@1024,none": 13.0, "token_perplexity@4096,none": 11.25}},
              {"longppl": {}}, stamp="2026-01-02T00-00-00")
    return none, yarn


def test_leaderboard_table_and_effective_lengths(runs, tmp_path):
    written = write_report(list(runs), tmp_path / "report", **QUIET)
    assert written["table"].splitlines()[:4] == [
        "| model | method | factor | window | passkey@1024 | passkey@4096 | passkey effective length (acc ≥ 0.8) "
        "| ppl@1024 | ppl@4096 |",
        "|---|---|---|---|---|---|---|---|---|",
        "| tiny | none |  |  | 1.000 | 0.250 | 1024 | 12.50 | 250.00 |",
        # 1.0 lies in none's interval at 1024 (4 of 4: 0.51-1.0), 0.5 in none's at 4096 (1 of 4: 0.05-0.70)
        "| tiny | yarn | 2 |  | ≈1.000 | ≈0.500 | 1024 | 13.00 | 11.25 |",
    ]
    assert "largest tested length whose passkey accuracy is ≥ 0.8" in written["table"]
    with open(tmp_path / "report" / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["passkey@4096"] == "0.5" and rows[1]["ppl@4096"] == "11.25" and rows[1]["passkey@4096 n"] == "2"
    assert rows[0]["passkey@4096 95% CI"] == "0.0456-0.6994"  # Wilson, 1 of 4
    names = sorted(path.name for path in written["files"])
    assert names == ["index.html", "leaderboard.csv", "leaderboard.md", "passkey_heatmap_tiny_none.png",
                     "passkey_heatmap_tiny_yarn_x2.png", "passkey_tiny.png", "perplexity_tiny.png"]
    for path in written["files"]:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    # 2 of 4: centre (p + z²/2n)/(1 + z²/n) = 0.5, half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    half = z * (0.25 / 4 + z * z / 64) ** 0.5 / (1 + z * z / 4)
    assert wilson_interval(0.5, 4) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert wilson_interval(0.5, 4) == pytest.approx((0.1500, 0.8500), abs=1e-4)
    # 0 of 5: upper bound z²/(n + z²)
    assert wilson_interval(0.0, 5) == pytest.approx((0.0, z * z / (5 + z * z)), abs=1e-12)
    with pytest.raises(ValueError, match="n must be at least 1"):
        wilson_interval(0.5, 0)


def test_ruler_weighted_averages():
    values = {1024: 0.9, 2048: 0.6, 4096: 0.3}
    assert weighted_average(values, increasing=True) == pytest.approx((1 * 0.9 + 2 * 0.6 + 3 * 0.3) / 6)
    assert weighted_average(values, increasing=False) == pytest.approx((3 * 0.9 + 2 * 0.6 + 1 * 0.3) / 6)


def test_heatmap_cells_are_mean_accuracy_by_length_and_depth(runs):
    by_method = {run.method: run for run in read_runs(list(runs))}
    assert passkey_grid(by_method["none"]) == ([1024, 4096], [0.0, 1.0], [[1.0, 0.0], [1.0, 0.5]])
    assert passkey_grid(by_method["yarn"]) == ([1024, 4096], [0.0, 1.0], [[1.0, 1.0], [1.0, 0.0]])


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


def test_corrupt_files_name_themselves(runs, tmp_path):
    (samples,) = (runs[0] / "__models__tiny").glob("samples_passkey_4k_*.jsonl")
    samples.write_text(samples.read_text()[:-20])
    with pytest.raises(ValueError, match=f"'{samples}' line 4 is not an lm-eval sample"):
        read_runs(list(runs))
    (results,) = (runs[0] / "__models__tiny").glob("results_*.json")
    results.write_text(results.read_text()[:50])
    with pytest.raises(ValueError, match=f"'{results}' is not an lm-eval results file"):
        read_runs(list(runs))


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
    table = leaderboard(rows)
    assert table.header[4:6] == ["date", "settings"]
    assert "data" in table.header and any("passkey_1k:0123456789" in row[-1] for row in table.rows)
    assert any("run more than once with the same settings" in note for note in table.notes)


def test_factors_are_never_collapsed(tmp_path):
    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}}
    write_run(tmp_path / "x", "yarn", 2.0, {"passkey_1k": {"acc,none": 0.5}}, config)
    write_run(tmp_path / "y", "yarn", 2.0000001, {"passkey_1k": {"acc,none": 0.25}}, config)
    rows = read_runs([tmp_path / "x", tmp_path / "y"])
    assert sorted(row.label for row in rows) == ["yarn ×2", "yarn ×2.0000001"]
    assert factor_text(2.0) == "2" and factor_text(2.0000001) == "2.0000001" and factor_text(None) == ""


def ruler_results(scores_by_task, lengths_run):
    """Results shaped as lm-eval's RULER tasks write them: a metric per length, -1 for lengths not run."""
    results, configs = {}, {}
    for task, scores in scores_by_task.items():
        metrics = {"alias": task}
        for length in (4096, *lengths_run):
            value = scores.get(length, -1)
            metrics[f"{length},none"] = value
            metrics[f"{length}_stderr,none"] = "N/A" if value == -1 else 0.1
        results[task] = metrics
        configs[task] = {"metadata": {"version": 1.0, "max_seq_lengths": list(lengths_run)},
                         "metric_list": [{"metric": "4096"}]}
    return results, configs


def test_ruler_effective_length_follows_the_threshold(tmp_path):
    results, configs = ruler_results({"niah_single_1": {1024: 0.9, 2048: 0.86},
                                      "niah_multikey_2": {1024: 0.8, 2048: 0.852}}, [1024, 2048])
    results["ruler"] = {"1024,none": 0.85, "alias": "ruler"}  # a group's line is not a task
    write_run(tmp_path / "r", "none", None, results, configs,
              extra={"group_subtasks": {"ruler": ["niah_single_1", "niah_multikey_2"]}})
    (row,) = read_runs([tmp_path / "r"])
    assert row.suite_average(row.tasks["niah_single_1"].suite) == pytest.approx({1024: 0.85, 2048: 0.856})
    assert row.ruler_effective_length(85.6) == 2048  # 85.6 ≥ 85.6 at 2048
    assert row.ruler_effective_length(85.61) is None  # 85.0 and 85.6 both below
    assert row.ruler_effective_length(85.0) == 2048
    table = leaderboard([row], threshold=85.61)
    assert "ruler effective length (avg ≥ 85.61%)" in table.header
    assert table.rows[0][table.header.index("ruler effective length (avg ≥ 85.61%)")] == "< 1024"
    assert table.rows[0][table.header.index("ruler avg@2048")] == "0.856"
    assert "ruler" not in row.tasks


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


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
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
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(empty)])
    assert exit_info.value.code == 2 and "holds no lm-eval results" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--threshold is RULER's score in percent"):
        write_report([other], tmp_path / "out", threshold=0.856, **QUIET)


def test_output_problems_are_found_before_the_work(runs, tmp_path, capsys, monkeypatch):
    import lmeval_ctx.report.write as report

    def must_not_run(folders):
        raise AssertionError("read the runs before checking the output")

    monkeypatch.setattr(report, "read_runs", must_not_run)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(runs[0]), "--output", str(a_file)])
    assert exit_info.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot hold the report"):
        write_report(list(runs), a_file / "inside", **QUIET)


def test_report_command_prints_the_table(runs, tmp_path, capsys):
    assert main(["report", *map(str, runs), "--output", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| tiny | yarn | 2 |  | ≈1.000 |" in out and (tmp_path / "cli" / "perplexity_tiny.png").is_file()
    assert (tmp_path / "cli" / "index.html").is_file()


def test_rows_differing_in_method_parameters_stay_apart_with_labels_that_show_them(tmp_path):
    """Two SelfExtend group sizes (as ctx-hf records them) and none with logn: separate rows, each labelled with
    its parameters; the plain none row stays the reference of the others."""
    from lmeval_ctx.report.plots import _legend_label

    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}, "hellaswag": {}}

    def results(accuracy, short):
        return {"passkey_1k": {"acc,none": accuracy}, "hellaswag": {"acc,none": short, "acc_stderr,none": 0.01}}

    write_run(tmp_path / "none", "none", None, results(0.5, 0.25), config)
    write_run(tmp_path / "logn", "none", None, results(0.5, 0.5), config,
              model_args={"pretrained": "/models/tiny", "scaling": "none", "logn": True},
              extension={"options": {"logn": True}}, date=1.9e9)  # newer than the plain none row
    for group, accuracy in ((8, 0.25), (4, 0.75)):
        write_run(tmp_path / f"g{group}", "self_extend", None, results(accuracy, 0.375), config,
                  model_args={"pretrained": "/models/tiny", "scaling": "self_extend", "group_size": group,
                              "neighbor_window": 1024},
                  extension={"options": {"neighbor_window": 1024, "group_size": group}})
    rows = read_runs([tmp_path / name for name in ("none", "logn", "g8", "g4")])
    labels = ["none", "none (logn=true)", "self_extend (group_size=4, neighbor_window=1024)",
              "self_extend (group_size=8, neighbor_window=1024)"]
    assert [row.label for row in rows] == labels
    assert [row.note for row in rows] == ["", "", "", ""]  # the labels alone tell them apart
    assert [_legend_label(row, rows) for row in rows] == labels
    assert len({row.model_key for row in rows}) == 1  # one model, four methods

    table = leaderboard(rows)
    assert [row[1] for row in table.rows] == labels and "settings" not in table.header
    # the Δ of every row is against the plain none row (0.25), not none with logn
    column = table.header.index("hellaswag acc")
    assert [row[column] for row in table.rows] == ["0.250 ± 0.010", "0.500 ± 0.010 (Δ +0.250)",
                                                   "0.375 ± 0.010 (Δ +0.125)", "0.375 ± 0.010 (Δ +0.125)"]
    assert any("with its own parameters in parentheses" in line for line in table.legend)
    csv_rows = [dict(zip(table.csv_header, row)) for row in table.csv_rows]
    assert [(row["method"], row["parameters"]) for row in csv_rows] == [
        ("none", ""), ("none", "logn=true"), ("self_extend", "group_size=4, neighbor_window=1024"),
        ("self_extend", "group_size=8, neighbor_window=1024")]
