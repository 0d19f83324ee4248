"""lmeval-ctx report on small synthetic lm-eval output folders."""

import json

import pytest

from lmeval_ctx.cli import main
from lmeval_ctx.report import read_runs, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(folder, method, factor, results, configs, samples=None, stamp="2026-01-01T00-00-00"):
    """An lm-eval output folder as lm_eval --output_path (--log_samples) writes it."""
    model_dir = folder / "__models__tiny"
    model_dir.mkdir(parents=True, exist_ok=True)
    extension = {"scaling": method, "original_max_length": 2048}
    if factor is not None:
        extension["factor"] = factor
    payload = {"results": results, "configs": configs,
               "config": {"model": "ctx-hf", "model_args": {"pretrained": "/models/tiny"},
                          "context_extension": extension}}
    (model_dir / f"results_{stamp}.json").write_text(json.dumps(payload))
    for task, rows in (samples or {}).items():
        (model_dir / f"samples_{task}_{stamp}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


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
    # a configurable run (per-length metrics), perplexity in a second results file, no samples
    write_run(yarn, "yarn", 2.0,
              {"passkey": {"acc@1024,none": 0.9, "acc@4096,none": 0.8}},
              {"passkey": {"dataset_kwargs": {}}},
              {"passkey": passkey_samples({(1024, 0.0): [1], (1024, 1.0): [1], (4096, 0.0): [1], (4096, 1.0): [0]},
                                          per_length_metric=True)})
    write_run(yarn, "yarn", 2.0,
              {"longppl": {"token_perplexity@1024,none": 13.0, "token_perplexity@4096,none": 11.25}},
              {"longppl": {}}, stamp="2026-01-02T00-00-00")
    return none, yarn


def test_leaderboard_table_and_effective_lengths(runs, tmp_path):
    written = write_report(list(runs), tmp_path / "report", log=lambda message: None)
    assert written["table"].splitlines()[:4] == [
        "| model | method | factor | passkey@1024 | passkey@4096 | ppl@1024 | ppl@4096 | effective length |",
        "|---|---|---|---|---|---|---|---|",
        "| tiny | none |  | 1.00 | 0.25 | 12.50 | 250.00 | 1024 |",
        "| tiny | yarn | 2 | 0.90 | 0.80 | 13.00 | 11.25 | 4096 |",
    ]
    assert "largest tested length whose passkey accuracy is ≥ 0.8" in written["table"]
    csv_lines = (tmp_path / "report" / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[2] == "tiny,yarn,2,0.90,0.80,13.00,11.25,4096"
    names = sorted(path.name for path in written["files"])
    assert names == ["leaderboard.csv", "leaderboard.md", "passkey_heatmap_tiny_none.png",
                     "passkey_heatmap_tiny_yarn_x2.png", "perplexity_tiny.png"]
    for path in written["files"]:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_heatmap_cells_are_mean_accuracy_by_length_and_depth(runs):
    from lmeval_ctx.report import passkey_grid

    by_method = {run.method: run for run in read_runs(list(runs))}
    assert passkey_grid(by_method["none"]) == ([1024, 4096], [0.0, 1.0], [[1.0, 0.0], [1.0, 0.5]])
    assert passkey_grid(by_method["yarn"]) == ([1024, 4096], [0.0, 1.0], [[1.0, 1.0], [1.0, 0.0]])


def test_missing_samples_skip_the_heatmap_with_a_message(tmp_path):
    folder = tmp_path / "nosamples"
    write_run(folder, "pi", 4.0, {"passkey_1k": {"acc,none": 0.5}}, {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}})
    messages = []
    written = write_report([folder], tmp_path / "out", log=messages.append)
    assert messages == ["tiny, pi ×4: no passkey samples (run lm_eval with --log_samples); heatmap skipped"]
    assert "| tiny | pi | 4 | 0.50 | < 1024 |" in written["table"]


def test_bad_folders_are_clear_errors(tmp_path, capsys):
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
    with pytest.raises(ValueError, match="No passkey or longppl results"):
        read_runs([other])
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(empty)])
    assert exit_info.value.code == 2 and "holds no lm-eval results" in capsys.readouterr().err


def test_report_command_prints_the_table(runs, tmp_path, capsys):
    assert main(["report", *map(str, runs), "--output", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| tiny | yarn | 2 | 0.90 |" in out and (tmp_path / "cli" / "perplexity_tiny.png").is_file()
