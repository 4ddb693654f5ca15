"""GGUF in and out: a tiny LLaMA written to GGUF and read back gives its tensors, as transformers' own GGUF
loader reads them; tied heads stay tied; a GGUF file is an input like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cli.main import main as fdamerge
from fda_core.checkpoints.gguf_export import export_gguf
from fda_core.checkpoints.gguf_header import read_gguf
from fda_core.checkpoints.sources import open_source
from fda_core.errors import CheckpointError
from tests.support.compare import load_tensors, max_abs_difference
from tests.support.tiny_llama import save_tiny_llama

TOLERANCE = {"f32": 0.0, "f16": 1e-3, "bf16": 4e-3, "q8_0": 2e-3}  # |Δ| of weights ~N(0, 0.02²)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {"tied": save_tiny_llama(root / "tied"), "untied": save_tiny_llama(root / "untied", tied=False, seed=1)}


def transformers_tensors(gguf: Path) -> dict[str, torch.Tensor]:
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(TOLERANCE))
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_a_tiny_llama_through_gguf_gives_its_tensors_as_transformers_reads_them(
    kind: str, head: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    original = load_tensors(tiny[head])
    gguf = tmp_path / "model.gguf"
    export_gguf(str(tiny[head]), gguf, kind)
    stored = read_gguf(open_source(str(gguf)), gguf.name, str(gguf)).tensors
    assert ("output.weight" in stored) == (head == "untied")  # a tied head is written once

    assert fdamerge(["convert", str(gguf), "--out", str(tmp_path / "back")]) == 0
    ours = load_tensors(tmp_path / "back")
    assert set(ours) == set(original)  # no lm_head.weight when tied, one when not
    assert max(max_abs_difference(ours, original).values()) <= TOLERANCE[kind]
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["tie_word_embeddings"] is (head == "tied") and config["num_key_value_heads"] == 2

    theirs = transformers_tensors(gguf)  # transformers' own dequantisation and q/k un-permutation
    assert max(float((ours[n] - theirs[n]).abs().max()) for n in ours) == 0.0
    assert max(float((theirs[n] - original[n]).abs().max()) for n in original) <= TOLERANCE[kind]


def test_a_gguf_round_trip_keeps_tensors_tokenizer_and_chat_template(tiny: dict[str, Path], tmp_path: Path) -> None:
    import transformers as tf

    assert fdamerge(["convert", str(tiny["tied"]), "--out", str(tmp_path / "m.gguf"), "--type", "f32"]) == 0
    assert fdamerge(["convert", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "back")]) == 0
    assert max_abs_difference(load_tensors(tmp_path / "back"), load_tensors(tiny["tied"])) == {
        name: 0.0 for name in load_tensors(tiny["tied"])
    }
    original, back = tf.AutoTokenizer.from_pretrained(tiny["tied"]), tf.AutoTokenizer.from_pretrained(tmp_path / "back")
    for text in ["hello world, merging models", "<|im_start|>the lazy dog 123<|im_end|>"]:
        assert back(text).input_ids == original(text).input_ids
    assert (back.bos_token, back.eos_token) == (original.bos_token, original.eos_token)
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    out = model.generate(**back("hello", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 1


def test_a_gguf_file_is_a_merge_input_like_any_other(tiny: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "base.gguf"
    export_gguf(str(tiny["tied"]), base, "f32")
    expert = tmp_path / "expert"
    expert.mkdir()
    tensors = {n: t + 0.01 for n, t in load_tensors(tiny["tied"]).items()}
    save_file(tensors, str(expert / "model.safetensors"))
    (tmp_path / "merge.yaml").write_text(
        yaml.safe_dump(
            {"method": "task_arithmetic", "base_model": str(base), "models": [{"model": str(expert), "weight": 0.5}]}
        )
    )
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    merged, original = load_tensors(tmp_path / "out"), load_tensors(tiny["tied"])
    assert max(max_abs_difference(merged, {n: t + 0.005 for n, t in original.items()}).values()) < 1e-6
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_a_tied_config_with_a_different_stored_head_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    tensors = load_file(str(tiny["tied"] / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_bytes((tiny["tied"] / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="ties the head to the embeddings but lm_head.weight differs"):
        export_gguf(str(folder), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_convert_refuses_two_folders_or_two_gguf_files(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert fdamerge(["convert", str(tiny["tied"]), "--out", str(tmp_path / "folder")]) == 2
    assert "give a .gguf file and a folder" in capsys.readouterr().err


def test_a_merge_with_gguf_set_also_writes_model_gguf_that_reads_back_as_the_merge(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    expert = tmp_path / "expert"
    expert.mkdir()
    save_file({n: t * 1.5 for n, t in load_tensors(tiny["tied"]).items()}, str(expert / "model.safetensors"))
    doc = {"method": "linear", "base_model": str(tiny["tied"]), "models": [{"model": str(tiny["tied"])}, {"model": str(expert)}], "gguf": "f32"}  # fmt: skip
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(doc))
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert fdamerge(["convert", str(tmp_path / "out" / "model.gguf"), "--out", str(tmp_path / "back")]) == 0
    assert max(max_abs_difference(load_tensors(tmp_path / "back"), load_tensors(tmp_path / "out")).values()) == 0.0
