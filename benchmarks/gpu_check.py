"""The prepared GPU check (issue 21, item 5): every method on tiny models in bfloat16 on CUDA, against float32.

Runs through the package's Python API only (``lmeval_ctx.extension.lifecycle.extend`` applies a
method to a built model, ``lmeval_ctx.scoring.logprobs`` scores it as ``ctx-hf`` does); it needs torch
and transformers, not lm-eval, and no network: the models are built from a seed.

Models (random weights, seed ``--seed``; trained length ``TRAINED`` = 2,048 tokens):

- ``llama``: SmolLM2-135M's geometry (hidden 576, 9 heads, 3 key/value heads, RoPE base 100,000)
  with 2 layers and a 4,096-token vocabulary (SmolLM2's GGUF file, 98 MB, is over the 64 MiB that
  travels to a GPU machine, and its 30 layers would not fit the time): the RoPE and attention-level methods;
- ``bloom``, ``mpt``, ``falcon``: tiny ALiBi models (hidden 64, 8 heads, 2 layers): the ALiBi methods.

For each model, length (8k and 32k by default; ``--lengths`` adds 16k where time allows) and method (``none`` first), on one random sequence:

- bfloat16 on the device, timed on its second run (the first compiles), peak memory
  (``torch.cuda.max_memory_allocated``), against float32 on the same device with TF32 off:
  per-position target log-probabilities, ``mean_abs`` their mean absolute difference, ``growth`` the
  mean over the last 512 positions over that over the first 512 (position-exact: flat);
- ``cpu_check``: at ``--cpu-length`` (4,096), float32 on the device against float32 on the CPU with
  the block engine (an independent code path): the relative difference of the summed log-probabilities;
- the engine the record names (``attention_engine``), the time against ``none``.

Tolerances (``TOLERANCES``): ``mean_abs`` at most 0.05 nats, ``growth`` at most 1.5 (issue 21's
criterion), float32 device against CPU at most 1e-4 relative; once per model, on CUDA, the slice loop
of sliced scoring makes no synchronising call (``torch.cuda.set_sync_debug_mode("error")``).

    python benchmarks/gpu_check.py --output gpu_check_result.json        # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --output /tmp/dry.json      # on CPU, tiny lengths, seconds

``--budget-s`` (420) stops starting new cases once spent, so the run ends within 8 minutes; the
cases not run are listed. Exit status 1 when any case is outside its tolerance. docs/gpu.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from lmeval_ctx.extension.lifecycle import ExtensionRequest, extend
from lmeval_ctx.methods.catalog import METHODS
from lmeval_ctx.scoring import logprobs as scoring

TRAINED = 2048  # the original_max_length every method extends from (the dry run's: DRY_TRAINED)
DRY_TRAINED = 64
TOLERANCES = {"mean_abs": 0.05, "growth": 1.5, "cpu_relative": 1e-4}
EDGE = 512  # positions at each end compared for growth
VOCAB = 4096


def method_options(method: str, trained: int, config, factor: float) -> dict:
    """The options a method needs beyond its factor, in proportion to the trained length (e.g. ReRoPE's
    window); LongRoPE's factor lists one per rotary frequency: 1 for the short, a ramp to ``factor`` for the long."""
    quarter = trained // 4
    if method == "longrope":
        half = config.hidden_size // config.num_attention_heads // 2
        ramp = [1 + (factor - 1) * i / (half - 1) for i in range(half)]
        return {"short_factor": ";".join(["1.0"] * half), "long_factor": ";".join(f"{x:.4f}" for x in ramp)}
    return {"rerope": {"window": quarter}, "leaky_rerope": {"window": quarter},
            # the smallest group that keeps every distance inside the trained window: (L - w) * G + w >= length
            "self_extend": {"group_size": math.ceil((factor * trained - quarter) / (trained - quarter)) + 1,
                            "neighbor_window": quarter}}.get(method, {})


