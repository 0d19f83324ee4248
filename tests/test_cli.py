"""The ``lmeval-ctx`` command line (lmeval_ctx/cli.py): help built from the method catalog, and bad arguments as one
line on stderr with exit status 2, no traceback, before anything loads. Full sweeps: tests/e2e/test_sweep.py;
the report command: tests/report/test_report.py."""

import json
from pathlib import Path

import pytest

from lmeval_ctx.cli import main
from lmeval_ctx.common.paths import tasks_path
from lmeval_ctx.methods.catalog import ALL_METHOD_SPELLINGS, method_help


def sweep_argv(model_args: str, output: Path, *extra: str) -> list[str]:
    return ["sweep", "--model_args", model_args, "--methods", "none", "--tasks", "longppl",
            "--output_path", str(output), *extra]


def usage_error(argv: list[str], capsys) -> str:
    """The error line of a command that must stop with exit status 2, without a traceback. The error is the last
    line of stderr (progress bars of a tiny model built for the test may come before it), so a message of
    several lines fails the tests' ``startswith``."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "Traceback" not in err and err.endswith("\n")
    return err.splitlines()[-1]


def test_the_sweep_help_lists_every_method_of_the_catalog(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "--help"])
    assert stopped.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert method_help() in help_text
    assert all(spelling in help_text for spelling in ALL_METHOD_SPELLINGS)


@pytest.mark.parametrize("model_args, flags, message", [
    ("batch_size=2", ["--batch_size", "4"], "--batch_size 4 and --model_args batch_size=2 differ: give the batch_size "
                                            "once, either as --batch_size or in --model_args."),
    ("device=cpu", ["--device", "cuda:0"], "--device cuda:0 and --model_args device=cpu differ"),
])
def test_a_batch_size_or_device_given_twice_differently_is_a_usage_error(tiny_model_dir, tmp_path, capsys,
                                                                          model_args, flags, message):
    argv = sweep_argv(f"pretrained={tiny_model_dir('llama')},{model_args}", tmp_path / "runs", *flags)
    err = usage_error(argv, capsys)
    assert err.startswith(f"lmeval-ctx sweep: error: {message}")
    assert not (tmp_path / "runs").exists()  # stopped before anything was written or loaded


@pytest.mark.parametrize("flags, message", [
    (["--seed", "x"], "--seed 'x': give one whole number or four"),
    (["--batch_size", "many"], "batch_size='many' is not a batch size"),
    (["--limit", "-1"], "--limit -1: give a count of documents >= 1 or a fraction between 0 and 1."),
    (["--metadata", "{"], "--metadata is not valid JSON"),
    (["--metadata", "[4096]"], "--metadata must be a JSON object"),
    (["--samples", json.dumps({"longppl": "0"})], "--samples must be a JSON object of document index lists"),
    (["--methods", "none,rope_magic"], "scaling='rope_magic' is not a known context-extension method"),
])
def test_bad_sweep_arguments_are_one_line_usage_errors(tmp_path, capsys, flags, message):
    err = usage_error(sweep_argv("pretrained=some/model", tmp_path / "runs", *flags), capsys)
    assert err.startswith(f"lmeval-ctx sweep: error: {message}")


def test_model_args_without_a_model_are_a_usage_error(tmp_path, capsys):
    err = usage_error(sweep_argv("pretrained", tmp_path / "runs"), capsys)
    assert err == "lmeval-ctx sweep: error: --model_args needs pretrained=<model>: a model folder or a hub name."


def test_tasks_path_prints_the_task_folder(capsys):
    assert main(["tasks-path"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tasks_path()) and (Path(printed) / "passkey").is_dir()
