"""What the tasks do with their inputs: keys, lengths, windows, corpora, records, standard errors.

The ``custom_dataset`` hooks are called here as lm-eval calls them: with the model
args, the task metadata and the task's dataset_kwargs in one set of keywords.
"""

import hashlib
import importlib.util
import json
import logging
import math

import pytest

from lmeval_ctx.taskdata.lengths import MAX_TASK_LENGTH
from lmeval_ctx.taskdata.longppl import Document, build_windows, read_corpus
from lmeval_ctx.common.paths import tasks_path
from lmeval_ctx.taskdata.task_classes import _own_length_only, sha256_of_texts
from tiny_models import char_tokenizer


def task_utils(folder: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_task_utils", tasks_path() / folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


passkey = task_utils("passkey")
longppl = task_utils("longppl")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """Model args of a tiny llama (trained window 128 tokens, character tokenizer)."""
    return {"pretrained": str(tiny_model_dir("llama"))}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"title": "long", "text": "The quick brown fox jumps over the lazy dog. " * 20},
            {"title": "blank", "text": "  \n\t "},
            {"title": "short", "text": "Too short."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# -- keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook, key, intended", [
    ("passkey", "num_sample", "num_samples"),
    ("passkey", "dephts", "depths"),
    ("passkey", "factr", "factor"),
    ("passkey", "scalng", "scaling"),
    ("longppl", "strid", "stride"),
    ("longppl", "corpus_revison", "corpus_revision"),
])
def test_a_misspelt_key_names_the_intended_one(model, hook, key, intended):
    dataset = passkey.passkey_dataset if hook == "passkey" else longppl.longppl_dataset
    with pytest.raises(ValueError, match=f"Unknown {hook} --metadata key '{key}': did you mean '{intended}'"):
        dataset(lengths=[300], max_length=1024, **model, **{key: 3})


def test_several_misspelt_keys_are_named_in_one_error(model):
    with pytest.raises(ValueError, match=r"Unknown longppl --metadata keys 'strid': did you mean 'stride'\?; "
                                         r"'num_doc': did you mean 'num_docs'\?; 'factr': did you mean 'factor'\?"):
        longppl.longppl_dataset(lengths=[64], strid=16, num_doc=1, factr=2, **model)


def test_model_args_and_lm_evals_own_keys_are_accepted(model):
    docs = passkey.passkey_dataset(lengths=[300], num_samples=2, **model, dtype="float32", device="cpu",
                                   batch_size=1, scaling="pi", factor=8, truncation=False, add_bos_token=False,
                                   trust_remote_code="no", version=1.0, config_source="passkey_custom.yaml",
                                   max_seq_lengths=[2048])["test"]  # RULER's, in a run of both
    assert len(docs) == 2 and docs.lengths == [300]


def test_lengths_given_to_a_fixed_length_task_is_an_error_unless_the_run_uses_them():
    from types import SimpleNamespace

    from lmeval_ctx.taskdata.task_classes import _LIVE_TASKS, NotedTask, PerLengthTask

    fixed = SimpleNamespace(config=SimpleNamespace(task="passkey_1k", dataset_kwargs={"fixed_length": 1024},
                                                   metadata={"lengths": [512], "version": 1.0}))
    with pytest.raises(ValueError, match=r"lengths=\[512\]: passkey_1k runs at its fixed length 1024, and no task "
                                         r"of this run takes lengths\. For those lengths run the configurable "
                                         r"task: --tasks passkey_custom \(or longppl\)"):
        NotedTask.check_lengths_have_a_use(fixed)
    # --tasks passkey_1k,longppl --metadata '{"lengths": [512]}': the lengths are longppl's
    configurable = PerLengthTask.__new__(PerLengthTask)
    configurable._config = SimpleNamespace(task="longppl", metadata={"lengths": [512]})
    _LIVE_TASKS.add(configurable)
    NotedTask.check_lengths_have_a_use(fixed)


def test_the_configurable_passkey_without_lengths_names_itself(model):
    """Its name is passkey_custom (lm-eval's "passkey" is LIBRA's): the message says what to run."""
    with pytest.raises(ValueError, match=r"The passkey_custom task needs its lengths: --tasks passkey_custom "
                                         r"--metadata '\{\"lengths\": \[4096, 8192\]\}'"):
        passkey.passkey_dataset(**model)