def model_configs(dry_run: bool, trained: int) -> dict:
    """name -> (family, config) of the models checked; the dry run's Llama is as tiny as the ALiBi ones."""
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.05)
    llama = (dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
             if dry_run else dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                                  num_key_value_heads=3, rope_theta=100000.0))
    return {
        "llama": ("rope", transformers.LlamaConfig(num_hidden_layers=2, max_position_embeddings=trained,
                                                   **llama, **common)),
        "bloom": ("alibi", transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=8, **common)),
        "mpt": ("alibi", transformers.MptConfig(d_model=64, n_layers=2, n_heads=8, max_seq_len=trained, **common)),
        "falcon": ("alibi", transformers.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                                      alibi=True, new_decoder_architecture=False,
                                                      multi_query=False, max_position_embeddings=trained,
                                                      **common)),
    }


def methods_for(family: str) -> list[str]:
    """Every method of the catalog that applies to the family, ``none`` first."""
    return [name for name, method in METHODS.items() if family in method.families]


def build(config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = copy.deepcopy(config)
    config._attn_implementation = "sdpa" if config.model_type == "llama" else "eager"
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def apply(model, method: str, length: int, trained: int, engine: str | None, previous):
    """``method`` on ``model`` at window ``length`` (factor ``length / trained``), as ctx-hf's model args would.

    Dynamic NTK-ALiBi takes no factor (each input's own length sets its scale)."""
    arguments = {"scaling": method, "original_max_length": trained,
                 **method_options(method, trained, model.config, length / trained)}
    alibi_dynamic = METHODS[method].length_dependent and model.config.model_type in ("bloom", "mpt", "falcon")
    if METHODS[method].takes_factor and not alibi_dynamic:
        arguments["factor"] = length / trained
    request = ExtensionRequest.from_model_args(arguments, max_length=length,
                                               **({"attention_engine": engine} if engine else {}))
    return extend(model.config, request.arguments, model=model, previous=previous,
                  alibi_options=request.alibi_options)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score(model, ids: torch.Tensor) -> dict:
    """Per-position log-probabilities of ``ids[1:]`` (float64, host) as ctx-hf scores them, timed, peak memory."""
    device, targets = ids.device, ids[:, 1:].cpu()  # on the host, as ctx-hf makes them
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.no_grad():
        hidden = scoring.final_hidden_states(model, ids[:, :-1])[0]
        log_probs, _ = scoring.target_logprobs(scoring.output_layer(model), hidden, targets)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"log_probs": log_probs[0], "seconds": time.perf_counter() - started, "peak_bytes": peak}


