"""The ALiBi training recipe (benchmarks/alibi_extrapolation.py) at a tiny size, end to end.

The full recipe trains for minutes; here the same code trains a few steps on two
shortened novels of the shipped corpus, which is enough to check that the
tokenizer loads through AutoTokenizer the way lm-eval loads it, that training is
bit-for-bit deterministic, and that the trained model runs through ctx-hf with
NTK-ALiBi beyond its window.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "lmeval_ctx" / "data" / "austen_excerpts.jsonl"
WINDOW = 256


def _load_recipe():
    """The benchmark as a module; its folder is on the path while it loads, as when it runs as a script."""
    spec = importlib.util.spec_from_file_location("alibi_extrapolation", REPO / "benchmarks" / "alibi_extrapolation.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


recipe = _load_recipe()


def test_the_six_novels_ship_with_the_repository():
    # the default --data was ../shared/data/austen-novels.jsonl, beside the repository: missing in a user's clone
    assert recipe.DEFAULT_DATA.is_relative_to(REPO) and recipe.DEFAULT_DATA.name == "austen-novels.jsonl.gz"
    train, holdout = recipe.split_novels(recipe.read_novels(recipe.DEFAULT_DATA), recipe.DEFAULT_HOLDOUT)
    assert [n["title"] for n in train] == ["Emma", "Mansfield Park", "Pride and Prejudice", "Sense and Sensibility",
                                           "Persuasion"]
    assert holdout["title"] == "Northanger Abbey" and len(holdout["text"]) == 433_411
    # the recorded run's 1,085,397 training tokens came from these texts, whole
    assert sum(len(n["text"]) for n in train) == 3_591_617


def test_a_missing_data_file_names_the_shipped_default(tmp_path):
    with pytest.raises(ValueError, match=r"--data '.*missing\.jsonl' is not a file; .*the default, "
                                         r"benchmarks/data/austen-novels\.jsonl\.gz, ships with the repository"):
        recipe.read_novels(tmp_path / "missing.jsonl")
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"title": "t", "text": " "}) + "\n")
    with pytest.raises(ValueError, match=r"--data '.*blank\.jsonl' is not a usable corpus of novels \(.* is blank"):
        recipe.read_novels(blank)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two shortened novels: the first trains, the second is held out."""
    records = [json.loads(line) for line in SHIPPED.read_text().splitlines()[:2]]
    path = tmp_path_factory.mktemp("corpus") / "novels.jsonl"
    path.write_text("".join(json.dumps({"title": r["title"], "text": r["text"][:40000]}) + "\n" for r in records))
    return path


def _train(corpus: Path, checkpoint: Path) -> dict:
    args = recipe.parse_args([
        "train", "--data", str(corpus), "--holdout", "Mansfield Park", "--checkpoint", str(checkpoint),
        "--window", str(WINDOW), "--steps", "3", "--batch-size", "4", "--hidden", "32", "--layers", "2",
        "--heads", "4", "--vocab-size", "400", "--passkey-min-length", "200", "--log-every", "100",
        "--train-device", "cpu",
    ])
    return recipe.train(args, log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """The tiny recipe trained twice from scratch into two folders."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    return (first, _train(corpus, first)), (second, _train(corpus, second))


@pytest.mark.slow
def test_training_is_deterministic(trained):
    (first, record_a), (second, record_b) = trained
    assert record_a["steps"] == 3 and record_a["losses_every_50"] == record_b["losses_every_50"]
    assert record_a["final_loss"] == record_b["final_loss"]
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_tokenizer_loads_through_autotokenizer(trained):
    from transformers import AutoTokenizer

    from lmeval_ctx.taskdata.passkey import render_prompt

    (folder, _), _ = trained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.is_fast
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    prompt = render_prompt(3, 0.5, "40917")
    ids = tokenizer(prompt).input_ids
    assert tokenizer.decode(ids) == prompt  # byte-level: nothing added, nothing lost
    assert tokenizer.convert_ids_to_tokens(tokenizer(" 40917").input_ids)[-5:] == list("40917")


@pytest.mark.slow
def test_passkey_examples_fit_the_window_and_end_with_the_answer(trained):
    import random

    from transformers import AutoTokenizer

    (folder, _), _ = trained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rng = random.Random(0)
    for _ in range(5):
        ids, targets = recipe.passkey_example(tokenizer, rng, WINDOW, 200)
        assert len(ids) <= WINDOW and ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ids[:-1])
        assert text.startswith("There is an important info hidden")
        key = text.rsplit(" ", 1)[-1]
        assert text.endswith(f"The pass key is {key}") and f"The pass key is {key}. Remember it." in text
        # the retrieval targets: the key where it is repeated (the needle's second mention, the
        # answer) and the closing EOS; never the first mention, which nothing before predicts
        key_ids = tokenizer(" " + key, add_special_tokens=False).input_ids
        first = next(i for i in range(len(ids)) if ids[i:i + len(key_ids)] == key_ids)
        assert min(targets) > first + len(key_ids) - 1
        assert [ids[i] for i in targets] == key_ids + key_ids + [tokenizer.eos_token_id]
        assert tokenizer.decode([ids[i] for i in targets[:len(key_ids)]]).strip() == key


def test_the_retrieval_loss_is_the_mean_over_the_marked_tokens():
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.logits})()

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    inputs = torch.randint(0, 11, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = inputs.masked_fill(mask == 0, -100)
    retrieval = torch.zeros(2, 6, dtype=torch.bool)
    retrieval[0, 3] = retrieval[1, 2] = retrieval[1, 5] = True  # (1, 5) is padding: not counted
    loss, retrieval_loss = recipe.losses_of(Fixed(logits), inputs, mask, labels, retrieval)
    log_probs = torch.log_softmax(logits, -1)

    def nll(row, position):  # the token at `position`, predicted from the one before
        return -log_probs[row, position - 1, inputs[row, position]]

    every = [nll(0, p) for p in range(1, 6)] + [nll(1, p) for p in range(1, 4)]
    torch.testing.assert_close(loss, torch.stack(every).mean())
    torch.testing.assert_close(retrieval_loss, (nll(0, 3) + nll(1, 2)) / 2)


def test_wilson_interval_matches_the_closed_form():
    # 8 of 10: centre (0.8 + z²/20) / (1 + z²/10), half-width z*sqrt(0.016 + z²/400)/(1 + z²/10)
    low, high = recipe.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert recipe.wilson(0, 40)[0] == 0.0 and recipe.wilson(0, 40)[1] == pytest.approx(0.0876, abs=1e-4)


@pytest.mark.slow
def test_trained_model_runs_through_ctx_hf_with_ntk_alibi_beyond_its_window(trained):
    import torch

    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    (folder, _), _ = trained
    lm = CtxHFLM(pretrained=str(folder), scaling="none", original_max_length=WINDOW, max_length=4 * WINDOW,
                 device="cpu", batch_size=1)
    tokens = torch.randint(0, 400, (1, 3 * WINDOW), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = lm.model(tokens).logits
        lm.apply_extension("ntk", factor=4)
        ntk = lm.model(tokens).logits
    assert torch.isfinite(ntk).all() and not torch.allclose(plain, ntk)
    text = "It is a truth universally acknowledged that a single man in possession of a good fortune"
    (score, _), = lm.loglikelihood([_request(text, " must be in want of a wife.")])
    assert score < 0 and torch.isfinite(torch.tensor(score))


def _request(context: str, continuation: str):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)
