"""Train a small ALiBi (BLOOM) model from scratch, then see what the ALiBi methods do beyond its window.

No pretrained ALiBi checkpoint can be downloaded here, so this script makes one:

1. **Tokenizer**: a byte-level BPE of ``--vocab-size`` pieces (digits kept one per
   token, so a 5-digit pass key is 5 tokens) trained with the ``tokenizers`` library
   on the training novels, saved as a ``PreTrainedTokenizerFast`` that
   ``AutoTokenizer`` loads (bos/eos/pad defined, nothing added to encoded text).
2. **Model**: ``BloomForCausalLM`` (ALiBi, Press et al. 2021, arXiv:2108.12409),
   trained from scratch at a ``--window``-token context on five Austen novels mixed
   with passkey-retrieval prompts built by ``lmeval_ctx.taskdata.passkey`` (the task's own
   format and filler), so the model learns to retrieve inside its window; the loss adds
   the mean over the tokens that repeat a pass key (``--retrieval-weight``), which lets
   a model this small learn retrieval within the CPU budget. Deterministic
   on a given device and software: fixed seeds, fixed data order,
   ``torch.use_deterministic_algorithms``, fixed threads. The default recipe (0.86M
   parameters, 3,000 steps of 8 x 256 tokens) trains in about 9 minutes on 2 CPU cores;
   docs/alibi_extrapolation.md gives the flags of the larger GPU-trained variant.
3. **Evaluation**: ``lmeval-ctx sweep`` runs ``none`` and ``pi``, ``ntk`` (NTK-ALiBi) at
   each ``--factors`` (2, 4, 8) and ``dynamic_ntk`` on the ``passkey_custom`` task and on ``longppl`` over
   the held-out sixth novel, at 1x, 2x, 4x and 8x the window; ``lmeval-ctx report``
   writes the leaderboard and plots; the table (with 95% Wilson intervals for passkey
   accuracy) goes to ``--result``.

The methods are those of docs/methods.md (interpolation divides every slope by the
factor; NTK-ALiBi keeps the steepest head and divides the flattest by the factor).

Usage (the wrapper ``scripts/alibi_extrapolation.sh`` runs the documented recipe)::

    python benchmarks/alibi_extrapolation.py all
    python benchmarks/alibi_extrapolation.py probe --seconds 30   # tokens/s of this recipe here
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmark_support import AUSTEN_NOVELS, REPO, in_repository

DEFAULT_DATA = AUSTEN_NOVELS
DEFAULT_WORK = REPO / "runs" / "alibi_extrapolation"  # runs/ is git-ignored: weights never reach git
DEFAULT_HOLDOUT = "Northanger Abbey"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
METHODS_WITH_FACTOR = ("pi", "ntk")
PASSKEY_GEN_TOKENS = 8  # room left for the answer, as the passkey task's max_gen_toks


# -- data ---------------------------------------------------------------------------------

def read_novels(path: Path) -> list[dict]:
    """The records (``title``, ``text``) of a JSON-lines corpus (``.jsonl`` or ``.jsonl.gz``), read by the
    ``longppl`` task's own corpus reader."""
    from lmeval_ctx.taskdata.longppl import load_corpus

    if not path.is_file():
        raise ValueError(f"--data {str(path)!r} is not a file; pass the Austen novels JSON-lines file (the default, "
                         f"{DEFAULT_DATA.relative_to(REPO)}, ships with the repository).")
    try:
        documents = load_corpus(data_files=str(path))
    except ValueError as error:
        raise ValueError(f"--data {str(path)!r} is not a usable corpus of novels ({error})") from error
    return [{"title": document.title, "text": document.text} for document in documents]


def split_novels(records: list[dict], holdout: str) -> tuple[list[dict], dict]:
    """(training novels, the held-out novel) by title."""
    titles = [r["title"] for r in records]
    if holdout not in titles:
        raise ValueError(f"--holdout {holdout!r} is not a title in the corpus; choose one of {titles}.")
    return [r for r in records if r["title"] != holdout], records[titles.index(holdout)]


def passkey_texts() -> list[str]:
    """The fixed phrases of the passkey prompts, so the tokenizer has pieces for them."""
    from lmeval_ctx.taskdata.passkey import DESCRIPTION, FILLER_SENTENCES, NEEDLE, QUESTION

    return [DESCRIPTION, " ".join(FILLER_SENTENCES), NEEDLE.format(key="12345"), QUESTION]