def test_a_fixed_setting_given_again_names_the_key():
    """longppl_<N> fix their corpus in dataset_kwargs; the same key from --metadata is named (not a TypeError)."""
    from types import SimpleNamespace

    from lmeval_ctx.taskdata.task_classes import NotedTask

    config = SimpleNamespace(task="longppl_1k", custom_dataset=longppl.longppl_dataset,
                             dataset_kwargs={"text_field": "text", "fixed_length": 1024},
                             metadata={"text_field": "body", "version": 1.0})
    with pytest.raises(ValueError, match=r"longppl_1k: 'text_field' is fixed by this task \(text_field='text'\) "
                                         r"and cannot be set \(got text_field='body'"):
        NotedTask.download(SimpleNamespace(config=config))


# -- lengths and the window, before anything is built --------------------------------------------

def test_an_absurd_length_is_refused_before_the_model_is_read():
    with pytest.raises(ValueError, match=f"beyond the largest length a task accepts \\({MAX_TASK_LENGTH} tokens\\)"):
        passkey.passkey_dataset(lengths=[10**9], pretrained="/nonexistent/model")


def test_the_window_from_factor_is_checked_before_any_prompt(model, monkeypatch):
    def no_prompt(*args, **kwargs):
        raise AssertionError("a prompt was built before the window check")

    monkeypatch.setattr(passkey, "build_sample", no_prompt)
    with pytest.raises(ValueError, match=r"window is 1024 tokens \(scaling=pi with factor 8 on "
                                         r"original_max_length=128\), smaller than the task's length 32768"):
        passkey.passkey_dataset(fixed_length=32768, **model, scaling="pi", factor=8)
    with pytest.raises(ValueError, match=r"window is 128 tokens \(the model's config\), smaller than .* 300"):
        passkey.passkey_dataset(lengths=[300], **model, truncation=True)
    # no method, no max_length: the model may be a built, already scaled object; ctx-hf checks each request
    assert len(passkey.passkey_dataset(lengths=[300], **model)["test"]) == 50
    with pytest.raises(ValueError, match="max_length=200 is smaller than the task's length 300"):
        passkey.passkey_dataset(lengths=[300], **model, max_length=200)


def test_only_the_samples_asked_for_are_built(model):
    docs = passkey.passkey_dataset(lengths=[300, 600], num_samples=100_000, **model, max_length=1024)["test"]
    docs.gen_tokens = 8
    built = docs.build(range(3), "building")
    assert len(docs) == 200_000 and sorted(docs._built) == [0, 1, 2]
    assert [doc["length"] for doc in built] == [300, 600, 300]


def test_the_generation_budget_sizes_the_prompts(model):
    docs = passkey.passkey_dataset(lengths=[600], num_samples=1, **model, max_length=1024)["test"]
    for budget in (8, 100):
        docs.gen_tokens = budget
        docs.reset()
        doc = docs[0]
        assert 600 - 64 <= doc["prompt_tokens"] + budget <= 600
    # outside lm-eval the budget is the template's max_gen_toks, the one the tasks declare
    from lmeval_ctx.taskdata.passkey import build_sample, template_generation_budget

    template = (tasks_path() / "passkey" / "_passkey_template").read_text()
    assert f"max_gen_toks: {template_generation_budget()}\n" in template
    tok = char_tokenizer()
    assert build_sample(tok, 600, 0.5, "12345") == build_sample(tok, 600, 0.5, "12345", template_generation_budget())


def test_a_longppl_length_beyond_the_window_under_truncation_is_refused(model, corpus):
    with pytest.raises(ValueError, match=r"window is 128 tokens .* length 512: the windows would not fit the "
                                         r"window\. With truncation=True lm-eval would cut their start"):
        longppl.longppl_dataset(lengths=[512], corpus_files=str(corpus), **model, truncation="true")


# -- corpora -------------------------------------------------------------------------------------

