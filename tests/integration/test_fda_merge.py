"""`method: fda` end to end on tiny models: loadable outputs, anchor artifacts, the anchor cache, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cli.main import main as fdamerge
from fda_core.config import parse_config
from fda_core.errors import ConfigError, MergeCancelled
from fda_core.merge.run import MergeOptions, run_merge
from tests.integration.test_merge_cli import load_with_transformers
from tests.support.compare import load_tensors
from tests.support.tiny_models import save_expert

FAST = {"anchors": 8, "tokens": 5, "construction_steps": 12, "adaptation_epochs": 3}


def fda_config(base: Path, experts: list[Path], **parameters) -> dict:
    return {
        "method": "fda",
        "base_model": str(base),
        "models": [{"model": str(e)} for e in experts],
        "parameters": {**FAST, **parameters},
    }


def merge(config: dict, out: Path, **options):
    return run_merge(parse_config(config), out, MergeOptions(**options))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "vit"])
@pytest.mark.parametrize("init", ["pretrained", "task_arithmetic", "ties"])
def test_fda_merges_into_a_loadable_model_with_anchor_artifacts(
    family: str, init: str, families, tmp_path: Path
) -> None:
    base, experts = families[family]
    result = merge(fda_config(base, experts, init=init), tmp_path / "out")
    model = load_with_transformers(family, tmp_path / "out")
    assert not any(torch.isnan(p).any() for p in model.parameters())
    layers = result.metrics["fda"]["layers"]
    assert len(layers) == len(list((tmp_path / "out" / "anchors").glob("block-*.safetensors")))
    with safe_open(str(tmp_path / "out" / "anchors" / "block-000.safetensors"), "pt") as handle:
        manifest = json.loads(handle.metadata()["manifest"])
        assert handle.get_tensor("task0").shape[0] == FAST["anchors"]
    assert [m["model"] for m in manifest] == [str(e) for e in experts]
    assert all(len(task["cosines"]) > 0 for layer in layers for task in layer["tasks"])


def test_adaptation_moves_block_tensors_and_the_rest_follow_the_init_method(llama, tmp_path: Path) -> None:
    base, experts = llama
    merge(fda_config(base, experts, init="task_arithmetic", init_parameters={"lambda": 0.3}), tmp_path / "fda")
    ta = {
        "method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(e)} for e in experts],
        "parameters": {"lambda": 0.3},
    }
    merge(ta, tmp_path / "ta")
    fda, reference = load_tensors(tmp_path / "fda"), load_tensors(tmp_path / "ta")
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        torch.testing.assert_close(fda[name], reference[name])
    assert not torch.allclose(fda["model.layers.1.mlp.up_proj.weight"], reference["model.layers.1.mlp.up_proj.weight"])


def test_ffn_only_adapts_the_mlps_and_leaves_attention_to_the_init_method(llama, tmp_path: Path) -> None:
    base, experts = llama
    init = {"init": "task_arithmetic", "init_parameters": {"lambda": 0.3}}
    merge(fda_config(base, experts, ffn_only=True, **init), tmp_path / "fda")
    merge({**fda_config(base, experts), "method": "task_arithmetic", "parameters": {"lambda": 0.3}}, tmp_path / "ta")
    fda, reference = load_tensors(tmp_path / "fda"), load_tensors(tmp_path / "ta")
    torch.testing.assert_close(
        fda["model.layers.0.self_attn.q_proj.weight"], reference["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not torch.allclose(
        fda["model.layers.0.mlp.down_proj.weight"], reference["model.layers.0.mlp.down_proj.weight"]
    )


def test_anchor_cache_constructs_only_the_new_experts_anchors(llama, tmp_path: Path) -> None:
    base, experts = llama
    third = save_expert("llama", tmp_path / "expert-c", seed=5)
    cache = tmp_path / "cache"
    first = merge(fda_config(base, [experts[0], experts[1]]), tmp_path / "ab", anchor_cache=cache)
    second = merge(fda_config(base, [experts[0], third]), tmp_path / "ac", anchor_cache=cache)
    assert all(not task["cached"] for layer in first.metrics["fda"]["layers"] for task in layer["tasks"])
    assert all([t["cached"] for t in layer["tasks"]] == [True, False] for layer in second.metrics["fda"]["layers"])
    with (
        safe_open(str(tmp_path / "ab" / "anchors" / "block-001.safetensors"), "pt") as a,
        safe_open(str(tmp_path / "ac" / "anchors" / "block-001.safetensors"), "pt") as b,
    ):
        assert torch.equal(a.get_tensor("task0"), b.get_tensor("task0"))


def test_anchors_do_not_depend_on_the_order_of_the_models(llama, tmp_path: Path) -> None:
    base, experts = llama
    merge(fda_config(base, experts), tmp_path / "ab")
    merge(fda_config(base, experts[::-1]), tmp_path / "ba")
    with (
        safe_open(str(tmp_path / "ab" / "anchors" / "block-000.safetensors"), "pt") as a,
        safe_open(str(tmp_path / "ba" / "anchors" / "block-000.safetensors"), "pt") as b,
    ):
        torch.testing.assert_close(
            a.get_tensor("task0"), b.get_tensor("task1"), atol=1e-5, rtol=1e-4
        )  # batched BLAS: not bitwise


def test_cancel_during_construction_stops_and_leaves_nothing(llama, tmp_path: Path) -> None:
    base, experts = llama
    seen = []

    def progress(p) -> None:
        seen.append(p.phase)

    with pytest.raises(MergeCancelled):
        run_merge(
            parse_config(fda_config(base, experts, construction_steps=1000, patience=1000)),
            tmp_path / "out",
            on_progress=progress,
            should_cancel=lambda: seen.count("construct") >= 5,
        )
    assert seen.count("construct") == 5
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"init": "tie"}, "unknown merge method 'tie'"),
        ({"anchor_init": "uniform"}, "parameters.anchor_init"),
        ({"anchors_n": 4}, "anchors_n"),
        ({"init": "ties", "init_parameters": {"density": 2}}, "parameters.init_parameters.density"),
    ],
)
def test_fda_settings_are_validated_before_any_work(llama, parameters: dict, message: str) -> None:
    base, experts = llama
    with pytest.raises(ConfigError, match=message):
        from fda_core.config import parse_config as parse

        parse(fda_config(base, experts, **parameters))


def test_cli_shows_the_fda_table(llama, tmp_path: Path, capsys) -> None:
    base, experts = llama
    import yaml

    (tmp_path / "fda.yaml").write_text(yaml.safe_dump(fda_config(base, experts)))
    assert fdamerge(["merge", str(tmp_path / "fda.yaml"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "mean cos" in out and "model.layers.2." in out and out.strip().splitlines()[-1].startswith("merged")


def test_changing_a_construction_setting_misses_the_cache(llama, tmp_path: Path) -> None:
    base, experts = llama
    cache = tmp_path / "cache"
    merge(fda_config(base, experts), tmp_path / "a", anchor_cache=cache)
    again = merge(fda_config(base, experts, sigma=0.02), tmp_path / "b", anchor_cache=cache)
    assert not any(task["cached"] for layer in again.metrics["fda"]["layers"] for task in layer["tasks"])


def test_supplied_inputs_replace_construction_and_a_wrong_shape_is_named(llama, tmp_path: Path) -> None:
    base, experts = llama
    seen: list[tuple[int, str, int]] = []

    def supplier(layer: int, block, task: int) -> torch.Tensor:
        seen.append((layer, block.prefix, task))
        return torch.randn(FAST["anchors"], *block.anchor_shape, generator=torch.Generator().manual_seed(layer))

    result = merge(fda_config(base, experts), tmp_path / "out", anchor_supplier=supplier)
    layers = result.metrics["fda"]["layers"]
    assert sorted({(layer, task) for layer, _, task in seen}) == [(i, t) for i in range(len(layers)) for t in (0, 1)]
    assert all(task.get("supplied") for layer in layers for task in layer["tasks"])

    def wrong(layer: int, block, task: int) -> torch.Tensor:
        return torch.zeros(3, *block.anchor_shape)

    with pytest.raises(ConfigError, match=r"shape \[3, 5, 32\].*need \[8, 5, 32\]"):
        merge(fda_config(base, experts), tmp_path / "bad", anchor_supplier=wrong)
    assert not (tmp_path / "bad").exists()


def test_eq5_takes_the_tensors_outside_the_blocks_from_a_parameter_space_merge(llama, tmp_path: Path) -> None:
    base, experts = llama
    outside = {"outside": "task_arithmetic", "outside_parameters": {"lambda": 0.4}}
    merge(fda_config(base, experts, init="pretrained", **outside), tmp_path / "fda")
    merge(fda_config(base, experts, init="pretrained", outside="pretrained"), tmp_path / "kept")
    ta = {**fda_config(base, experts), "method": "task_arithmetic", "parameters": {"lambda": 0.4}}
    merge(ta, tmp_path / "ta")
    fda, kept, reference = (load_tensors(tmp_path / n) for n in ("fda", "kept", "ta"))
    pretrained = load_tensors(base)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        torch.testing.assert_close(fda[name], reference[name])
        torch.testing.assert_close(kept[name], pretrained[name])


def test_eq6_starts_from_the_init_methods_own_parameters(llama, tmp_path: Path) -> None:
    """No paper λ = 0.3 slipped in: TA's own default (λ = 1) unless the config says otherwise."""
    base, experts = llama
    merge(fda_config(base, experts, init="task_arithmetic", adaptation_epochs=0), tmp_path / "fda")
    merge({**fda_config(base, experts), "method": "task_arithmetic", "parameters": {}}, tmp_path / "ta")
    fda, reference = load_tensors(tmp_path / "fda"), load_tensors(tmp_path / "ta")
    for name in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"):
        torch.testing.assert_close(fda[name], reference[name])


