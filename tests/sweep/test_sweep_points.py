"""lmeval-ctx sweep's points (lmeval_ctx/sweep/points.py): ``--methods`` items with their own parameters
(``method:key=value:...``), their validation before anything loads, and folder names that carry the parameters.
The runs: tests/e2e/test_sweep.py."""

import pytest

from lmeval_ctx.methods.catalog import METHOD_NAMES
from lmeval_ctx.sweep.points import SweepPoint, check_model_args, point_parameters, sweep_points
from lmeval_ctx.sweep.run import summary_table

GRID = "none,yarn,self_extend:group_size=4:neighbor_window=1024,self_extend:group_size=8:neighbor_window=512," \
       "rerope:window=4096"


def test_each_point_carries_its_parameters_into_its_name_and_model_args():
    points = sweep_points(GRID, "4")
    assert [p.name for p in points] == ["none", "yarn_x4", "self_extend__group_size-4__neighbor_window-1024",
                                        "self_extend__group_size-8__neighbor_window-512", "rerope__window-4096"]
    assert points[2].model_args == {"scaling": "self_extend", "group_size": 4, "neighbor_window": 1024}
    assert points[4].model_args == {"scaling": "rerope", "window": 4096}
    # attention-level methods take no factor: --factor does not multiply them
    assert [p.factor for p in points] == [None, 4.0, None, None, None]
    table = summary_table([{"point": p, "status": "done", "folder": p.name, "error": None} for p in points])
    assert "| self_extend (group_size=4, neighbor_window=1024) |  | done |" in table
    assert "| self_extend (group_size=8, neighbor_window=512) |  | done |" in table
    assert "| yarn | 4 | done |" in table


def test_names_are_deterministic_and_tell_every_setting_apart():
    # keys in any order, numbers in any spelling: one point, one name, keys sorted
    assert sweep_points("self_extend:neighbor_window=1024:group_size=4")[0].name == \
        sweep_points("self_extend:group_size=4.0:neighbor_window=1.024e3")[0].name == \
        "self_extend__group_size-4__neighbor_window-1024"
    # numbers are never rounded; booleans are true/false
    (point,) = sweep_points("leaky_rerope:window=32:leak=2.0000001")
    assert point.name == "leaky_rerope__leak-2.0000001__window-32"
    assert point.model_args["leak"] == 2.0000001 and point.model_args["window"] == 32
    assert sweep_points("none:logn=yes")[0].name == "none__logn-true"
    assert sweep_points("none:logn=yes")[0].model_args == {"scaling": "none", "logn": True}
    # a point's own factor goes where --factor's does, and that point runs at it only
    points = sweep_points("yarn,yarn:factor=8:beta_fast=64:beta_slow=2", "2,4")
    assert [p.name for p in points] == ["yarn_x2", "yarn_x4", "yarn_x8__beta_fast-64__beta_slow-2"]
    assert points[2].model_args == {"scaling": "yarn", "factor": 8.0, "beta_fast": 64, "beta_slow": 2}
    assert points[2].spec == "yarn:factor=8:beta_fast=64:beta_slow=2"
    names = [p.name for p in sweep_points("rerope:window=32,rerope:window=32.5,rerope:window=3.25e1,"
                                          "lm_infinite,lm_infinite:global_tokens=4")]
    assert names == ["rerope__window-32", "rerope__window-32.5", "lm_infinite", "lm_infinite__global_tokens-4"]
    assert all("/" not in name and " " not in name for name in names)
    # lm-eval would take a folder name ending in .json for a results file
    (point,) = sweep_points("longrope:factor=4:longrope_factors=factors.json")
    assert point.name == "longrope_x4__longrope_factors-factors.json__"


def test_equal_points_are_one_and_the_sweep_says_so():
    messages = []
    points = sweep_points("self_extend:group_size=4:neighbor_window=16,self_extend:neighbor_window=16.0:group_size=4,"
                          "yarn:factor=2,yarn,selfextend:group_size=4:neighbor_window=16", "2", log=messages.append)
    assert [p.name for p in points] == ["self_extend__group_size-4__neighbor_window-16", "yarn_x2"]
    assert messages == [
        "[sweep] self_extend:neighbor_window=16.0:group_size=4 equals point "
        "self_extend__group_size-4__neighbor_window-16, given before: one point",
        "[sweep] yarn equals point yarn_x2, given before: one point",
        "[sweep] selfextend:group_size=4:neighbor_window=16 equals point "
        "self_extend__group_size-4__neighbor_window-16, given before: one point",
    ]
    assert SweepPoint("rerope", None, (("window", 32),)) == SweepPoint("rerope", None, {"window": 32.0})


