"""The report's plots: which curves, their legends and file names, and that each is a real PNG."""

from report_outputs import PNG, runs, write_run  # noqa: F401 - runs: the fixture

from lmeval_ctx.report.plots import curves, legend_label, plot_curves, plot_heatmaps, row_slug
from lmeval_ctx.report.read import read_runs


def test_a_curve_per_member_and_heatmaps_from_the_samples(runs, tmp_path):  # noqa: F811
    rows = read_runs(list(runs))
    assert [(title, suite.name, member) for title, suite, member in curves(rows)] == [
        ("passkey", "passkey", "passkey"), ("longppl", "longppl", "longppl")]
    written = plot_curves(rows, tmp_path, 85.6) + plot_heatmaps(rows, tmp_path, log=lambda message: None)
    assert sorted(path.name for path in written) == [
        "passkey_heatmap_tiny_none.png", "passkey_heatmap_tiny_yarn_x2.png", "passkey_tiny.png", "perplexity_tiny.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_a_row_without_samples_gets_no_heatmap_and_a_message(tmp_path):
    write_run(tmp_path / "x", "none", None, {"passkey_1k": {"acc,none": 1.0}},
              {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}})
    messages = []
    assert plot_heatmaps(read_runs([tmp_path / "x"]), tmp_path, log=messages.append) == []
    assert messages == ["tiny, none: no passkey samples (run lm_eval with --log_samples); heatmap skipped"]


def test_legend_labels_and_file_names_tell_repeated_labels_apart(tmp_path):
    config = {"passkey_1k": {"dataset_kwargs": {"fixed_length": 1024}}}
    for name, dtype in (("a", "float32"), ("b", "bfloat16")):
        write_run(tmp_path / name, "yarn", 4.0, {"passkey_1k": {"acc,none": 0.5}}, config,
                  model_args={"pretrained": "/models/tiny", "dtype": dtype})
    rows = read_runs([tmp_path / "a", tmp_path / "b"])
    assert sorted(legend_label(row, rows) for row in rows) == ["yarn ×4 (dtype=bfloat16)", "yarn ×4 (dtype=float32)"]
    assert sorted(row_slug(row, rows) for row in rows) == ["tiny_yarn_x4_1", "tiny_yarn_x4_2"]
