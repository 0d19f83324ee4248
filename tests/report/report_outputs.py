"""lm-eval output folders written as lm-eval writes them, for the report's tests (not a test module)."""

import hashlib
import json

import pytest

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
            defaults = {"doc_hash": f"d{i}", "prompt_hash": f"p{i}", "target_hash": "t", "filter": "none"}
            for key, value in defaults.items():
                row.setdefault(key, value)
        joined = "".join(r["doc_hash"] + r["prompt_hash"] + r["target_hash"] for r in rows)
        task_hashes[task] = hashlib.sha256(joined.encode()).hexdigest()
        (model_dir / f"samples_{task}_{stamp}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    payload["task_hashes"] = task_hashes
    path = model_dir / f"results_{stamp}.json"
    path.write_text(json.dumps(payload))
    return path


def passkey_samples(accuracy_by_length_and_depth, per_length_metric=False):
    """Passkey samples: {(length, depth): [0/1 per sample]}, scored as ``acc`` or ``acc@<length>``."""
    rows = []
    for (length, depth), values in accuracy_by_length_and_depth.items():
        for value in values:
            name = f"acc@{length}" if per_length_metric else "acc"
            rows.append({"doc": {"length": length, "depth": depth, "key": "12345"}, name: value})
    return rows


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


@pytest.fixture
def runs(tmp_path):
    """Two folders: ``none`` (fixed-length tasks, with samples) and ``yarn`` ×2 (per-length metrics,
    perplexity in a second results file of the same settings)."""
    none, yarn = tmp_path / "none", tmp_path / "yarn"
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
    write_run(yarn, "yarn", 2.0,
              {"passkey_custom": {"acc@1024,none": 1.0, "acc@4096,none": 0.5}},
              {"passkey_custom": {"dataset_kwargs": {}}},
              {"passkey_custom": passkey_samples({(1024, 0.0): [1], (1024, 1.0): [1], (4096, 0.0): [1],
                                                  (4096, 1.0): [0]}, per_length_metric=True)})
    write_run(yarn, "yarn", 2.0,
              {"longppl": {"token_perplexity@1024,none": 13.0, "token_perplexity@4096,none": 11.25}},
              {"longppl": {}}, stamp="2026-01-02T00-00-00")
    return none, yarn
