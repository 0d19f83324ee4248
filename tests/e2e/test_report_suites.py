"""lmeval-ctx report on results written by a real sweep: RULER, passkey and a short task.

A tiny local model runs lm-eval's own RULER task niah_single_1 (its "repeat" haystack
builds offline) at two lengths, our configurable passkey at the same lengths and a
tiny multiple-choice task with local data (--include_path), with scaling none and
yarn x2, in one ``lmeval-ctx sweep`` (in this process, to share the imports): RULER
reads its lengths from --metadata max_seq_lengths, passkey from lengths.
"""

import csv
import json
import math
import shutil

import pytest

from lmeval_ctx.report.write import write_report

pytestmark = pytest.mark.slow
pytest.importorskip("wonderwords", reason="lm-eval's RULER tasks need wonderwords (pip install lm_eval[ruler])")

LENGTHS = [768, 1024]
Z = 1.959963984540054
MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def output(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report_suites")
    tasks = folder / "tasks"
    tasks.mkdir()
    docs = [{"question": f"{i} plus one is", "choices": [str(i + 1), str(i + 7), "blue"], "answer": 0}
            for i in range(6)]
    (tasks / "mc.jsonl").write_text("\n".join(json.dumps(doc) for doc in docs))
    (tasks / "tiny_mc.yaml").write_text(MC_TASK.format(data=tasks / "mc.jsonl"))
    model = tiny_model_dir("llama")
    from lmeval_ctx.cli import main

    # RULER's samples are ordered by length (500 each): pick two of each length
    status = main(["sweep", "--model_args", f"pretrained={model},dtype=float32,max_length=1024",
                   "--methods", "none,yarn", "--factor", "2", "--tasks", "niah_single_1,passkey_custom,tiny_mc",
                   "--include_path", str(tasks), "--device", "cpu", "--output_path", str(folder / "out"),
                   "--log_samples", "--metadata",
                   json.dumps({"max_seq_lengths": LENGTHS, "lengths": LENGTHS, "num_samples": 2, "depths": 2}),
                   "--samples", json.dumps({"niah_single_1": [0, 1, 500, 501]}), "--gen_kwargs", "max_gen_toks=12"])
    assert status == 0
    return folder / "out"


def results_by_method(folder):
    out = {}
    for path in folder.rglob("results_*.json"):
        results = json.loads(path.read_text())
        method = results["config"]["context_extension"]["scaling"]
        out.setdefault(method, {}).update(results["results"])
    return out


def csv_rows(report):
    with open(report / "leaderboard.csv") as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


def test_table_values_equal_the_results_json(output, tmp_path):
    written = write_report([output], tmp_path / "report", log=lambda message: None)
    rows = csv_rows(tmp_path / "report")
    assert sorted(rows) == ["none", "yarn"] and len(written["runs"]) == 2  # two sweep points, two rows
    for method, results in results_by_method(output).items():
        row = rows[method]
        for n in LENGTHS:
            assert float(row[f"niah_single_1@{n}"]) == results["niah_single_1"][f"{n},none"]
            assert float(row[f"passkey@{n}"]) == results["passkey_custom"][f"acc@{n},none"]
        assert float(row["tiny_mc acc"]) == results["tiny_mc"]["acc,none"]
        assert float(row["tiny_mc acc stderr"]) == results["tiny_mc"]["acc_stderr,none"]
    # inside the window: the difference from the none row of the same model
    json_by_method = results_by_method(output)
    assert float(rows["yarn"]["tiny_mc acc Δ none"]) == pytest.approx(
        json_by_method["yarn"]["tiny_mc"]["acc,none"] - json_by_method["none"]["tiny_mc"]["acc,none"], abs=1e-12)
    assert rows["none"]["tiny_mc acc Δ none"] == ""
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<tr title=") == 2 and "data:image/png;base64," in page


def test_wilson_intervals_from_the_logged_samples(output, tmp_path):
    write_report([output], tmp_path / "report", log=lambda message: None)
    rows = csv_rows(tmp_path / "report")
    for path in output.rglob("samples_*.jsonl"):
        task = "niah_single_1" if "niah_single_1" in path.name else "passkey" if "passkey" in path.name else None
        if task is None:
            continue
        (results_path,) = path.parent.glob(f"results_{path.stem.rsplit('_', 1)[1]}.json")
        method = json.loads(results_path.read_text())["config"]["context_extension"]["scaling"]
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        for n in LENGTHS:
            key = str(n) if task == "niah_single_1" else f"acc@{n}"
            scores = [s[key] for s in samples if s.get(key) not in (None, -1)]
            k, m = sum(scores), len(scores)
            p = k / m
            centre = (p + Z * Z / (2 * m)) / (1 + Z * Z / m)
            half = Z * math.sqrt(p * (1 - p) / m + Z * Z / (4 * m * m)) / (1 + Z * Z / m)
            row = rows[method]
            assert int(row[f"{task}@{n} n"]) == m == 2
            assert row[f"{task}@{n} 95% CI"] == f"{max(0, centre - half):.4f}-{min(1, centre + half):.4f}"


def test_effective_lengths_at_the_threshold_boundary(output, tmp_path):
    """Real results files with values edited to sit just above and just below each rule's threshold."""
    edited = tmp_path / "edited"
    shutil.copytree(output, edited)
    for path in edited.rglob("results_*.json"):
        results = json.loads(path.read_text())
        if results["config"]["context_extension"]["scaling"] != "yarn":
            continue
        scores = results["results"]
        if "niah_single_1" in scores:  # RULER: 85.7 % at 768 (passes 85.6), 85.5 % at 1024 (fails)
            scores["niah_single_1"]["768,none"], scores["niah_single_1"]["1024,none"] = 0.857, 0.855
        if "passkey_custom" in scores:  # passkey: 0.8 at 768 (passes >= 0.8), 0.79 at 1024 (fails)
            scores["passkey_custom"]["acc@768,none"], scores["passkey_custom"]["acc@1024,none"] = 0.8, 0.79
        path.write_text(json.dumps(results))
    write_report([edited], tmp_path / "report", log=lambda message: None)
    row = csv_rows(tmp_path / "report")["yarn"]
    assert row["ruler effective length (avg ≥ 85.6%)"] == "768"
    assert row["passkey effective length (acc ≥ 0.8)"] == "768"
    write_report([edited], tmp_path / "strict", log=lambda message: None, threshold=85.8)
    assert csv_rows(tmp_path / "strict")["yarn"]["ruler effective length (avg ≥ 85.8%)"] == "< 768"
