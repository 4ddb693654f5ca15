"""A PEFT LoRA adapter is a model input: merged onto its base with task_arithmetic (λ = 1) it gives PEFT's own
`merge_and_unload()` (max |Δ| ≤ 1e-5) for plain LoRA, rsLoRA, rank/alpha patterns, DoRA, embeddings, lora_bias,
modules_to_save and GPT-2's Conv1D; mergekit's BASE+ADAPTER names the base; what we cannot merge is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cli.main import main as fdamerge
from fda_core.config import parse_config
from fda_core.errors import CheckpointError, ConfigError
from fda_core.merge.plan import build_plan
from tests.support.compare import load_tensors
from tests.support.tiny_models import build_model, save_base

TOLERANCE = 1e-5
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES: dict[str, dict[str, Any]] = {
    "lora": dict(target_modules=LLAMA_TARGETS),
    "rslora": dict(target_modules=["q_proj", "v_proj"], use_rslora=True, lora_alpha=16),
    "patterns": dict(
        target_modules=LLAMA_TARGETS, rank_pattern={"v_proj": 2, r"layers\.1\..*mlp.*": 6}, alpha_pattern={"q_proj": 3}
    ),
    "dora": dict(target_modules=["q_proj", "down_proj"], use_dora=True),
    "embedding_and_bias": dict(target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"], bias="all"),
}


def save_adapter(family: str, base: Path, out: Path, seed: int = 0, r: int = 4, **options: Any) -> Path:
    """A PEFT adapter with random A and B (a trained adapter's B is non-zero) over the saved `base`."""
    import peft
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=r, lora_alpha=options.pop("lora_alpha", 8), init_lora_weights=False, **options)
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.mul_(0.5)  # keep updates the size of a fine-tune's
            elif "modules_to_save" in name or (name.endswith(".bias") and parameter.requires_grad):
                parameter.add_(0.01)
    wrapped.save_pretrained(out)
    return out


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    import peft
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {name: tensor.detach() for name, tensor in merged.state_dict().items()}


def merge(tmp_path: Path, doc: dict[str, Any]) -> dict[str, torch.Tensor]:
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(doc))
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    return load_tensors(tmp_path / "out")


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-bases")
    llama = root / "llama"
    build_model("llama").save_pretrained(llama, safe_serialization=True)
    return {"llama": llama, "gpt2": save_base("gpt2", root / "gpt2")}


def assert_equal_to_peft(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], base: Path) -> None:
    stored = load_tensors(base)
    assert set(ours) == set(stored)
    worst = max(ours, key=lambda n: float((ours[n] - theirs[n]).abs().max()))
    assert float((ours[worst] - theirs[worst]).abs().max()) <= TOLERANCE, worst
    assert sum(not torch.equal(ours[n], stored[n]) for n in ours) >= 2, "the adapter changed nothing"


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_adapter_merged_with_task_arithmetic_equals_peft_merge_and_unload(
    case: str, bases: dict[str, Path], tmp_path: Path
) -> None:
    adapter = save_adapter("llama", bases["llama"], tmp_path / "adapter", **dict(CASES[case]))
    ours = merge(tmp_path, {"method": "task_arithmetic", "base_model": str(bases["llama"]),
                            "models": [{"model": str(adapter)}], "parameters": {"lambda": 1.0}})  # fmt: skip
    assert_equal_to_peft(ours, peft_merged(bases["llama"], adapter), bases["llama"])


def test_gpt2_conv1d_adapter_fan_in_fan_out_with_lora_bias_equals_peft(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(
        "gpt2",
        bases["gpt2"],
        tmp_path / "adapter",
        target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
        lora_bias=True,
    )
    ours = merge(
        tmp_path, {"method": "task_arithmetic", "base_model": str(bases["gpt2"]), "models": [{"model": str(adapter)}]}
    )
    assert_equal_to_peft(ours, peft_merged(bases["gpt2"], adapter), bases["gpt2"])


def test_mergekit_base_plus_adapter_syntax_and_two_adapters_with_ties(bases: dict[str, Path], tmp_path: Path) -> None:
    a = save_adapter("llama", bases["llama"], tmp_path / "a", seed=1, target_modules=LLAMA_TARGETS)
    b = save_adapter("llama", bases["llama"], tmp_path / "b", seed=2, target_modules=["q_proj"])
    base = str(bases["llama"])
    doc = {"merge_method": "ties", "base_model": base, "dtype": "float32", "parameters": {"density": 0.5},
           "models": [{"model": f"{base}+{a}", "parameters": {"weight": 1.0}}, {"model": f"{base}+{b}", "parameters": {"weight": 0.5}}]}  # fmt: skip
    merged = merge(tmp_path, doc)
    provenance = json.loads((tmp_path / "out" / "merge_provenance.json").read_text())
    assert [i["location"] for i in provenance["inputs"]] == [base, f"{base}+{a}", f"{base}+{b}"]
    assert set(provenance["inputs"][1]["files"]) == {
        "adapter_model.safetensors"
    }  # its base is the merge's: hashed once
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"],
        load_tensors(bases["llama"])["model.layers.0.self_attn.q_proj.weight"],
    )