def test_chained_adaptation_adds_the_previous_blocks_anchors_from_the_second_block_on(llama, tmp_path: Path) -> None:
    base, experts = llama
    init = {"init": "ties", "coefficients": "row"}
    plain = merge(fda_config(base, experts, **init), tmp_path / "plain").metrics["fda"]["layers"]
    chained = merge(fda_config(base, experts, chained=True, **init), tmp_path / "chained").metrics["fda"]["layers"]
    targets = [layer["adaptation"]["targets"] for layer in plain]
    assert [layer["adaptation"]["targets"] for layer in chained] == [targets[0]] + [2 * t for t in targets[1:]]
    a, b = load_tensors(tmp_path / "plain"), load_tensors(tmp_path / "chained")
    torch.testing.assert_close(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert not torch.allclose(a["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])


def test_task_directions_start_at_the_merge_and_then_correct_it_per_task(llama, tmp_path: Path) -> None:
    base, experts = llama
    start = {"init": "tsv", "task_directions": True, "coefficients": "elementwise", "adaptation_epochs": 0}
    still = merge(fda_config(base, experts, **start), tmp_path / "a")
    merge({**fda_config(base, experts), "method": "tsv", "parameters": {}}, tmp_path / "tsv")
    merge(fda_config(base, experts, init="tsv", task_directions=True, coefficients="row"), tmp_path / "b")
    name = "model.layers.1.self_attn.q_proj.weight"
    at_start, tsv, moved = (load_tensors(tmp_path / n)[name] for n in ("a", "tsv", "b"))
    torch.testing.assert_close(at_start, tsv)
    assert not torch.allclose(moved, tsv)
    block = sum(t.numel() for n, t in load_tensors(base).items() if n.startswith("model.layers.0."))
    assert still.metrics["fda"]["layers"][0]["adaptation"]["trained"] == 3 * block  # θm's α and one β per expert


def test_targets_per_parameter_are_reported_per_block_and_overall(llama, tmp_path: Path) -> None:
    base, experts = llama
    result = merge(
        fda_config(base, experts, init="ties", coefficients="tensor", task_directions=False), tmp_path / "out"
    )
    fda = result.metrics["fda"]
    block = fda["layers"][0]["adaptation"]
    assert block["targets"] == 2 * FAST["anchors"] * FAST["tokens"] * 32  # tasks × n × T × d
    assert block["trained"] == 9  # one α per tensor of a LLaMA block
    assert fda["targets_per_parameter"] == pytest.approx(fda["targets"] / fda["trained"], rel=1e-3)


def test_sigma_auto_is_chosen_once_and_kept_by_the_anchor_cache(llama, tmp_path: Path) -> None:
    base, experts = llama
    cache = tmp_path / "cache"
    first = merge(fda_config(base, experts, sigma="auto"), tmp_path / "a", anchor_cache=cache).metrics["fda"]
    assert first["sigma"]["block"] == "model.layers.0." and float(first["sigma"]["chosen"]) > 0
    again = merge(fda_config(base, experts, sigma="auto"), tmp_path / "b", anchor_cache=cache).metrics["fda"]
    assert again["sigma"] == first["sigma"]
    assert all(task["cached"] for layer in again["layers"] for task in layer["tasks"])


def noisy_copy(base: Path, out: Path, seed: int) -> Path:
    """A fine-tune stand-in: the base plus small noise on every weight, saved as transformers saves it."""
    import transformers as tf

    model = tf.LlamaForCausalLM.from_pretrained(base, local_files_only=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_the_llm_preset_merges_a_tied_decoder_ffn_only_and_keeps_it_tied(tmp_path: Path) -> None:
    import transformers as tf

    from tests.support.tiny_llama import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", tied=True)
    experts = [noisy_copy(base, tmp_path / f"expert{i}", seed=i) for i in (1, 2)]
    quick = {"preset": "llm", "anchors": 64, "construction_steps": 5, "adaptation_epochs": 2}
    models = [{"model": str(e)} for e in experts]
    config = {"method": "fda", "base_model": str(base), "models": models, "parameters": quick}
    result = merge(config, tmp_path / "fda")
    merge({**config, "method": "task_arithmetic", "parameters": {"lambda": 0.5}}, tmp_path / "ta")
    fda, ta = load_tensors(tmp_path / "fda"), load_tensors(tmp_path / "ta")
    assert "lm_head.weight" not in fda  # tied: the head is the embedding, written once
    assert json.loads((tmp_path / "fda" / "config.json").read_text())["tie_word_embeddings"] is True
    for name in ("model.layers.0.self_attn.v_proj.weight", "model.embed_tokens.weight"):
        torch.testing.assert_close(fda[name], ta[name])  # outside the FFNs: TA λ 0.5, the recipe's start
    assert not torch.allclose(fda["model.layers.1.mlp.gate_proj.weight"], ta["model.layers.1.mlp.gate_proj.weight"])
    assert result.metrics["fda"]["layers"][0]["adaptation"]["targets"] == 2 * 64 * 1 * 32  # no token axis
    model = tf.LlamaForCausalLM.from_pretrained(tmp_path / "fda", local_files_only=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_the_decoder_preset_refines_tsv_through_the_ffns_only(tmp_path: Path) -> None:
    from tests.support.tiny_llama import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", tied=True)
    experts = [noisy_copy(base, tmp_path / f"expert{i}", seed=i) for i in (1, 2)]
    models = [{"model": str(e)} for e in experts]
    config = {"method": "fda", "base_model": str(base), "models": models, "parameters": {"preset": "decoder"}}
    result = merge(config, tmp_path / "fda")
    merge({**config, "method": "tsv", "parameters": {}}, tmp_path / "tsv")
    fda, tsv = load_tensors(tmp_path / "fda"), load_tensors(tmp_path / "tsv")
    for name in ("model.layers.0.self_attn.v_proj.weight", "model.layers.1.self_attn.o_proj.weight"):
        torch.testing.assert_close(fda[name], tsv[name])  # outside the FFNs: the TSV start
    assert not torch.allclose(fda["model.layers.1.mlp.down_proj.weight"], tsv["model.layers.1.mlp.down_proj.weight"])
    assert result.metrics["fda"]["layers"][0]["adaptation"]["targets"] == 2 * 64 * 1 * 32  # 64 one-token anchors
