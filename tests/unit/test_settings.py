"""mergekit's parameter syntax: scalars, layer gradients and filtered conditions."""

from __future__ import annotations

import pytest

from fda_core.merge.settings import layer_index, layer_position, num_layers_of, resolve_setting


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("model.layers.7.self_attn.q_proj.weight", 7),
        ("transformer.h.1.attn.c_attn.bias", 1),
        ("encoder.layer.11.output.dense.weight", 11),
        ("model.embed_tokens.weight", None),
    ],
)
def test_layer_index_is_read_from_common_naming_schemes(name: str, index: int | None) -> None:
    assert layer_index(name) == index


def test_gradient_interpolates_across_layers() -> None:
    gradient = [0.0, 0.5, 1.0]
    values = [
        resolve_setting(gradient, f"model.layers.{i}.mlp.weight", layer_position(f"model.layers.{i}.mlp.weight", 5))
        for i in range(5)
    ]
    assert values == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_tensors_outside_the_layers_take_the_gradients_first_value() -> None:
    assert (
        resolve_setting([0.2, 0.9], "model.embed_tokens.weight", layer_position("model.embed_tokens.weight", 4)) == 0.2
    )


def test_first_matching_filter_wins_and_the_unfiltered_condition_is_the_fallback() -> None:
    setting = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": 0.2}, {"value": 0.3}]
    assert resolve_setting(setting, "model.layers.0.self_attn.q_proj.weight", 0) == 0.1
    assert resolve_setting(setting, "model.layers.0.mlp.up_proj.weight", 0) == 0.2
    assert resolve_setting(setting, "model.norm.weight", 0) == 0.3


def test_no_matching_condition_resolves_to_none() -> None:
    assert resolve_setting([{"filter": "mlp", "value": 1}], "model.norm.weight", 0) is None


def test_layer_count_comes_from_config_then_from_names() -> None:
    assert num_layers_of({"num_hidden_layers": 12}, []) == 12
    assert num_layers_of({"n_layer": 6}, []) == 6
    assert num_layers_of(None, ["h.0.w", "h.3.w", "wte"]) == 4