def test_the_config_lists_both_parts_of_base_plus_adapter_for_the_allowlist() -> None:
    config = parse_config({"method": "linear", "models": [{"model": "s3://b/base+s3://b/adapter"}]})
    assert config.inputs() == [("models[0].model", "s3://b/base"), ("models[0].model", "s3://b/adapter")]


def test_an_adapter_trained_on_another_local_base_is_refused_naming_both(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    adapter = save_adapter("llama", bases["llama"], tmp_path / "adapter", target_modules=["q_proj"])
    other = tmp_path / "other"
    build_model("llama", seed=3).save_pretrained(other, safe_serialization=True)
    config = parse_config({"method": "task_arithmetic", "base_model": str(other), "models": [{"model": str(adapter)}]})
    with pytest.raises(
        ConfigError, match=rf"trained on {bases['llama']} .* not on base_model {other}; give model: {other}\+"
    ):
        build_plan(config, 10**9)
    explicit = parse_config(
        {"method": "task_arithmetic", "base_model": str(other), "models": [{"model": f"{other}+{adapter}"}]}
    )
    assert build_plan(explicit, 10**9).experts[0].lora is not None  # BASE+ADAPTER: the user says where it applies


def test_without_base_model_the_adapters_declared_local_base_is_used(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter("llama", bases["llama"], tmp_path / "adapter", target_modules=["q_proj"])
    ours = merge(tmp_path, {"method": "linear", "models": [{"model": str(adapter)}]})
    assert_equal_to_peft(ours, peft_merged(bases["llama"], adapter), bases["llama"])


def edit_config(adapter: Path, **changes: Any) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa' makes the adapter relative to a modified base"),
        ({"layer_replication": [[0, 1]]}, r"layer_replication \(it stacks copies of base layers\) is not supported"),
        ({"use_qalora": True}, "use_qalora"),
        ({"peft_type": "IA3"}, "peft_type 'IA3'; fda-merge merges LoRA adapters only"),
        ({"r": 8}, r"adapter_config.json says r = 8, its A has rank 4"),
        ({"rank_pattern": {"(": 2}}, "is not a regular expression"),
    ],
)
def test_adapters_we_cannot_merge_as_peft_does_are_refused_by_name(
    changes: dict[str, Any], message: str, bases: dict[str, Path], tmp_path: Path
) -> None:
    adapter = save_adapter("llama", bases["llama"], tmp_path / "adapter", target_modules=["q_proj"])
    edit_config(adapter, **changes)
    config = parse_config(
        {"method": "task_arithmetic", "base_model": str(bases["llama"]), "models": [{"model": str(adapter)}]}
    )
    with pytest.raises(CheckpointError, match=message):
        build_plan(config, 10**9)


def test_an_adapter_on_a_head_the_base_ties_to_its_embeddings_is_refused(tmp_path: Path) -> None:
    from tests.support.tiny_llama import save_tiny_llama

    base = save_tiny_llama(tmp_path / "tied")  # no lm_head.weight: tied
    untied = save_tiny_llama(tmp_path / "untied", tied=False)
    adapter = save_adapter("llama", untied, tmp_path / "adapter", target_modules=["lm_head"])
    config = parse_config(
        {"method": "task_arithmetic", "base_model": str(base), "models": [{"model": f"{base}+{adapter}"}]}
    )
    with pytest.raises(CheckpointError, match="changes 'lm_head.weight', which .* ties to its embeddings"):
        build_plan(config, 10**9)


def test_a_merge_written_as_a_lora_adapter_loads_in_peft_and_reproduces_a_low_rank_merge(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    import peft
    import transformers as tf

    adapter = save_adapter("llama", bases["llama"], tmp_path / "adapter", r=4, target_modules=LLAMA_TARGETS)
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump({
        "method": "task_arithmetic", "base_model": str(bases["llama"]), "models": [{"model": str(adapter)}], "lora_rank": 4,
    }))  # fmt: skip
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "extracted"), "--quiet"]) == 0
    files = {p.name for p in (tmp_path / "extracted").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "merge_provenance.json"} <= files
    assert "config.json" not in files
    model = tf.AutoModelForCausalLM.from_pretrained(bases["llama"], dtype=torch.float32)
    reloaded = peft.PeftModel.from_pretrained(model, tmp_path / "extracted").merge_and_unload().state_dict()
    expected = peft_merged(bases["llama"], adapter)  # a rank-4 update: rank 4 keeps all of it
    assert max(float((reloaded[n] - expected[n]).abs().max()) for n in expected) <= TOLERANCE
