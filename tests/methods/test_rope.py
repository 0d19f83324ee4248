"""RoPE methods against the formulas of docs/methods.md and transformers' own code."""

import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lmeval_ctx.methods.catalog import canonical_method, validate_factor
from lmeval_ctx.methods.rope import ROPE_METHODS, base_rope_parameters, ntk_rope_theta, validate_rope_options

THETA, HEAD_DIM, L = 10000.0, 64, 2048


def llama_config(rope_parameters: dict) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=HEAD_DIM * 4, num_attention_heads=4, max_position_embeddings=L, rope_parameters=rope_parameters
    )


def transformers_inv_freq(params: dict, seq_len=None) -> tuple[torch.Tensor, float]:
    config = llama_config(params)
    rope_type = params["rope_type"]
    if rope_type == "default":
        inv = 1.0 / (params["rope_theta"] ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float) / HEAD_DIM))
        return inv, 1.0
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)


def formula_theta(theta=THETA, d=HEAD_DIM) -> torch.Tensor:
    """theta_j = b^(-2j/d), j = 0 .. d/2-1, in float64."""
    return theta ** (-2.0 * torch.arange(d // 2, dtype=torch.float64) / d)


# LongRoPE's lists for HEAD_DIM / 2 frequencies: short ones 1 (as Phi-3's nearly are), long ones
# rising to the factor 4 over the low frequencies
LONGROPE_OPTIONS = {"short_factor": [1.0] * (HEAD_DIM // 2),
                    "long_factor": [1.0 + 3.0 * j / (HEAD_DIM // 2 - 1) for j in range(HEAD_DIM // 2)]}


def scaled(method: str, factor: float, options=None) -> dict:
    options = {**(LONGROPE_OPTIONS if method == "longrope" else {}), **(options or {})}
    return ROPE_METHODS[method]({"rope_theta": THETA}, factor, L, HEAD_DIM, options)


def test_none_writes_nothing_and_is_default_rope():
    from lmeval_ctx.extension.request import apply_to_config, resolve_extension

    config = llama_config({"rope_type": "default", "rope_theta": THETA})
    own = dict(config.rope_parameters)
    apply_to_config(config, resolve_extension(config, scaling="none"))
    assert config.rope_parameters == own
    inv, att = transformers_inv_freq(config.rope_parameters)
    torch.testing.assert_close(inv.double(), formula_theta(), rtol=1e-6, atol=0)
    assert att == 1.0


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 8.5])
def test_pi_divides_every_frequency_by_factor(factor):
    inv, _ = transformers_inv_freq(scaled("pi", factor))
    torch.testing.assert_close(inv.double(), formula_theta() / factor, rtol=1e-6, atol=0)


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
def test_ntk_keeps_highest_frequency_and_divides_lowest_by_factor(factor):
    params = scaled("ntk", factor)
    assert params["rope_type"] == "default"
    assert params["rope_theta"] == pytest.approx(THETA * factor ** (HEAD_DIM / (HEAD_DIM - 2)))
    inv, _ = transformers_inv_freq(params)
    j = torch.arange(HEAD_DIM // 2, dtype=torch.float64)
    expected = formula_theta() * factor ** (-2 * j / (HEAD_DIM - 2))  # theta'_j = theta_j * s^(-2j/(d-2))
    torch.testing.assert_close(inv.double(), expected, rtol=1e-5, atol=0)
    assert inv[0].item() == pytest.approx(1.0)
    assert (formula_theta()[-1] / inv[-1].double()).item() == pytest.approx(factor, rel=1e-5)


def test_ntk_uses_the_rotary_dimension_not_the_head_dimension():
    # GPT-NeoX/Pythia rotate 25% of a 64-wide head: d = 16
    assert ntk_rope_theta(THETA, 4.0, 16) == pytest.approx(THETA * 4.0 ** (16 / 14))
    assert ntk_rope_theta(THETA, 4.0, 16) != pytest.approx(ntk_rope_theta(THETA, 4.0, 64))
    with pytest.raises(ValueError, match="rotary dimension"):
        ntk_rope_theta(THETA, 2.0, 2)


@pytest.mark.parametrize("length", [L // 2, L, 3 * L, 8 * L])
def test_dynamic_ntk_matches_formula_at_current_length(length):
    factor = 4.0
    params = scaled("dynamic_ntk", factor)
    inv, _ = transformers_inv_freq(params, seq_len=length)
    d = HEAD_DIM
    base = THETA if length <= L else THETA * ((factor * length / L) - (factor - 1)) ** (d / (d - 2))
    torch.testing.assert_close(inv.double(), formula_theta(base), rtol=1e-5, atol=0)


def yarn_formula(factor: float, alpha=1.0, beta=32.0) -> torch.Tensor:
    """methods.md: gamma_j = clamp((r_j - alpha)/(beta - alpha), 0, 1), r_j = L / lambda_j."""
    theta = formula_theta()
    r = L / (2 * math.pi / theta)
    gamma = ((r - alpha) / (beta - alpha)).clamp(0, 1)
    return (1 - gamma) * theta / factor + gamma * theta, gamma


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
def test_yarn_matches_formula_outside_the_ramp_and_is_monotone_inside(factor):
    params = scaled("yarn", factor)
    assert params == {"rope_theta": THETA, "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": L}
    inv, attention = transformers_inv_freq(params)
    expected, gamma = yarn_formula(factor)
    plain = (gamma == 0) | (gamma == 1)
    # Outside the ramp both agree: interpolated (PI) low frequencies, untouched high ones.
    torch.testing.assert_close(inv.double()[plain], expected[plain], rtol=1e-5, atol=0)
    # Inside, transformers ramps linearly over the dimension index (the YaRN reference code),
    # methods.md linearly in r_j; both stay between the PI and the unscaled frequency.
    theta = formula_theta()
    inside = ~plain
    assert inside.any()
    assert torch.all(inv.double()[inside] <= theta[inside] * (1 + 1e-6))
    assert torch.all(inv.double()[inside] >= theta[inside] / factor * (1 - 1e-6))
    assert attention == pytest.approx(0.1 * math.log(factor) + 1)


def test_yarn_options_pass_through():
    params = scaled("yarn", 4.0, {"beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.5})
    assert (params["beta_fast"], params["beta_slow"], params["attention_factor"]) == (16.0, 2.0, 1.5)
    inv_default, _ = transformers_inv_freq(scaled("yarn", 4.0))
    inv, attention = transformers_inv_freq(params)
    assert attention == 1.5
    assert not torch.allclose(inv, inv_default)


def test_base_parameters_drop_an_existing_scaling():
    shipped = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "partial_rotary_factor": 0.5}
    assert base_rope_parameters(shipped) == {"rope_theta": 5e5, "partial_rotary_factor": 0.5}


@pytest.mark.parametrize("spelling, canonical", [
    ("none", "none"), (None, "none"), ("PI", "pi"), ("linear", "pi"), ("ntk", "ntk"),
    ("dynamic", "dynamic_ntk"), ("dynamic_ntk", "dynamic_ntk"), ("yarn", "yarn"), ("ntk_alibi", "ntk"),
])
def test_method_spellings(spelling, canonical):
    assert canonical_method(spelling) == canonical


def test_bad_method_and_factor_messages():
    with pytest.raises(ValueError, match=r"scaling='rope_magic'.*none, pi, ntk, dynamic_ntk, yarn"):
        canonical_method("rope_magic")
    with pytest.raises(ValueError, match="ntk_alibi.*RoPE"):
        canonical_method("ntk_alibi", family="rope")
    with pytest.raises(ValueError, match="yarn.*ALiBi"):
        canonical_method("yarn", family="alibi")
    with pytest.raises(ValueError, match=r"factor=0.5 must be .*>= 1"):
        validate_factor(0.5)
    with pytest.raises(ValueError, match="factor='four' is not a number"):
        validate_factor("four")
    with pytest.raises(ValueError, match="must be a finite"):
        validate_factor(float("inf"))
    assert validate_factor("2") == 2.0


def test_rope_option_validation():
    with pytest.raises(ValueError, match="only apply to scaling=yarn"):
        validate_rope_options("pi", {"beta_fast": 32})
    with pytest.raises(ValueError, match="beta_fast=1 must be larger than beta_slow=2"):
        validate_rope_options("yarn", {"beta_fast": 1, "beta_slow": 2})
    with pytest.raises(ValueError, match="attention_factor=-1 must be > 0"):
        validate_rope_options("yarn", {"attention_factor": -1})


def test_every_registered_method_changes_the_frequencies():
    """The registry holds the seven rescalings, and each slows the lowest frequency (the longest
    wavelength grows with the context) as transformers computes it from the written parameters;
    none raises a frequency. scaling=none writes nothing and has no entry. Dynamic NTK changes
    nothing up to the trained length, and LongRoPE takes its long factors beyond it, so they are
    read at four times that length."""
    assert set(ROPE_METHODS) == {"pi", "ntk", "dynamic_ntk", "yarn", "llama3", "ntk_by_parts", "longrope"}
    theta = formula_theta()
    for method in ROPE_METHODS:
        inv, _ = transformers_inv_freq(scaled(method, 4.0), seq_len=4 * L)
        inv = inv.double()
        assert inv[-1] <= theta[-1] / 2, f"{method} leaves the lowest frequency at {inv[-1] / theta[-1]:.3f} x"
        assert torch.all(inv <= theta * (1 + 1e-6)), f"{method} raises a frequency"


# Who each RoPE method is due to, written out here: its function's docstring names it, and the
# module docstring cites the paper by its arXiv number where there is one (as docs/methods.md does).
AUTHORS = {"pi": "Chen et al. 2023", "ntk": "bloc97", "dynamic_ntk": "emozilla", "yarn": "Peng et al. 2023",
           "llama3": "Llama 3.1", "ntk_by_parts": "bloc97", "longrope": "Ding et al. 2024"}
PAPERS = {"pi": "2306.15595", "yarn": "2309.00071", "ntk_by_parts": "2309.00071", "longrope": "2402.13753"}


def test_the_docstrings_cite_the_repository_and_the_papers():
    import re
    from pathlib import Path

    import lmeval_ctx.methods.rope as rope

    assert set(AUTHORS) == set(ROPE_METHODS), "a new method needs its citation in AUTHORS"
    uncited = {method: function.__name__ for method, function in ROPE_METHODS.items()
               if AUTHORS[method] not in (function.__doc__ or "")}
    assert not uncited, f"these methods' docstrings do not name their authors: {uncited}"
    repository = Path(__file__).resolve().parents[2]
    cited_files = re.findall(r"\b(docs/[\w/.-]+\.md)", rope.__doc__)
    assert "docs/methods.md" in cited_files and "shared/" not in rope.__doc__
    assert all((repository / path).is_file() for path in cited_files), cited_files
    methods_md = (repository / "docs" / "methods.md").read_text()
    for method, number in PAPERS.items():
        assert f"arXiv:{number}" in rope.__doc__, f"{method}: arXiv:{number} is not cited"
        assert f"arXiv {number}" in methods_md, f"{method}: docs/methods.md does not cite arXiv {number}"


def llama3_formula(factor: float, low: float, high: float) -> torch.Tensor:
    """Llama 3.1: wavelengths below L/high kept, above L/low divided by factor, and between them
    theta' = (1 - m) theta/factor + m theta with m = (L/wavelength - low)/(high - low)."""
    theta = formula_theta()
    wavelength = 2 * math.pi / theta
    smooth = ((L / wavelength - low) / (high - low))
    ramp = (1 - smooth) * theta / factor + smooth * theta
    return torch.where(wavelength < L / high, theta, torch.where(wavelength > L / low, theta / factor, ramp))


@pytest.mark.parametrize("factor, options, low, high", [(8.0, {}, 1.0, 4.0),
                                                        (4.0, {"low_freq_factor": 2.0, "high_freq_factor": 8.0}, 2.0, 8.0)])
def test_llama3_matches_transformers_and_the_formula(factor, options, low, high):
    params = scaled("llama3", factor, options)
    assert params == {"rope_theta": THETA, "rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                      "high_freq_factor": high, "original_max_position_embeddings": L}
    inv, attention = transformers_inv_freq(params)
    torch.testing.assert_close(inv.double(), llama3_formula(factor, low, high), rtol=1e-5, atol=0)
    assert attention == 1.0


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_ntk_by_parts_is_yarns_frequencies_without_its_temperature(factor):
    options = {"beta_fast": 16.0, "beta_slow": 2.0}
    params = scaled("ntk_by_parts", factor, options)
    assert params["rope_type"] == "yarn" and params["attention_factor"] == 1.0
    inv, attention = transformers_inv_freq(params)
    yarn_inv, yarn_attention = transformers_inv_freq(scaled("yarn", factor, options))
    torch.testing.assert_close(inv, yarn_inv, rtol=0, atol=0)
    assert attention == 1.0 and yarn_attention == pytest.approx(0.1 * math.log(factor) + 1)


@pytest.mark.parametrize("method", ["none", "ntk", "pi", "rerope"])
def test_rope_theta_override_applies_before_the_method(method):
    from lmeval_ctx.extension.request import apply_to_config, resolve_extension

    config = llama_config({"rope_type": "default", "rope_theta": THETA})
    request = {"scaling": method, "rope_theta": 500_000.0}
    if method in ("ntk", "pi"):
        request["factor"] = 4
    if method == "rerope":
        request["window"] = 256
    apply_to_config(config, resolve_extension(config, **request))
    written = config.rope_parameters
    if method == "ntk":
        assert written["rope_theta"] == pytest.approx(500_000.0 * 4 ** (HEAD_DIM / (HEAD_DIM - 2)))
    else:
        assert written["rope_theta"] == 500_000.0
    assert written["rope_type"] == {"none": "default", "ntk": "default", "pi": "linear", "rerope": "default"}[method]


def test_new_rope_option_validation():
    with pytest.raises(ValueError, match=r"high_freq_factor=2 must be larger than low_freq_factor=2"):
        validate_rope_options("llama3", {"low_freq_factor": 2, "high_freq_factor": 2})
    with pytest.raises(ValueError, match="low_freq_factor only apply to scaling=llama3, not scaling=yarn"):
        validate_rope_options("yarn", {"low_freq_factor": 1})
    with pytest.raises(ValueError, match="attention_factor only apply to scaling=yarn or longrope, not "
                                         "scaling=ntk_by_parts"):
        validate_rope_options("ntk_by_parts", {"attention_factor": 1})
    with pytest.raises(ValueError, match="rope_theta=0 must be > 0"):
        validate_rope_options("pi", {"rope_theta": 0})
    validate_rope_options("pi", {"rope_theta": 1e6, "logn": True})  # modifiers combine with every method


@pytest.mark.parametrize("length", [L, L + 1, 4 * L])
def test_longrope_matches_the_formula_short_within_and_long_beyond_the_original_length(length):
    """theta'_j = theta_j / lambda_j, lambda the short list up to the original length and the long one
    beyond (transformers' rule, Phi-3's); cos/sin scaled by sqrt(1 + ln s / ln L) unless given."""
    params = scaled("longrope", 4.0)
    assert params == {"rope_theta": THETA, "rope_type": "longrope", "factor": 4.0,
                      "original_max_position_embeddings": L, **LONGROPE_OPTIONS}
    inv, attention = transformers_inv_freq(params, seq_len=length)
    lists = LONGROPE_OPTIONS["long_factor" if length > L else "short_factor"]
    expected = formula_theta() / torch.tensor(lists, dtype=torch.float64)
    torch.testing.assert_close(inv.double(), expected, rtol=1e-6, atol=0)
    assert attention == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(L)))
    _, given = transformers_inv_freq(scaled("longrope", 4.0, {"attention_factor": 1.5}), seq_len=length)
    assert given == 1.5


def test_longrope_lists_must_fit_the_rotary_dimension():
    with pytest.raises(ValueError, match=r"short_factor has 3 numbers, but this model rotates 64 dimensions per "
                                         r"head.*rotary_dim / 2 = 32"):
        scaled("longrope", 2.0, {"short_factor": [1.0, 1.0, 1.0]})
    validate_rope_options("longrope", {"short_factor": "1;2", "long_factor": [1, 2], "longrope_factors": "x.json"})
