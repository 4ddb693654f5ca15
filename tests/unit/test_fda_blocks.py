"""Block discovery: one skeleton, any weights; outputs equal the real model's layer outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fda_core.errors import ConfigError
from fda_core.fda.blocks import discover_blocks, layer_count
from fda_core.fda.construction import ConstructionSettings, construct_anchors
from fda_core.fda.sdpa import second_order_attention

TOKENS = 5


def tiny(family: str):
    from tests.support.tiny_models import build_model

    return build_model(family)


def perturbed(model, scale=0.05):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def saved(family: str, tmp_path: Path) -> tuple[dict, dict[str, torch.Tensor], torch.nn.Module]:
    model = perturbed(tiny(family)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return json.loads((tmp_path / "config.json").read_text()), load_file(str(tmp_path / "model.safetensors")), model


def real_layer_io(model, family: str, layer: int):
    """Input and output of block `layer` during a real forward pass of the whole model."""
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) >= 2][0]
    seen = {}
    handle = blocks[layer].register_forward_hook(
        lambda m, a, k, out: seen.update(x=(a[0] if a else k["hidden_states"]), y=out), with_kwargs=True
    )
    with torch.no_grad():
        if family in ("vit", "clip_vision"):
            model(pixel_values=torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
        else:
            model(input_ids=torch.randint(0, 96, (2, TOKENS), generator=torch.Generator().manual_seed(1)))
    handle.remove()
    y = seen["y"][0] if isinstance(seen["y"], tuple) else seen["y"]
    return seen["x"], y


@pytest.mark.parametrize("family", ["bert", "roberta", "vit", "clip_vision", "gpt2", "llama"])
def test_block_with_checkpoint_weights_reproduces_the_models_layer(family: str, tmp_path: Path) -> None:
    config, tensors, model = saved(family, tmp_path)
    blocks = discover_blocks(config, list(tensors), tokens=TOKENS)
    assert len(blocks) == layer_count(config)
    block = blocks[1]
    params = {name: tensors[block.checkpoint_name(name)] for name in block.parameter_names}
    x, y = real_layer_io(model, family, 1)
    assert tuple(x.shape[1:]) == block.anchor_shape
    torch.testing.assert_close(block(params, x), y, atol=1e-5, rtol=1e-4)


def test_decoder_blocks_are_causal(tmp_path: Path) -> None:
    config, tensors, _ = saved("llama", tmp_path)
    block = discover_blocks(config, list(tensors), tokens=TOKENS)[0]
    params = {name: tensors[block.checkpoint_name(name)] for name in block.parameter_names}
    x = torch.randn(3, TOKENS, 32)
    later = x.clone()
    later[:, -1] += 1.0
    torch.testing.assert_close(block(params, x)[:, :-1], block(params, later)[:, :-1])


def test_ffn_only_blocks_are_the_decoder_mlps(tmp_path: Path) -> None:
    config, tensors, model = saved("llama", tmp_path)
    blocks = discover_blocks(config, list(tensors), tokens=TOKENS, ffn_only=True)
    assert blocks[0].checkpoint_name("gate_proj.weight") == "model.layers.0.mlp.gate_proj.weight"
    assert blocks[0].anchor_shape == (32,)
    params = {name: tensors[blocks[0].checkpoint_name(name)] for name in blocks[0].parameter_names}
    x = torch.randn(4, 32)
    torch.testing.assert_close(blocks[0](params, x), model.model.layers[0].mlp(x))


def test_unknown_block_path_says_what_to_pass(tmp_path: Path) -> None:
    config, tensors, _ = saved("llama", tmp_path)
    with pytest.raises(ConfigError, match="blocks"):
        discover_blocks(config, list(tensors), tokens=TOKENS, blocks="model.nope")


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_construction_runs_its_double_backward_through_attention_blocks(family: str, tmp_path: Path) -> None:
    config, tensors, _ = saved(family, tmp_path)
    block = discover_blocks(config, list(tensors), tokens=TOKENS)[0]
    theta0 = {n: tensors[block.checkpoint_name(n)] for n in block.parameter_names}
    experts = [{n: v + 0.01 * torch.randn_like(v) for n, v in theta0.items()} for _ in range(2)]
    taus = {n: torch.stack([e[n] - theta0[n] for e in experts]) for n in theta0}
    initial = 0.01 * torch.randn(2, 4, *block.anchor_shape)
    with second_order_attention():
        result = construct_anchors(block, theta0, experts, taus, initial, ConstructionSettings(steps=15, patience=100))
    assert all(last < first for first, last in zip(result.history[0], result.history[-1]))
    assert all(torch.isfinite(c).all() for c in result.cosines.values())


def test_ffn_only_maps_legacy_saved_names(tmp_path: Path) -> None:
    """transformers 5 saves ViT's mlp.fc1 as intermediate.dense: FFN-only must follow the saved names."""
    config, tensors, _ = saved("vit", tmp_path)
    block = discover_blocks(config, list(tensors), tokens=TOKENS, ffn_only=True)[0]
    assert all(name in tensors for name in block.tensor_names())
    params = {name: tensors[block.checkpoint_name(name)] for name in block.parameter_names}
    assert block(params, torch.randn(3, 32)).shape == (3, 32)


def test_layers_of_different_kinds_are_refused_rather_than_given_layer_0s_arguments(tmp_path: Path) -> None:
    config, tensors, _ = saved("llama", tmp_path)
    config["layer_types"] = ["sliding_attention", "full_attention", "full_attention"]
    with pytest.raises(ConfigError, match="different kinds"):
        discover_blocks(config, list(tensors), tokens=TOKENS)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_key_bias_gradient_is_recognised_as_zero_by_structure_not_rounding(family: str, tmp_path: Path) -> None:
    from fda_core.fda.construction import active_tensors, probe_gradients

    config, tensors, _ = saved(family, tmp_path)
    block = discover_blocks(config, list(tensors), tokens=TOKENS)[0]
    theta0 = {n: tensors[block.checkpoint_name(n)] for n in block.parameter_names}
    expert = {n: v + 0.01 * torch.randn_like(v) for n, v in theta0.items()}
    taus = {n: (expert[n] - theta0[n]).unsqueeze(0) for n in theta0}
    anchors = torch.zeros(1, 8, *block.anchor_shape)
    with second_order_attention():
        grads = probe_gradients(block, theta0, [expert], anchors)
        active = active_tensors(grads, taus)
    inactive = sorted(n for n, flag in active.items() if not bool(flag[0]))
    key_biases = sorted(n for n in theta0 if n.endswith(("key.bias", "k_proj.bias")))
    assert inactive == key_biases
    if key_biases:  # rounding leaves it non-zero: an exact-zero test would have kept it in the loss
        assert float(grads[key_biases[0]].abs().max()) > 0


@pytest.mark.parametrize("family", ["bert", "roberta", "vit", "clip_vision", "gpt2", "llama"])
def test_first_block_inputs_are_the_real_models_layer_0_inputs(family: str, tmp_path: Path) -> None:
    from fda_core.fda.blocks import first_block_inputs

    config, tensors, model = saved(family, tmp_path)
    expected, _ = real_layer_io(model, family, 0)
    if family in ("vit", "clip_vision"):
        inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    else:
        inputs = torch.randint(0, 96, (2, TOKENS), generator=torch.Generator().manual_seed(1))
    got = first_block_inputs(config, list(tensors), tensors.__getitem__, inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
