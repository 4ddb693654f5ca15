"""`fdamerge merge` runs every method on tiny BERT, GPT-2, LLaMA and ViT models; outputs load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cli.main import main as fdamerge
from fda_core.methods import method_names
from tests.support.cli import run_cli, write_config
from tests.support.compare import load_tensors

AUTO_CLASSES = {
    "bert": "AutoModel",
    "gpt2": "AutoModelForCausalLM",
    "llama": "AutoModelForCausalLM",
    "vit": "AutoModel",
}
FAST = {
    "wudi": {"steps": 20},
    "fda": {"anchors": 8, "construction_steps": 10, "adaptation_epochs": 2},
    "nearswap": {"t": 0.01},  # required, as in mergekit
}
ONE_MODEL = {"slerp", "nearswap", "arcee_fusion", "passthrough"}


def config_for(method: str, base: Path, experts: list[Path], tmp: Path, **extra) -> Path:
    inputs = experts[:1] if method in ONE_MODEL else experts
    base_model = None if method in ("linear", "passthrough") else base
    extra.setdefault("parameters", FAST.get(method, {}))
    return write_config(tmp / f"{method}.yaml", method, base_model, inputs, **extra)


def load_with_transformers(family: str, path: Path):
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[family])
    return auto.from_pretrained(path, use_safetensors=True, trust_remote_code=False, local_files_only=True)


@pytest.mark.parametrize("family", sorted(AUTO_CLASSES))
@pytest.mark.parametrize("method", method_names())
def test_every_method_merges_every_family_into_a_loadable_model(
    method: str, family: str, families, tmp_path: Path
) -> None:
    base, experts = families[family]
    out = tmp_path / "out"
    assert fdamerge(["merge", str(config_for(method, base, experts, tmp_path)), "--out", str(out), "--quiet"]) == 0
    model = load_with_transformers(family, out)
    assert not any(torch.isnan(p).any() or torch.isinf(p).any() for p in model.parameters())
    assert set(load_tensors(out)) == set(load_tensors(base))


def test_summary_line_and_exit_code_from_a_real_process(llama, tmp_path: Path) -> None:
    base, experts = llama
    result = run_cli("merge", str(config_for("ties", base, experts, tmp_path)), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("merged 30 tensors") and "with ties" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_output_records_provenance_in_every_shard(llama, tmp_path: Path) -> None:
    base, experts = llama
    out = tmp_path / "out"
    config = config_for("dare_ties", base, experts, tmp_path, seed=11)
    assert fdamerge(["merge", str(config), "--out", str(out), "--shard-size", "40kB", "--quiet"]) == 0
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    from fda_core.checkpoints.sources import sha256_file

    for shard in shards:
        with safe_open(str(shard), "pt") as handle:
            provenance = json.loads(handle.metadata()["fda_merge"])
        assert provenance["method"] == "dare_ties" and provenance["seed"] == 11
        assert provenance["fda_merge_version"]
        assert [i["sha256"] for i in provenance["inputs"]] == [
            sha256_file(p / "model.safetensors") for p in [base, *experts]
        ]
    card = (out / "README.md").read_text()
    assert all(str(p) in card for p in [base, *experts]) and "dare_ties" in card
    assert (out / "config.json").exists() and (out / "generation_config.json").exists()


def test_same_seed_gives_identical_files_and_another_seed_does_not(llama, tmp_path: Path) -> None:
    base, experts = llama
    config = config_for("dare_linear", base, experts, tmp_path, parameters={"density": 0.5})
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert fdamerge(["merge", str(config), "--out", str(tmp_path / name), "--seed", seed, "--quiet"]) == 0
    read = lambda name: (tmp_path / name / "model.safetensors").read_bytes()  # noqa: E731
    assert read("a") == read("b")
    assert load_tensors(tmp_path / "a").keys() == load_tensors(tmp_path / "c").keys() and read("a") != read("c")


def test_bfloat16_output_dtype_is_written_and_recorded_in_config(families, tmp_path: Path) -> None:
    base, experts = families["bert"]
    out = tmp_path / "out"
    config = config_for("task_arithmetic", base, experts, tmp_path, dtype="bfloat16")
    assert fdamerge(["merge", str(config), "--out", str(out), "--quiet"]) == 0
    assert {t.dtype for t in load_tensors(out).values() if t.is_floating_point()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "vocab.txt").read_text() == (base / "vocab.txt").read_text()


def test_a_mergekit_yaml_runs_unchanged(llama, tmp_path: Path) -> None:
    base, experts = llama
    (tmp_path / "mk.yaml").write_text(
        f"""merge_method: dare_ties
