"""The merge schema and the translation of mergekit files into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fda_core.config import load_config, parse_config
from fda_core.errors import ConfigError
from fda_core.mergekit_compat import from_mergekit


def test_mergekit_slerp_with_slices_becomes_base_plus_one_model() -> None:
    doc = {
        "merge_method": "slerp",
        "base_model": "a",
        "slices": [{"sources": [{"model": "a", "layer_range": [0, 32]}, {"model": "b", "layer_range": [0, 32]}]}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]},
        "dtype": "bfloat16",
    }
    config = parse_config(from_mergekit(doc))
    assert (config.method, config.base_model, [m.model for m in config.models]) == ("slerp", "a", ["b"])
    assert config.dtype == "bfloat16" and config.parameters["t"][1] == {"value": 0.5}
    assert config.layers == 32  # checked against the base's layer count when the plan is built


def test_mergekit_linear_averages_the_base_in_as_mergekit_does() -> None:
    doc = {"merge_method": "linear", "base_model": "a", "models": [{"model": "b"}], "parameters": {"weight": 0.5}}
    config = parse_config(from_mergekit(doc))
    assert [m.model for m in config.models] == ["b", "a"]


def test_mergekit_linear_with_an_unweighted_unlisted_base_is_refused_as_mergekit_does() -> None:
    with pytest.raises(ConfigError, match="no weight is given for it"):
        from_mergekit(
            {"merge_method": "linear", "base_model": "a", "models": [{"model": "b", "parameters": {"weight": 1}}]}
        )


def test_mergekit_dare_rescale_means_l1_norm_matching() -> None:
    doc = {"merge_method": "dare_ties", "base_model": "a", "models": [{"model": "b"}], "parameters": {"rescale": False}}
    assert from_mergekit(doc)["parameters"]["rescale"] == "none"
    del doc["parameters"]
    assert from_mergekit(doc)["parameters"]["rescale"] == "l1"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"slices": [{"sources": []}, {"sources": []}]},
            "2 slices with ties: fda-merge stacks slices with passthrough",
        ),
        ({"merge_method_options": {}}, "mergekit option 'merge_method_options' is not supported"),
        ({"models": ["./a", "./b"]}, "every models entry is a mapping with a model key"),
        ({"slices": [{"sources": [{"model": "b", "layer_range": [0]}]}]}, "must all take the same layer_range"),
        ({"slices": [{"sources": [{"model": "b", "layer_range": [0, "x"]}]}]}, "must all take the same layer_range"),
    ],
)
def test_mergekit_features_we_lack_fail_loudly(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_mergekit({"merge_method": "ties", "base_model": "a", **doc})


def test_weight_shorthand_and_parameters_weight_agree() -> None:
    config = parse_config({"method": "task_arithmetic", "base_model": "a", "models": [{"model": "b", "weight": 0.3}]})
    assert config.models[0].resolved_parameters() == {"weight": 0.3}


def test_gradient_and_filter_values_are_validated_up_front() -> None:
    with pytest.raises(ConfigError, match=r"parameters\.t: Input should be less than or equal to 1 \(got 2\)"):
        parse_config(
            {"method": "slerp", "base_model": "a", "models": [{"model": "b"}], "parameters": {"t": [0, {"value": 2}]}}
        )


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("method: ties\nbase_model: a\nmodels: [{model: b}]\nmodel_name: x\n")
    with pytest.raises(ConfigError, match="c.yaml: model_name: Extra inputs are not permitted"):
        load_config(path)