def test_the_models_revision_is_not_the_corpus_revision(model, monkeypatch):
    import datasets

    with pytest.raises(ValueError, match=r"revision='v2' is the model's revision .* corpus_revision"):
        longppl.longppl_dataset(lengths=[64], corpus_path="someone/corpus", **model, revision="v2")
    asked = {}

    def builder(path, name=None, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("offline")

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    with pytest.raises(ValueError, match="Could not load the corpus 'someone/corpus'"):
        longppl.longppl_dataset(lengths=[64], corpus_path="someone/corpus", corpus_revision="abc123", **model,
                                revision="v2")
    assert asked["revision"] == "abc123"


def test_earlier_corpus_names_still_work_and_must_agree(model, corpus):
    rows = longppl.longppl_dataset(lengths=[64], data_files=str(corpus), **model)["test"]
    assert {row["title"] for row in rows} == {"long"}
    with pytest.raises(ValueError, match="data_files='a.jsonl' and corpus_files='b.jsonl' disagree"):
        longppl.longppl_dataset(lengths=[64], data_files="a.jsonl", corpus_files="b.jsonl", **model)
    with pytest.raises(ValueError, match="the longppl_<N> tasks read PG19"):
        longppl.longppl_dataset(fixed_length=64, data_files=str(corpus), **model)


def test_empty_documents_are_left_out_and_counted():
    docs = [Document("blank", " \n\t "), Document("empty", ""), Document("long", "y" * 300)]
    windows, left_out = build_windows(char_tokenizer(), docs, [80, 200])
    assert left_out == {80: 2, 200: 2}
    assert [(w.title, w.length) for w in windows] == [("long", 80), ("long", 200)]


def test_an_empty_corpus_file_is_named_not_measured_as_zero_tokens(model, tmp_path):
    empty = tmp_path / "notes.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"corpus_files: '.*notes\.txt' is blank") as raised:
        longppl.longppl_dataset(lengths=[64], data_files=str(empty), **model)
    assert "longest has 0" not in str(raised.value)


def test_the_sliding_window_warning_names_the_span(model, corpus, caplog):
    with caplog.at_level(logging.WARNING):
        rows = longppl.longppl_dataset(lengths=[48, 64], stride=16, corpus_files=str(corpus), **model)["test"]
    assert "2 of 3 documents are empty or shorter than 64 tokens" in caplog.text and "None" not in caplog.text
    notes = json.loads(rows.info.description)["lmeval_ctx_notes"]
    assert notes["documents_left_out"] == {"48": 2, "64": 2}
    assert notes["variant"] == "sliding window, stride 16, span 64"


def test_an_unreadable_record_names_its_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "cut off\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl', line 3: not a JSON record"):
        read_corpus(data_files=str(path))
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2 has no text field 'text'"):
        read_corpus(data_files=str(path))


def test_the_corpus_identity_is_what_was_read(corpus, tmp_path):
    _, identity = read_corpus(data_files=str(corpus))
    assert identity["kind"] == "sha256" and identity["value"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    other = tmp_path / "other.txt"
    other.write_text("Another document. " * 10)
    _, both = read_corpus(data_files=[str(corpus), str(other)])
    assert both["kind"] == "sha256" and both["value"] not in (identity["value"], None)
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "test.jsonl").write_text(corpus.read_text())
    documents, on_disk = read_corpus(dataset_path=str(folder))
    assert on_disk["kind"] == "fingerprint" and len(on_disk["value"]) >= 16 and len(documents) == 3


def test_prompt_digest_depends_on_every_prompt():
    assert sha256_of_texts(["a", "bc"]) != sha256_of_texts(["ab", "c"])
    assert sha256_of_texts(["a"]) == hashlib.sha256(b"a\0").hexdigest()


# -- standard errors -------------------------------------------------------------------------------

def test_per_length_accuracies_carry_the_standard_error_of_the_fixed_tasks():
    from lm_eval.api.metrics import mean, mean_stderr, weighted_perplexity
    from lm_eval.evaluator_utils import _compute_task_aggregations

    class Task:
        task_name = "passkey_custom"

        @staticmethod
        def aggregation():
            return {"acc@300": _own_length_only(mean), "acc@600": _own_length_only(mean),
                    "token_perplexity@300": _own_length_only(weighted_perplexity)}

    acc_300, acc_600 = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0]
    raw = {("acc@300", "none"): acc_300 + [None] * 3, ("acc@600", "none"): [None] * 4 + acc_600,
           ("token_perplexity@300", "none"): [(-1.0, 2), (-2.0, 3), None]}
    metrics, _ = _compute_task_aggregations(Task, raw, bootstrap_iters=1000)
    assert metrics["acc@300_stderr,none"] == pytest.approx(mean_stderr(acc_300))
    assert metrics["acc@600_stderr,none"] == pytest.approx(mean_stderr(acc_600))
    assert metrics["acc@300,none"] == 0.75 and math.isfinite(metrics["token_perplexity@300,none"])
    # as for the fixed longppl tasks: lm-eval has no standard error for a token-weighted perplexity
    assert metrics["token_perplexity@300_stderr,none"] == "N/A"