def no_host_sync(model, ids: torch.Tensor) -> str | bool:
    """True when sliced scoring's slice loop makes no synchronising call on CUDA (else the error); a string off CUDA."""
    if ids.device.type != "cuda":
        return "not checked: no CUDA device"
    with torch.no_grad():
        hidden = scoring.final_hidden_states(model, ids[:, :-1])[0]
        targets = ids[:, 1:].clone()
        torch.cuda.synchronize(ids.device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            scoring.sliced_logprobs(scoring.output_layer(model), hidden, targets)
        except RuntimeError as error:
            return f"synchronising call: {error}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return True


def compare(half: torch.Tensor, full: torch.Tensor) -> dict:
    """bfloat16's per-position log-probabilities against float32's."""
    error = (half - full).abs()
    edge = min(EDGE, error.numel() // 4)
    first, last = float(error[:edge].mean()), float(error[-edge:].mean())
    return {"mean_abs": float(error.mean()), "first_mean_abs": first, "last_mean_abs": last,
            "growth": last / first if first > 0 else None,
            "relative_sum": float((half.sum() - full.sum()).abs() / full.sum().abs())}


def check_case(models: dict, method: str, length: int, ids: torch.Tensor, options, states: dict) -> dict:
    """One method at one length: bfloat16 (twice: the second run timed) and float32 on the device."""
    row: dict = {"method": method, "length": length, "factor": length / options.trained}
    runs = {}
    for dtype_name, model in models.items():
        states[dtype_name] = apply(model, method, length, options.trained, options.engine, states.get(dtype_name))
        if dtype_name == "bfloat16":
            score(model, ids)  # warm-up: compiles FlexAttention's kernels for this shape
        runs[dtype_name] = score(model, ids)
    record = states["bfloat16"].record or {}
    row["attention_engine"] = record.get("attention_engine")
    row.update({f"{name}_seconds": run["seconds"] for name, run in runs.items()})
    row["peak_bytes"] = runs["bfloat16"]["peak_bytes"]
    row.update(compare(runs["bfloat16"]["log_probs"], runs["float32"]["log_probs"]))
    return row


def cpu_check(models: dict, cpu_model, method: str, length: int, ids: torch.Tensor, options, states: dict) -> dict:
    """float32 on the device against float32 on the CPU with the block engine, at ``length``."""
    states["float32"] = apply(models["float32"], method, length, options.trained, options.engine, states.get("float32"))
    states["cpu"] = apply(cpu_model, method, length, options.trained, "blocks", states.get("cpu"))
    device_sum = float(score(models["float32"], ids)["log_probs"].sum())
    cpu_sum = float(score(cpu_model, ids.cpu())["log_probs"].sum())
    return {"method": method, "length": length, "device_sum": device_sum, "cpu_sum": cpu_sum,
            "relative": abs(device_sum - cpu_sum) / abs(cpu_sum)}


def verdict(row: dict, kind: str) -> list[str]:
    """The tolerances a row misses (empty when it passes)."""
    if kind == "cpu":
        return [] if row["relative"] <= TOLERANCES["cpu_relative"] else [
            f"float32 device vs CPU {row['relative']:.2e} > {TOLERANCES['cpu_relative']}"]
    problems = []
    if row["mean_abs"] > TOLERANCES["mean_abs"]:
        problems.append(f"mean_abs {row['mean_abs']:.4f} > {TOLERANCES['mean_abs']}")
    if row["growth"] is not None and row["growth"] > TOLERANCES["growth"]:
        problems.append(f"growth {row['growth']:.2f} > {TOLERANCES['growth']}")
    return problems


class Budget:
    """Wall-clock budget: no new case starts once it is spent."""

    def __init__(self, seconds: float):
        self.started, self.seconds = time.perf_counter(), seconds

    def spent(self) -> bool:
        return time.perf_counter() - self.started > self.seconds


class Checked:
    """One model under check: its float32 and bfloat16 copies on the device, their states, its results."""

    def __init__(self, name: str, family: str, config, options, device: torch.device):
        full = build(config, options.seed).to(device)
        self.config, self.device = config, device
        self.models = {"bfloat16": copy.deepcopy(full).to(torch.bfloat16), "float32": full}
        self.states: dict = {}  # per copy: the last application (its shipped fields restore the next)
        self.out: dict = {"model": name, "family": family, "rows": [], "cpu_check": [], "not_run": []}

    def check_length(self, length: int, options, budget: Budget) -> None:
        """Every method of the model's family at ``length``, ``none`` first (the times' baseline)."""
        out = self.out
        generator = torch.Generator().manual_seed(options.seed + length)
        ids = torch.randint(4, VOCAB, (1, length + 1), generator=generator).to(self.device)
        for method in methods_for(out["family"]):
            if budget.spent():
                out["not_run"].append(f"{method}@{length}")
                continue
            try:
                row = check_case(self.models, method, length, ids, options, self.states)
            except Exception as error:  # a bad request, a compile error, out of memory: recorded, never hidden
                # extend leaves config and model as they were on a bad request: the next case starts clean
                out["rows"].append({"method": method, "length": length, "error": f"{type(error).__name__}: {error}"})
                continue
            none = row if method == "none" else next((r for r in out["rows"] if r["method"] == "none"
                                                       and r["length"] == length and "error" not in r), None)
            row["time_vs_none"] = row["bfloat16_seconds"] / none["bfloat16_seconds"] if none else None
            row["problems"] = verdict(row, "device")
            out["rows"].append(row)
        if "no_host_sync_in_slices" not in out:
            out["no_host_sync_in_slices"] = no_host_sync(self.models["bfloat16"], ids)


def cpu_checks(models, config, family, options, device, budget, states) -> dict:
    """The float32 device-against-CPU rows at ``--cpu-length`` (none when 0)."""
    rows, not_run = [], []
    if not options.cpu_length:
        return {"cpu_check": rows}
    cpu_model = build(config, options.seed)
    ids = torch.randint(4, VOCAB, (1, options.cpu_length + 1),
                        generator=torch.Generator().manual_seed(options.seed + 1)).to(device)
    for method in methods_for(family):
        if budget.spent():
            not_run.append(f"cpu_check {method}@{options.cpu_length}")
            continue
        try:
            row = cpu_check(models, cpu_model, method, options.cpu_length, ids, options, states)
            row["problems"] = verdict(row, "cpu")
        except Exception as error:  # recorded as above
            row = {"method": method, "length": options.cpu_length, "error": f"{type(error).__name__}: {error}"}
        rows.append(row)
    return {"cpu_check": rows, "not_run_cpu": not_run}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny models and lengths (256, 512), block engine unless --engine: the CI test")
    parser.add_argument("--lengths", help="comma-separated token lengths (default 8192,32768; dry run 256,512)")
    parser.add_argument("--cpu-length", type=int, help="length of the float32 device-vs-CPU check (0: none)")
    parser.add_argument("--models", default="llama,bloom,mpt,falcon", help="comma-separated, of llama,bloom,mpt,falcon")
    parser.add_argument("--engine", help="attention_engine for every case (default: the package's auto)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no case after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="gpu_check_result.json")
    options = parser.parse_args(argv)
    lengths = options.lengths or ("256,512" if options.dry_run else "8192,32768")
    options.lengths = [int(x) for x in lengths.split(",")]
    if options.cpu_length is None:
        options.cpu_length = 128 if options.dry_run else 4096
    options.trained = DRY_TRAINED if options.dry_run else TRAINED
    if options.dry_run and options.engine is None:
        options.engine = "blocks"  # FlexAttention compiles for tens of seconds on CPU
    options.models = options.models.split(",")
    unknown = set(options.models) - {"llama", "bloom", "mpt", "falcon"}
    if unknown:
        parser.error(f"--models {','.join(sorted(unknown))}: not checked here; use llama, bloom, mpt, falcon")
    return options


def save(result: dict, output: str, stage: str, budget: Budget) -> None:
    """The results so far, after each stage: a hard stop (scripts/gpu_check.sh's timeout) keeps what was measured."""
    result["wall_s"] = time.perf_counter() - budget.started
    Path(output).write_text(json.dumps({**result, "complete": False}, indent=1) + "\n")
    print(f"{stage}: done at {result['wall_s']:.0f} s", flush=True)


def main(argv=None) -> int:
    options = parse(argv)
    device = torch.device("cpu" if options.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not options.dry_run:
        raise SystemExit("No CUDA device: this check is for a GPU (run --dry-run to check the script on CPU).")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 is the reference
    budget = Budget(options.budget_s)
    configs = model_configs(options.dry_run, options.trained)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "dry_run": options.dry_run, "torch": torch.__version__, "transformers": transformers.__version__,
              "python": sys.version.split()[0], "lengths": options.lengths, "trained": options.trained,
              "cpu_length": options.cpu_length, "engine": options.engine or "auto", "tolerances": TOLERANCES}
    checked = [Checked(name, *configs[name], options, device) for name in options.models]
    result["models"] = [c.out for c in checked]
    # length first: a run cut short by its budget has every model at the shorter lengths
    for length in options.lengths:
        for c in checked:
            c.check_length(length, options, budget)
        save(result, options.output, f"{length} tokens", budget)
    for c in checked:
        c.out.update(cpu_checks(c.models, c.config, c.out["family"], options, device, budget, c.states))
    save(result, options.output, "CPU check", budget)
    result["complete"] = True
    failures = [f"{m['model']} {r['method']}@{r['length']}: {r.get('error') or '; '.join(r['problems'])}"
                for m in result["models"] for r in m["rows"] + m["cpu_check"] if r.get("error") or r.get("problems")]
    failures += [f"{m['model']}: {m['no_host_sync_in_slices']}" for m in result["models"]
                 if isinstance(m.get("no_host_sync_in_slices"), str) and device.type == "cuda"]
    result["failures"], result["passed"] = failures, not failures
    Path(options.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'PASSED' if not failures else 'FAILED'}: {len(failures)} failures; {options.output}", flush=True)
    for line in failures:
        print("  " + line)
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
