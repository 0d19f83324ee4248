"""The leaderboard: its columns, effective lengths, the ≈ mark and the Δ against the right `none` row."""

from report_outputs import passkey_samples, ruler_results, runs, write_run  # noqa: F401 - runs: the fixture

from lmeval_ctx.report.leaderboard import leaderboard, markdown_table
from lmeval_ctx.report.read import read_runs


def cells(table, column):
    return [row[table.header.index(column)] for row in table.rows]


def test_leaderboard_table_and_effective_lengths(runs):  # noqa: F811
    table = leaderboard(read_runs(list(runs)))
    text = markdown_table(table)
    assert text.splitlines()[:4] == [
        "| model | method | factor | window | passkey@1024 | passkey@4096 | passkey effective length (acc ≥ 0.8) "
        "| passkey relative effective length (≥ 85% of own shortest) | ppl@1024 | ppl@4096 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| tiny | none |  |  | 1.000 | 0.250 | 1024 | 1024 | 12.50 | 250.00 |",
        # 1.0 lies in none's interval at 1024 (4 of 4: 0.51-1.0), 0.5 in none's at 4096 (1 of 4: 0.05-0.70)
        "| tiny | yarn | 2 |  | ≈1.000 | ≈0.500 | 1024 | 1024 | 13.00 | 11.25 |",
    ]
    assert "largest tested length whose passkey accuracy is ≥ 0.8" in text
    rows = [dict(zip(table.csv_header, row)) for row in table.csv_rows]
    assert rows[1]["passkey@4096"] == "0.5" and rows[1]["ppl@4096"] == "11.25" and rows[1]["passkey@4096 n"] == "2"
    assert rows[0]["passkey@4096 95% CI"] == "0.0456-0.6994"  # Wilson, 1 of 4
    assert table.csv_header[:9] == ["model", "method", "parameters", "factor", "window", "original length", "date",
                                    "settings", "data identity"]
    assert rows[0]["original length"] == "2048"


def test_ruler_columns_follow_the_threshold(tmp_path):
    results, configs = ruler_results({"niah_single_1": {1024: 0.9, 2048: 0.86},
                                      "niah_multikey_2": {1024: 0.8, 2048: 0.852}}, [1024, 2048])
    write_run(tmp_path / "r", "none", None, results, configs)
    table = leaderboard(read_runs([tmp_path / "r"]), threshold=85.61)
    assert cells(table, "ruler effective length (avg ≥ 85.61%)") == ["< 1024"]
    assert cells(table, "ruler avg@2048") == ["0.856"]
    assert cells(table, "ruler wAvg inc") == ["0.854"]  # (0.85 + 2 · 0.856) / 3
    assert cells(leaderboard(read_runs([tmp_path / "r"])), "ruler effective length (avg ≥ 85.6%)") == ["2048"]


def test_rows_that_read_alike_show_their_settings(tmp_path):
    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}}
    with_identity = {"passkey_1k": {**config["passkey_1k"],
                                    "metadata": {"data_identity": {"kind": "sha256", "value": "0123456789abcdef"}}}}
    write_run(tmp_path / "a", "none", None, {"passkey_1k": {"acc,none": 0.5}}, config, date=1.7e9)
    write_run(tmp_path / "d", "none", None, {"passkey_1k": {"acc,none": 0.5}}, with_identity)
    write_run(tmp_path / "e", "none", None, {"passkey_1k": {"acc,none": 0.5}}, config, date=1.7e9 + 3600)
    table = leaderboard(read_runs([tmp_path / name for name in "ade"]))
    assert table.header[4:6] == ["date", "settings"]
    assert "data" in table.header and any("passkey_1k:0123456789" in row[-1] for row in table.rows)
    assert sum("run more than once with the same settings" in note for note in table.notes) == 2


def test_rows_differing_in_method_parameters_are_compared_with_the_plain_none_row(tmp_path):
    """Two SelfExtend group sizes (as ctx-hf records them) and none with logn: separate rows, each labelled with
    its parameters; the plain none row stays the reference of the others."""
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
    assert len({row.model_key for row in rows}) == 1  # one model, four methods

    table = leaderboard(rows)
    assert [row[1] for row in table.rows] == labels and "settings" not in table.header
    # the Δ of every row is against the plain none row (0.25), not none with logn
    assert cells(table, "hellaswag acc") == ["0.250 ± 0.010", "0.500 ± 0.010 (Δ +0.250)",
                                             "0.375 ± 0.010 (Δ +0.125)", "0.375 ± 0.010 (Δ +0.125)"]
    assert any("with its own parameters in parentheses" in line for line in table.legend)
    csv_rows = [dict(zip(table.csv_header, row)) for row in table.csv_rows]
    assert [(row["method"], row["parameters"]) for row in csv_rows] == [
        ("none", ""), ("none", "logn=true"), ("self_extend", "group_size=4, neighbor_window=1024"),
        ("self_extend", "group_size=8, neighbor_window=1024")]
    assert [row["hellaswag acc Δ none"] for row in csv_rows] == ["", "0.25", "0.125", "0.125"]


def test_the_none_baseline_ran_the_same_task_settings(tmp_path):
    """Δ and ≈ compare with a `none` run of the same model that ran the task with the same settings and data:
    a newer `none` run on another corpus or with another few-shot count is no baseline, and a row whose
    settings no `none` run shares gets neither mark."""
    def run(folder, method, corpus, accuracy, shots, short, date):
        config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024},
                                 "metadata": {"data_identity": {"kind": "sha256", "value": corpus}}},
                  "hellaswag": {"metric_list": [{"metric": "acc"}]}}
        write_run(tmp_path / folder, method, 2.0 if method != "none" else None,
                  {"passkey_1k": {"acc,none": accuracy}, "hellaswag": {"acc,none": short}}, config,
                  {"passkey_1k": passkey_samples({(1024, 0.5): [accuracy] * 4})}, date=date,
                  extra={"n-shot": {"hellaswag": shots}})

    run("none_a", "none", "corpus-a", 1.0, 0, 0.25, 1.7e9)
    run("none_b", "none", "corpus-b", 0.0, 5, 0.5, 1.8e9)  # newer, another corpus and few-shot count
    run("pi", "pi", "corpus-a", 1.0, 0, 0.375, 1.75e9)  # the settings of none_a
    run("yarn", "yarn", "corpus-c", 1.0, 3, 0.375, 1.75e9)  # settings no none run shares
    table = leaderboard(read_runs([tmp_path / name for name in ("none_a", "none_b", "pi", "yarn")]))
    by_method = {row[1]: row for row in table.rows if row[1] != "none"}
    passkey, short = table.header.index("passkey@1024"), table.header.index("hellaswag acc")
    assert by_method["pi"][passkey] == "≈1.000" and by_method["pi"][short] == "0.375 (Δ +0.125)"
    assert by_method["yarn"][passkey] == "1.000" and by_method["yarn"][short] == "0.375"
    csv_rows = {row[1]: dict(zip(table.csv_header, row)) for row in table.csv_rows}
    assert csv_rows["pi"]["hellaswag acc Δ none"] == "0.125" and csv_rows["yarn"]["hellaswag acc Δ none"] == ""
    assert any("no Δ without one" in line for line in table.legend)