def test_a_point_takes_its_method_s_own_options_the_modifiers_and_a_factor_for_rescalings():
    """Each method's point parameters, written out by hand from docs/methods.md: its own options,
    the two modifiers every method takes (rope_theta, logn), and factor for the rescalings (not for
    none or the attention-level methods). A method added to the catalog needs its row here."""
    from lmeval_ctx.methods.catalog import METHOD_NAMES

    modifiers = {"rope_theta", "logn"}
    expected = {
        "none": modifiers,
        "pi": {"factor"} | modifiers,
        "ntk": {"factor"} | modifiers,
        "dynamic_ntk": {"factor"} | modifiers,
        "yarn": {"factor", "beta_fast", "beta_slow", "attention_factor"} | modifiers,
        "llama3": {"factor", "low_freq_factor", "high_freq_factor"} | modifiers,
        "ntk_by_parts": {"factor", "beta_fast", "beta_slow"} | modifiers,
        "rerope": {"window"} | modifiers,
        "leaky_rerope": {"window", "leak"} | modifiers,
        "self_extend": {"group_size", "neighbor_window"} | modifiers,
        "lm_infinite": {"global_tokens", "local_window"} | modifiers,
        "dual_chunk": {"chunk_size", "local_window"} | modifiers,
        "string": {"shift", "local_window"} | modifiers,
        "streaming_llm": {"n_sink", "window"} | modifiers,
        "longrope": {"factor", "short_factor", "long_factor", "longrope_factors", "attention_factor"} | modifiers,
    }
    assert set(METHOD_NAMES) == set(expected)
    assert {method: point_parameters(method) for method in METHOD_NAMES} == expected


@pytest.mark.parametrize("methods, message", [
    ("self_extend:group_sise=4", "--methods point 'self_extend:group_sise=4': self_extend has no parameter "
                                 "'group_sise' (did you mean group_size?). Parameters of self_extend: group_size, "
                                 "logn, neighbor_window, rope_theta."),
    ("rerope:leak=2", "rerope has no parameter 'leak'. Parameters of rerope: logn, rope_theta, window."),
    ("none:factor=2", "none has no parameter 'factor'. Parameters of none: logn, rope_theta."),
    ("rerope:window", "'window' is not key=value. Write a point as method:key=value:key=value"),
    ("rerope:window=", "'window=' is not key=value"),
    ("self_extend:group_size=4:group_size=8", "gives group_size twice"),
    ("yarn:beta_fast=-1", "--methods point 'yarn:beta_fast=-1': beta_fast=-1 must be > 0."),
    ("yarn:beta_fast=1:beta_slow=2", "beta_fast=1 must be larger than beta_slow=2"),
    ("llama3:factor=8:low_freq_factor=4:high_freq_factor=1",
     "high_freq_factor=1 must be larger than low_freq_factor=4"),
    ("yarn:factor=0.5", r"factor=0.5 must be a finite number >= 1"),
    ("rerope:window=nan", "window=nan is not a finite number"),
    ("rerope:window=../x", "window='../x' is neither a number nor a boolean"),
    ("rope_magic:window=4", "scaling='rope_magic' is not a known context-extension method"),
])
def test_bad_points_are_errors_naming_the_point_the_key_and_the_fix(methods, message):
    with pytest.raises(ValueError) as error:
        sweep_points(methods)
    assert message in str(error.value)


def test_a_parameter_in_model_args_and_in_a_point_is_an_error_naming_both():
    points = sweep_points("none,none:rope_theta=20000,self_extend:group_size=4:neighbor_window=16")
    with pytest.raises(ValueError) as error:
        check_model_args({"pretrained": "m", "rope_theta": 50000}, points)
    assert str(error.value).startswith("rope_theta is set in --model_args (rope_theta=50000) and in --methods point "
                                       "none:rope_theta=20000. Set it in one place")
    with pytest.raises(ValueError) as error:
        check_model_args({"pretrained": "m", "group_size": 8}, points)
    assert "group_size is set in --model_args (group_size=8) and in --methods point " \
           "self_extend:group_size=4:neighbor_window=16" in str(error.value)
    # a method's own option in --model_args cannot work: the model loads with scaling=none
    with pytest.raises(ValueError, match=r"--model_args sets window, the option\(s\) of a method.*"
                                         r"e\.g\. --methods rerope:window=<value>"):
        check_model_args({"pretrained": "m", "window": 32}, sweep_points("none,rerope"))
    # a modifier in --model_args alone applies to every point
    check_model_args({"pretrained": "m", "logn": True}, sweep_points("none,yarn", "2"))


def test_model_args_may_not_set_what_the_points_set():
    points = sweep_points("none,pi", "2")
    for key in ("scaling", "factor"):
        with pytest.raises(ValueError, match=f"--model_args sets {key}: the sweep sets these per point"):
            check_model_args({"pretrained": "m", key: "yarn" if key == "scaling" else 4}, points)


def test_an_empty_methods_list_names_every_method_of_the_catalog():
    with pytest.raises(ValueError) as error:
        sweep_points(" , ")
    assert f"name at least one of {', '.join(METHOD_NAMES)} " in str(error.value)
