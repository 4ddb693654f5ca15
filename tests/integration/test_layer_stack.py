"""Layer stacking (several mergekit slices with passthrough) keeps heads as the slices' models have them, and
tokenizer_source is honoured when the vocabularies agree and refused, saying what to do, when they do not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cli.main import main as fdamerge
from fda_core.config import load_config
from fda_core.errors import ConfigError
from fda_core.merge.plan import build_plan
from tests.support.compare import load_tensors
from tests.support.tiny_llama import save_tiny_llama


def stack(tmp_path: Path, first: Path, second: Path, **extra) -> Path:
    doc = {"merge_method": "passthrough", "dtype": "float32", **extra, "slices": [
        {"sources": [{"model": str(first), "layer_range": [0, 1]}]},
        {"sources": [{"model": str(second), "layer_range": [0, 2]}]},
    ]}  # fmt: skip
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "merge.yaml"


@pytest.mark.parametrize("first_tied", [True, False])
def test_the_head_comes_from_the_last_slice_and_the_config_says_whether_it_is_tied(
    first_tied: bool, tmp_path: Path
) -> None:
    first = save_tiny_llama(tmp_path / "first", tied=first_tied)
    second = save_tiny_llama(tmp_path / "second", tied=not first_tied, seed=1)
    assert fdamerge(["merge", str(stack(tmp_path, first, second)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out, a, b = load_tensors(tmp_path / "out"), load_tensors(first), load_tensors(second)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    assert config["tie_word_embeddings"] is (not first_tied)  # the last slice's model decides
    assert ("lm_head.weight" in out) is first_tied
    if first_tied:
        assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(out["model.layers.2.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(out["model.norm.weight"], b["model.norm.weight"])
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 3


def test_a_range_past_the_models_layers_is_refused_before_any_read(tmp_path: Path) -> None:
    first = save_tiny_llama(tmp_path / "first")
    doc = {"merge_method": "passthrough", "slices": [{"sources": [{"model": str(first), "layer_range": [0, 5]}]},
                                                     {"sources": [{"model": str(first), "layer_range": [0, 1]}]}]}  # fmt: skip
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"layer_stack.0.layers: \[0, 5\], but .* has 2 layers"):
        build_plan(load_config(tmp_path / "merge.yaml"), 10**9)


def test_tokenizer_source_is_the_named_models_when_vocabularies_agree(tmp_path: Path) -> None:
    first = save_tiny_llama(tmp_path / "first")
    second = save_tiny_llama(tmp_path / "second", seed=1)
    config = json.loads((second / "tokenizer_config.json").read_text())
    (second / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 77}))
    path = stack(tmp_path, first, second, tokenizer_source=str(second))
    assert fdamerge(["merge", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["model_max_length"] == 77


def test_tokenizer_source_union_over_different_vocabularies_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    first = save_tiny_llama(tmp_path / "first")
    second = save_tiny_llama(tmp_path / "second", seed=1, vocab=300)
    with pytest.raises(
        ConfigError, match="different vocabularies .* does not remap embedding rows .* resize_token_embeddings"
    ):
        build_plan(load_config(stack(tmp_path, first, second, tokenizer_source="union")), 10**9)