base_model: {base}
models:
  - model: {base}
  - model: {experts[0]}
    parameters: {{weight: 0.5, density: 0.6}}
  - model: {experts[1]}
    parameters: {{weight: 0.5, density: 0.6}}
parameters: {{int8_mask: true, normalize: false}}
dtype: float32
"""
    )
    assert fdamerge(["merge", str(tmp_path / "mk.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    provenance = json.loads((tmp_path / "out" / "merge_provenance.json").read_text())
    assert provenance["config"]["parameters"] == {"normalize": False, "rescale": "l1"}
    assert [m["model"] for m in provenance["config"]["models"]] == [str(e) for e in experts]


def test_a_mergekit_slice_over_other_layers_than_the_model_has_is_refused_before_any_merge(
    llama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, experts = llama
    layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    slices = "\n".join(f"      - model: {m}\n        layer_range: [0, {layers + 1}]" for m in (base, *experts))
    (tmp_path / "mk.yaml").write_text(
        f"merge_method: task_arithmetic\nbase_model: {base}\nslices:\n  - sources:\n{slices}\n"
    )
    assert fdamerge(["merge", str(tmp_path / "mk.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) != 0
    error = capsys.readouterr().err
    assert (
        f"covers {layers + 1} layers" in error
        and f"has {layers} (config.json num_hidden_layers); give layer_range [0, {layers}]" in error
    )
    assert not (tmp_path / "out").exists()
    (tmp_path / "mk.yaml").write_text((tmp_path / "mk.yaml").read_text().replace(f"{layers + 1}]", f"{layers}]"))
    assert fdamerge(["merge", str(tmp_path / "mk.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0


def test_task_vectors_of_very_different_sizes_are_warned_about_and_still_merged(llama, tmp_path: Path) -> None:
    from tests.support.tiny_models import save_expert

    base, experts = llama
    loud = save_expert("llama", tmp_path / "loud", seed=9, scale=0.2)  # 10× the others' task vector
    config = config_for("tsv", base, [experts[0], loud], tmp_path)
    result = run_cli("merge", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"warning: task vectors differ in size by (9\.9|10\.\d)×", result.stderr), result.stderr
    assert "models[1]" in result.stderr
    quiet = run_cli("merge", str(config_for("tsv", base, experts, tmp_path)), "--out", str(tmp_path / "even"))
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


def _frozen_outside(base: Path, expert: Path, out: Path, frozen: tuple[str, ...]) -> Path:
    """A copy of `expert` whose `frozen` tensors are the base's (a fine-tune that froze them, or a LoRA
    adapter that does not target them)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(expert, out)
    weights, original = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    for name in frozen:
        weights[name] = original[name]
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_the_size_check_samples_what_the_experts_change_not_one_frozen_embedding(
    llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one tensor is larger than the sample budget (SmolLM2's 113 MB embedding against 64 MB), the
    sample was that tensor alone; frozen in every expert (or untouched by their LoRA adapters), it made
    every merge warn "differ in size by inf×". Large tensors are now sampled last, and experts that all
    leave the sample unchanged are not compared."""
    import fda_core.merge.norm_check as norm_check
    from fda_core.checkpoints.inputs import open_reader
    from fda_core.config import load_config
    from fda_core.merge.plan import build_plan

    base, experts = llama
    frozen = ("model.embed_tokens.weight", "lm_head.weight")
    tuned = [_frozen_outside(base, e, tmp_path / f"frozen{i}", frozen) for i, e in enumerate(experts)]
    monkeypatch.setattr(norm_check, "SAMPLE_BYTES", 12_000)  # below the 12,288-byte embedding, as SmolLM2's

    def warning_for(models: list[Path]) -> str | None:
        plan = build_plan(load_config(config_for("tsv", base, models, tmp_path)), 1 << 30)
        readers = [open_reader(layout) for layout in plan.inputs]
        names = norm_check.sampled_tensors(plan, norm_check.SAMPLE_BYTES)
        assert names and not set(names) & set(frozen), names
        return norm_check.norm_warning(plan, readers)

    assert warning_for(tuned) is None
    assert warning_for([base, base]) is None  # nothing changed anywhere: nothing to compare
    unchanged = warning_for([base, tuned[0]])
    assert unchanged is not None and "models[0] changes none of the" in unchanged, unchanged
