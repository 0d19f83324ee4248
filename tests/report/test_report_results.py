"""The report's data model: labels, suite averages and the effective-length rules of a row."""

import pytest

from lmeval_ctx.report.results import PASSKEY, RULER, Measure, Run, TaskResult, parameters_text


def row(method="none", factor=None, params=(), tasks=()):
    return Run("tiny", method, factor, run_key="{}", model_key="{}", params=params,
               tasks={task.task: task for task in tasks})


def ruler_task(task, scores):
    return TaskResult(task, RULER, {length: Measure(score) for length, score in scores.items()}, metric="score")


def test_labels_show_the_factor_and_parameters_exactly():
    assert row("yarn", 2.0).label == "yarn ×2"
    assert row("yarn", 2.0000001).label == "yarn ×2.0000001"
    assert row("pi", 1.0).label == "pi"
    self_extend = row("self_extend", params=(("group_size", 4), ("neighbor_window", 1024.0)))
    assert self_extend.label == self_extend.method_label == "self_extend (group_size=4, neighbor_window=1024)"
    assert parameters_text((("logn", True), ("rope_theta", 1e6))) == "logn=true, rope_theta=1000000"


def test_ruler_effective_length_is_the_largest_length_whose_average_reaches_the_threshold():
    run = row(tasks=[ruler_task("niah_single_1", {1024: 0.9, 2048: 0.86, 4096: 0.2}),
                     ruler_task("niah_multikey_2", {1024: 0.8, 2048: 0.852})])
    assert run.suite_average(RULER) == pytest.approx({1024: 0.85, 2048: 0.856})  # 4096: not every member
    assert run.ruler_effective_length(85.6) == 2048
    assert run.ruler_effective_length(85.61) is None
    assert run.ruler_effective_length(85.0) == 2048


def test_passkey_effective_length_and_the_task_behind_a_value():
    fixed = TaskResult("passkey_1k", PASSKEY, {1024: Measure(1.0)}, metric="acc")
    configurable = TaskResult("passkey_custom", PASSKEY, {2048: Measure(0.8), 4096: Measure(0.5)}, metric="acc")
    run = row(tasks=[fixed, configurable])
    assert run.passkey_accuracy == {1024: 1.0, 2048: 0.8, 4096: 0.5}  # both tasks make one member
    assert run.passkey_effective_length == 2048  # 0.8 passes (≥ 0.8)
    assert run.task_at(PASSKEY, "passkey", 1024) is fixed and run.task_at(PASSKEY, "passkey", 4096) is configurable
    assert run.task_at(PASSKEY, "passkey", 8192) is None
    assert row(tasks=[TaskResult("passkey_custom", PASSKEY, {1024: Measure(0.5)})]).passkey_effective_length is None


def test_wilson_interval_only_for_binary_scores_with_a_sample_count():
    assert Measure(0.5, n=4, binary=True).interval == pytest.approx((0.15, 0.85), abs=1e-4)
    assert Measure(0.5, n=4, binary=False).interval is None  # averaged over several needles
    assert Measure(0.5, n=None, binary=True).interval is None
