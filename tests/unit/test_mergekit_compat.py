"""A mergekit file's inputs, parameters and defaults become ours as mergekit 0.1.5 reads them."""

from __future__ import annotations

import pytest

from fda_core.config import parse_config
from fda_core.errors import ConfigError
from fda_core.merge.params import ParameterResolver
from fda_core.merge.settings import resolve_setting
from fda_core.mergekit_compat import from_mergekit
from fda_core.methods import get_method


def translate(method: str, **doc) -> dict:
    return from_mergekit({"merge_method": method, **doc})


def resolved(doc: dict, tensor: str) -> tuple:
    """Method and per-model parameters for one tensor, as the plan resolves them."""
    config = parse_config(doc)
    return ParameterResolver(config, get_method(config.method), num_layers=2).for_tensor(tensor)


def test_karcher_averages_an_unlisted_base_in_as_mergekit_does() -> None:
    doc = translate("karcher", base_model="a", models=[{"model": "b"}, {"model": "c"}])
    assert [m["model"] for m in doc["models"]] == ["b", "c", "a"] and doc["base_model"] == "a"
    listed = translate("karcher", base_model="a", models=[{"model": "a"}, {"model": "b"}])
    assert [m["model"] for m in listed["models"]] == ["a", "b"]


def test_methods_with_a_base_take_it_out_of_the_models() -> None:
    for method in ("della", "sce", "nuslerp", "multislerp", "nearswap", "ram"):
        doc = translate(method, base_model="a", models=[{"model": "a"}, {"model": "b"}])
        assert [m["model"] for m in doc["models"]] == ["b"], method


def test_passthrough_copies_the_one_model_and_refuses_an_unlisted_base_as_mergekit_does() -> None:
    doc = translate("passthrough", models=[{"model": "b", "parameters": {"scale": 0.5}}])
    assert parse_config(doc).models[0].parameters == {"scale": 0.5}
    assert [m["model"] for m in translate("passthrough", base_model="a", models=[{"model": "a"}])["models"]] == ["a"]
    with pytest.raises(ConfigError, match="passthrough copies one model, but mergekit counts an unlisted base_model"):
        translate("passthrough", base_model="a", models=[{"model": "b"}])


def test_a_slice_does_not_get_the_base_appended_as_mergekits_models_form_does() -> None:
    sources = [{"model": m, "layer_range": [0, 2], "parameters": {"weight": 1.0}} for m in ("b", "c")]
    doc = translate("linear", base_model="a", slices=[{"sources": sources}])
    assert [m["model"] for m in doc["models"]] == ["b", "c"]


def test_a_slices_own_base_model_is_the_base() -> None:
    sources = [{"model": m, "layer_range": [0, 2]} for m in ("a", "b")]
    doc = translate("ties", slices=[{"sources": sources, "base_model": "a"}])
    assert doc["base_model"] == "a" and [m["model"] for m in doc["models"]] == ["b"]


def test_slice_parameters_rank_above_the_files_and_fall_back_to_them() -> None:
    slice_t = [{"filter": "mlp", "value": 0.9}]
    doc = translate(
        "slerp",
        base_model="a",
        parameters={"t": 0.2},
        slices=[{"sources": [{"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 2]}],
                 "parameters": {"t": slice_t}}],
    )  # fmt: skip
    t = doc["parameters"]["t"]
    assert resolve_setting(t, "model.layers.0.mlp.up_proj.weight", 0) == 0.9
    assert resolve_setting(t, "model.layers.0.self_attn.q_proj.weight", 0) == 0.2


def test_breadcrumbs_density_defaults_to_mergekits_one_wherever_the_file_sets_none() -> None:
    models = [{"model": "b", "parameters": {"density": 0.5}}, {"model": "c"}]
    for method in ("breadcrumbs", "breadcrumbs_ties"):
        _, per_model = resolved(translate(method, base_model="a", models=models), "model.layers.0.mlp.up_proj.weight")
        assert [p.density for p in per_model] == [0.5, 1.0], method  # ours would be 0.9
    filtered = {"density": [{"filter": "self_attn", "value": 0.3}]}
    doc = translate("breadcrumbs", base_model="a", models=[{"model": "b"}], parameters=filtered)
    assert resolved(doc, "model.layers.0.self_attn.q_proj.weight")[1][0].density == 0.3
    assert resolved(doc, "model.layers.0.mlp.up_proj.weight")[1][0].density == 1.0


@pytest.mark.parametrize(
    ("method", "given", "expected"),
    [
        ("della", None, "l1"), ("della_linear", False, "none"), ("breadcrumbs_ties", None, "none"),
        ("breadcrumbs_ties", True, "l1"), ("dare_linear", None, "l1"),
    ],
)  # fmt: skip
def test_mergekits_rescale_flag_means_l1_norm_matching(method: str, given: bool | None, expected: str) -> None:
    parameters = {} if given is None else {"rescale": given}
    doc = translate(method, base_model="a", models=[{"model": "b"}], parameters=parameters)
    assert doc["parameters"]["rescale"] == expected
    parse_config(doc)


def test_rescale_false_is_mergekits_no_op_on_ties_and_true_is_refused() -> None:
    doc = translate("ties", base_model="a", models=[{"model": "b"}], parameters={"rescale": False})
    assert "rescale" not in doc["parameters"]
    with pytest.raises(ConfigError, match="fda-merge's ties has no L1 rescale"):
        translate("ties", base_model="a", models=[{"model": "b"}], parameters={"rescale": True})


@pytest.mark.parametrize(
    ("the_slice", "message"),
    [
        ({"merge_method": "ties"}, "slice option 'merge_method' is not supported"),
        ({"base_model": "z"}, "the slice's base_model 'z' differs from base_model 'a'"),
    ],
)
def test_slice_options_we_do_not_read_are_refused(the_slice: dict, message: str) -> None:
    sources = [{"model": "b", "layer_range": [0, 2]}]
    with pytest.raises(ConfigError, match=message):
        translate("ties", base_model="a", slices=[{"sources": sources, **the_slice}])


def test_every_new_method_reads_mergekits_parameter_names() -> None:
    files = {
        "della": (
            {"lambda": 0.9, "normalize": False, "int8_mask": True},
            {"weight": 1, "density": 0.5, "epsilon": 0.1},
        ),
        "sce": ({"select_topk": 0.5, "int8_mask": False}, {"weight": 1.0}),
        "nuslerp": ({"nuslerp_flatten": False, "nuslerp_row_wise": True}, {"weight": 0.5}),
        "multislerp": ({"normalize_weights": False, "eps": 1e-7}, {"weight": 0.5}),
        "karcher": ({"max_iter": 5, "tol": 1e-6}, {}),
        "nearswap": ({"t": 0.001}, {}),
        "ram": ({"epsilon": 1e-4}, {}),
        "ramplus_tl": ({"epsilon": 1e-4, "r": 0.2, "alpha": 0.5}, {}),
        "breadcrumbs_ties": ({"lambda": 1.1, "rescale": True}, {"density": 0.8, "gamma": 0.02}),
    }
    for method, (parameters, own) in files.items():
        models = [{"model": "b", "parameters": own}] + (
            [{"model": "c", "parameters": own}] if method == "nuslerp" else []
        )
        parse_config(translate(method, base_model="a", models=models, parameters=parameters))