# -- tokenizer ----------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE with single-digit tokens, saved where ``AutoTokenizer`` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"--vocab-size {vocab_size} is too small: a byte-level BPE needs 256 bytes plus the "
                         "special tokens; use at least 300 (e.g. 2048).")
    tok = Tokenizer(models.BPE())
    # digits one per token: a pass key is then copied digit by digit, like in most LLM tokenizers
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # GPT-2's: nothing added, raw offsets
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, model_max_length=1 << 20)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


# -- training data ------------------------------------------------------------------------

def text_stream(tokenizer, novels: list[dict]) -> "torch.Tensor":
    """All training novels as one token stream, an EOS between novels."""
    import torch

    ids: list[int] = []
    for novel in novels:
        ids += tokenizer(novel["text"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def passkey_example(tokenizer, rng: random.Random, window: int, min_length: int) -> tuple[list[int], list[int]]:
    """One passkey prompt of ``lmeval_ctx.taskdata.passkey`` (random length, depth and key) with its answer and EOS,
    and the indices of its retrieval targets: the tokens that repeat the key after its first mention
    (the needle's "Remember it. <key>" and the answer), the only ones predictable by looking back."""
    from lmeval_ctx.taskdata.passkey import build_sample

    length = rng.randint(min_length, window)
    depth = rng.random()
    key = str(rng.randint(10000, 99999))
    sample = build_sample(tokenizer, length, depth, key, gen_tokens=PASSKEY_GEN_TOKENS)
    ids = tokenizer(sample.input, add_special_tokens=False).input_ids
    key_ids = tokenizer(" " + key, add_special_tokens=False).input_ids
    ids += key_ids + [tokenizer.eos_token_id]
    if len(ids) > window:
        raise ValueError(f"A passkey example of {len(ids)} tokens exceeds --window {window}.")
    mentions = [i for i in range(len(ids) - len(key_ids) + 1) if ids[i:i + len(key_ids)] == key_ids]
    if len(mentions) < 3:
        raise ValueError(f"A passkey example holds {len(mentions)} mentions of its key {key} (expected the needle's "
                         "two and the answer): the tokenizer splits the key differently in context.")
    targets = [i for start in mentions[1:] for i in range(start, start + len(key_ids))] + [len(ids) - 1]
    return ids, targets


class Batches:
    """Deterministic batches: text windows at random offsets mixed with padded passkey examples.

    Each batch is (inputs, attention mask, labels, retrieval): ``retrieval`` marks the tokens
    of the passkey examples that repeat their key (see :func:`passkey_example`)."""

    def __init__(self, tokenizer, stream, window: int, batch_size: int, passkey_fraction: float, seed: int,
                 passkey_min_length: int):
        import torch

        if not 0.0 <= passkey_fraction <= 1.0:
            raise ValueError(f"--passkey-fraction {passkey_fraction} must be in [0, 1].")
        self.tokenizer, self.stream, self.window, self.batch_size = tokenizer, stream, window, batch_size
        self.n_passkey = round(batch_size * passkey_fraction)
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.passkey_min_length = passkey_min_length

    def next(self):
        import torch

        n_text = self.batch_size - self.n_passkey
        starts = torch.randint(0, len(self.stream) - self.window - 1, (n_text,), generator=self.gen)
        rows = [self.stream[s:s + self.window] for s in starts.tolist()]
        inputs = torch.full((self.batch_size, self.window), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((self.batch_size, self.window), dtype=torch.long)
        for i, row in enumerate(rows):
            inputs[i], mask[i] = row, 1
        retrieval = torch.zeros((self.batch_size, self.window), dtype=torch.bool)
        for i in range(n_text, self.batch_size):
            ids, targets = passkey_example(self.tokenizer, self.rng, self.window, self.passkey_min_length)
            inputs[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
            retrieval[i, targets] = True
        labels = inputs.masked_fill(mask == 0, -100)
        return inputs, mask, labels, retrieval


# -- model and training -------------------------------------------------------------------

def make_deterministic(seed: int, threads: int) -> None:
    # cuBLAS is deterministic only with a fixed workspace (set before CUDA starts)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def build_model(tokenizer, hidden: int, layers: int, heads: int):
    from transformers import BloomConfig, BloomForCausalLM

    if heads < 2:
        raise ValueError(f"--heads {heads}: NTK-ALiBi interpolates between the steepest and flattest heads; use >= 2.")
    if hidden % heads:
        raise ValueError(f"--hidden {hidden} must be a multiple of --heads {heads}.")
    config = BloomConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, n_layer=layers, n_head=heads,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_dropout=0.0, attention_dropout=0.0,
        tie_word_embeddings=True,
    )
    return BloomForCausalLM(config)


def losses_of(model, inputs, mask, labels, retrieval):
    """(mean next-token loss over every labelled token, mean loss over the retrieval targets).

    The second term, added with ``--retrieval-weight``, helps a small model learn retrieval
    on 2 CPU cores: in the plain mean the few tokens that repeat a pass key are drowned by
    the filler (a CPU-sized run without it learnt the text but not retrieval). The model is
    still trained on every token."""
    import torch

    logits = model(input_ids=inputs, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                  ignore_index=-100, reduction="none").view_as(targets)
    labelled = (targets != -100).float()
    chosen = retrieval[:, 1:].float() * labelled
    return (per_token * labelled).sum() / labelled.sum(), (per_token * chosen).sum() / chosen.sum().clamp(min=1)


def retrieval_check(model, prompts: list[tuple[list[int], list[int]]], device) -> tuple[int, int]:
    """How many of ``prompts`` (from :func:`passkey_example`) the model completes with their exact key:
    the greedy next token at every answer position (the last run of retrieval targets: the key
    and EOS), given the right ones before it."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for ids, targets in prompts:
            answer_start = len(ids) - 1
            while answer_start - 1 in targets:
                answer_start -= 1
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
            correct += logits[answer_start - 1:len(ids) - 1].argmax(-1).tolist() == ids[answer_start:]
    model.train()
    return correct, len(prompts)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of ``lr``."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train(args, *, max_seconds: float | None = None, log=print) -> dict:
    """Train tokenizer and model into ``args.checkpoint``; return the training record.

    With ``max_seconds`` (the probe) training stops early and nothing is saved.
    """
    import torch

    make_deterministic(args.seed, args.threads)
    started = time.perf_counter()
    train_novels, _ = split_novels(read_novels(Path(args.data)), args.holdout)
    checkpoint = Path(args.checkpoint)
    tokenizer = train_tokenizer([n["text"] for n in train_novels] + passkey_texts(), args.vocab_size, checkpoint)
    stream = text_stream(tokenizer, train_novels)
    tokenizer_seconds = time.perf_counter() - started
    log(f"[train] tokenizer: {len(tokenizer)} pieces; {len(stream)} training tokens from "
        f"{', '.join(n['title'] for n in train_novels)}; {tokenizer_seconds:.1f} s")

    model = build_model(tokenizer, args.hidden, args.layers, args.heads).to(args.train_device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    batches = Batches(tokenizer, stream, args.window, args.batch_size, args.passkey_fraction, args.seed,
                      args.passkey_min_length)
    # fixed prompts from their own seed, not in the training stream, at the full window
    check_set = [passkey_example(tokenizer, random.Random(f"check-{args.seed}-{i}"), args.window, args.window)
                 for i in range(args.check_samples)] if args.check_every else []
    losses, retrieval_losses, checks, train_start, step = [], [], [], time.perf_counter(), 0
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        inputs, mask, labels, retrieval = (t.to(args.train_device) for t in batches.next())
        loss, retrieval_loss = losses_of(model, inputs, mask, labels, retrieval)
        optimizer.zero_grad(set_to_none=True)
        (loss + args.retrieval_weight * retrieval_loss if args.retrieval_weight else loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        retrieval_losses.append(retrieval_loss.item())
        if args.check_every and ((step + 1) % args.check_every == 0 or step == args.steps - 1):
            correct, n = retrieval_check(model, check_set, args.train_device)
            checks.append({"step": step + 1, "correct": correct, "n": n})
            log(f"[train] step {step + 1}: {correct}/{n} held-out passkey prompts of {args.window} tokens retrieved")
        elapsed = time.perf_counter() - train_start
        if step % args.log_every == 0 or step == args.steps - 1:
            log(f"[train] step {step}/{args.steps} loss {loss.item():.4f} retrieval loss {retrieval_loss.item():.4f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {elapsed:.0f} s")
        if max_seconds is not None and elapsed > max_seconds:
            break
        if args.save_every and max_seconds is None and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            # a snapshot part-way (deterministic too): usable if the full run is cut short
            model.save_pretrained(checkpoint / f"step{step + 1}")
            tokenizer.save_pretrained(checkpoint / f"step{step + 1}")
    train_seconds = time.perf_counter() - train_start
    steps_done = step + 1
    record = {
        "params": params, "vocab_size": len(tokenizer), "training_tokens": len(stream),
        "steps": steps_done, "tokens_per_step": args.batch_size * args.window,
        "tokens_per_second": steps_done * args.batch_size * args.window / train_seconds,
        "train_seconds": round(train_seconds, 1), "tokenizer_seconds": round(tokenizer_seconds, 1),
        "final_loss": losses[-1], "mean_loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "losses_every_50": losses[::50], "retrieval_losses_every_50": retrieval_losses[::50],
        "retrieval_checks": checks, "recipe": recipe(args), "software": software(),
    }
    if max_seconds is None:
        model.config.use_cache = True
        model.to("cpu").save_pretrained(checkpoint)
        (checkpoint / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        log(f"[train] saved {params} parameters to {checkpoint} after {train_seconds:.0f} s of training")
    return record


def software() -> dict:
    import platform

    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine()}


def recipe(args) -> dict:
    keys = ("window", "steps", "batch_size", "hidden", "layers", "heads", "vocab_size", "lr", "seed",
            "passkey_fraction", "passkey_min_length", "retrieval_weight", "threads", "holdout", "train_device")
    return {key: getattr(args, key) for key in keys}


# -- evaluation ---------------------------------------------------------------------------

def heldout_documents(holdout: dict, tokenizer, num_docs: int, tokens: int) -> list[dict]:
    """The held-out novel cut into ``num_docs`` consecutive pieces of at least ``tokens`` tokens each."""
    ids = tokenizer(holdout["text"], add_special_tokens=False, return_offsets_mapping=True)
    offsets = ids["offset_mapping"]
    piece = len(offsets) // num_docs
    if piece < tokens + 64:
        raise ValueError(f"--eval-docs {num_docs}: {holdout['title']!r} has {len(offsets)} tokens, too few for "
                         f"{num_docs} pieces of {tokens}+ tokens; use fewer documents.")
    docs = []
    for i in range(num_docs):
        start, end = offsets[i * piece][0], offsets[min((i + 1) * piece, len(offsets)) - 1][1]
        docs.append({"title": f"{holdout['title']} part {i + 1}", "text": holdout["text"][start:end].strip()})
    return docs


def lengths_of(window: int) -> list[int]:
    return [window * k for k in (1, 2, 4, 8)]


def wilson(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of ``correct`` out of ``n`` (the report's, lmeval_ctx.report.statistics)."""
    from lmeval_ctx.report.statistics import wilson_interval

    return (float("nan"), float("nan")) if n == 0 else wilson_interval(correct / n, n)


def run_cli(command: list[str], log=print) -> None:
    """Run ``python -m lmeval_ctx <subcommand> ...``; a failure names the subcommand."""
    log("[eval] $ " + " ".join(command))
    completed = subprocess.run(command, cwd=REPO)
    if completed.returncode != 0:
        raise RuntimeError(f"lmeval-ctx {command[3]} exited with status {completed.returncode}")


def evaluate(args, log=print) -> dict:
    """``lmeval-ctx sweep`` then ``lmeval-ctx report``; returns the measured table."""
    from transformers import AutoTokenizer

    checkpoint, run_dir = Path(args.checkpoint), Path(args.run_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    _, holdout = split_novels(read_novels(Path(args.data)), args.holdout)
    lengths = lengths_of(args.window)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "sweep", run_dir / "report"):
        # results of an earlier evaluation (maybe of an earlier model at the same path): the sweep
        # would take its finished points as done, so every evaluation starts afresh
        shutil.rmtree(stale, ignore_errors=True)
    corpus = run_dir / "heldout.jsonl"
    docs = heldout_documents(holdout, tokenizer, args.eval_docs, max(lengths))
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    metadata = {"lengths": lengths, "num_samples": args.passkey_samples, "depths": args.depths,
                args.corpus_key: str(corpus)}
    model_args = (f"pretrained={checkpoint},original_max_length={args.window},max_length={max(lengths)},"
                  f"dtype=float32")
    factors = ",".join(f"{f:g}" for f in args.factors)
    cli = [sys.executable, "-m", "lmeval_ctx"]
    common = ["--model_args", model_args, "--tasks", "passkey_custom,longppl", "--metadata", json.dumps(metadata),
              "--log_samples", "--batch_size", str(args.eval_batch_size), "--device", args.device, "--output_path", str(run_dir / "sweep")]
    started = time.perf_counter()
    run_cli(cli + ["sweep", "--methods", "none," + ",".join(METHODS_WITH_FACTOR), "--factor", factors] + common, log)
    # dynamic NTK-ALiBi takes its scale from each input's length and no factor: one point, its window
    # the max_length of the model args
    run_cli(cli + ["sweep", "--methods", "dynamic_ntk"] + common, log)
    sweep_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report_dir = run_dir / "report"
    report_error = None
    try:
        run_cli(cli + ["report", str(run_dir / "sweep"), "--output", str(report_dir)], log)
    except RuntimeError as error:  # the measured table is still worth keeping; the failure is recorded
        report_error = f"{error}; the files it wrote before failing are kept"
        log(f"[eval] lmeval-ctx report failed: {report_error}")
    report_seconds = time.perf_counter() - started
    table = collect(run_dir / "sweep", lengths)
    return {"lengths": lengths, "passkey_samples_per_length": args.passkey_samples, "depths": args.depths,
            "heldout": {"title": holdout["title"], "documents": len(docs)},
            "sweep_seconds": round(sweep_seconds, 1), "report_seconds": round(report_seconds, 1),
            "report_dir": in_repository(report_dir), "report_error": report_error, "rows": table}


def collect(sweep_dir: Path, lengths: list[int]) -> list[dict]:
    """Per sweep point: passkey correct/n with Wilson intervals (from the logged samples) and perplexity."""
    rows = []
    for point in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        results = sorted(point.rglob("results_*.json"))
        if not results:
            continue
        merged: dict = {}
        seconds = 0.0
        for path in results:
            loaded = json.loads(path.read_text())
            merged.update(loaded.get("results", {}))
            seconds += float(loaded.get("total_evaluation_time_seconds", 0.0))
        method, _, factor = point.name.partition("_x")
        row = {"point": point.name, "method": method, "factor": float(factor) if factor else None,
               "evaluation_seconds": round(seconds, 1), "passkey": {}, "token_perplexity": {}}
        counts = {length: [0, 0] for length in lengths}
        by_depth: dict = {}
        for samples in point.rglob("samples_passkey_*.jsonl"):
            for line in samples.read_text().splitlines():
                record = json.loads(line)
                length = int(record["doc"]["length"])
                # the per-length tasks name the sample's metric acc@<length> (plain acc in older versions)
                score = record.get(f"acc@{length}", record.get("acc"))
                if score is None:
                    raise ValueError(f"{samples}: a passkey sample without acc@{length}; keys {sorted(record)}")
                counts[length][0] += int(score == 1.0)
                counts[length][1] += 1
                cell = by_depth.setdefault(f"{length}@{float(record['doc']['depth']):.2f}", [0, 0])
                cell[0] += int(score == 1.0)
                cell[1] += 1
        for length in lengths:
            correct, n = counts[length]
            low, high = wilson(correct, n)
            row["passkey"][str(length)] = {"correct": correct, "n": n, "acc": correct / n if n else None,
                                           "wilson95": [round(low, 3), round(high, 3)]}
            ppl = merged.get("longppl", {}).get(f"token_perplexity@{length},none")
            row["token_perplexity"][str(length)] = ppl
        # correct/n per length and needle depth ("1024@0.33": the needle a third into the filler)
        row["passkey_by_depth"] = dict(sorted(by_depth.items(), key=lambda kv: (int(kv[0].split("@")[0]), kv[0])))
        rows.append(row)
    order = ["none", "pi", "ntk", "dynamic_ntk"]
    return sorted(rows, key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order),
                                       r["factor"] or 0.0))


def markdown_table(rows: list[dict], lengths: list[int]) -> str:
    head = ["method", "factor"] + [f"passkey@{n}" for n in lengths] + [f"ppl@{n}" for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], "" if row["factor"] is None else f"{row['factor']:g}"]
        for n in lengths:
            p = row["passkey"][str(n)]
            cells.append(f"{p['correct']}/{p['n']} [{p['wilson95'][0]:.2f}, {p['wilson95'][1]:.2f}]")
        cells += ["" if row["token_perplexity"][str(n)] is None else f"{row['token_perplexity'][str(n)]:.2f}"
                  for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def copy_plots(report_dir: Path, image_dir: Path) -> list[str]:
    image_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for png in sorted(report_dir.glob("*.png")):
        target = image_dir / f"alibi_{png.name}"
        shutil.copyfile(png, target)
        copied.append(in_repository(target))
    return copied


# -- command line -------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["probe", "train", "eval", "all"],
                        help="probe: tokens/s for --seconds; train; eval (sweep + report); all: train then eval")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="the Austen novels (JSON lines: title, text; .jsonl or .jsonl.gz)")
    parser.add_argument("--holdout", default=DEFAULT_HOLDOUT, help="title of the novel kept for evaluation")
    parser.add_argument("--checkpoint", default=str(DEFAULT_WORK / "model"), help="where the model is written")
    parser.add_argument("--run-dir", default=str(DEFAULT_WORK), help="sweep results and report go here")
    parser.add_argument("--result", default=str(REPO / "benchmarks" / "alibi_extrapolation_result.json"))
    parser.add_argument("--images", default=str(REPO / "docs" / "img"),
                        help="the report's PNGs are copied here as alibi_*.png")
    parser.add_argument("--window", type=int, default=256, help="training context (tokens)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-device", default="cpu",
                        help="where to train: cpu (the recipe's), cuda, or auto (cuda when available); weights "
                             "differ between devices")
    parser.add_argument("--passkey-fraction", type=float, default=0.75,
                        help="share of each batch that is passkey prompts")
    parser.add_argument("--passkey-min-length", type=int, default=170,
                        help="passkey training prompts are between this and --window tokens long")
    parser.add_argument("--retrieval-weight", type=float, default=1.0,
                        help="weight of the mean loss over the tokens that repeat a pass key, added to the mean "
                             "loss over all tokens (0: the plain language-model loss)")
    parser.add_argument("--check-every", type=int, default=250,
                        help="every N steps, count held-out passkey prompts at the window retrieved (0: never)")
    parser.add_argument("--check-samples", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=0, help="also save a snapshot every N steps (0: never)")
    parser.add_argument("--seconds", type=float, default=30.0, help="probe: how long to train")
    parser.add_argument("--factors", default="2,4,8", help="factors of pi and ntk (comma-separated)")
    parser.add_argument("--passkey-samples", type=int, default=48, help="passkey prompts per length")
    parser.add_argument("--depths", type=int, default=4, help="needle depths, evenly spaced over [0, 1]")
    parser.add_argument("--eval-docs", type=int, default=4, help="held-out pieces scored by longppl")
    parser.add_argument("--eval-batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="evaluation device (lm-eval's --device)")
    parser.add_argument("--corpus-key", default="corpus_files",
                        help="the longppl --metadata key naming a local corpus file")
    args = parser.parse_args(argv)
    if args.train_device == "auto":
        import torch

        args.train_device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        args.factors = [float(f) for f in args.factors.split(",") if f.strip()]
    except ValueError:
        parser.error(f"--factors {args.factors!r}: give numbers, e.g. 2,4,8")
    if args.retrieval_weight < 0:
        parser.error(f"--retrieval-weight must be >= 0; got {args.retrieval_weight}")
    if args.check_every < 0:
        parser.error(f"--check-every must be >= 0; got {args.check_every}")
    for name in ("window", "steps", "batch_size", "hidden", "layers", "heads", "threads", "passkey_samples",
                 "eval_docs", "depths", "check_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.stage == "probe":
        args.checkpoint = str(Path(args.run_dir) / "probe")
        record = train(args, max_seconds=args.seconds)
        print(json.dumps({k: v for k, v in record.items() if k != "losses_every_50"}, indent=1))
        return 0
    result_path = Path(args.result)
    result = json.loads(result_path.read_text()) if result_path.is_file() and args.stage == "eval" else {}
    if args.stage in ("train", "all"):
        result = {"training": train(args)}
        result_path.write_text(json.dumps(result, indent=1) + "\n")
    if args.stage in ("eval", "all"):
        if "training" not in result:
            result["training"] = json.loads((Path(args.checkpoint) / "training.json").read_text())
        evaluation = evaluate(args)
        evaluation["images"] = copy_plots(Path(args.run_dir) / "report", Path(args.images))
        result["evaluation"] = evaluation
        result_path.write_text(json.dumps(result, indent=1) + "\n")
        print(markdown_table(evaluation["rows"], evaluation["lengths"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
