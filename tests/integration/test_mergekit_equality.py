"""Our merges equal mergekit 0.1.5's on the same YAML, tensor by tensor (max |Δ| ≤ 1e-5), for every method.

Random methods (DARE, DELLA) draw their masks from a generator seeded by (seed, tensor name); mergekit draws
from torch's global generator, seeded once per run, in its task order. The test gives mergekit our seeding
policy — the global generator is reseeded with our per-tensor seed before each of its tensors — and nothing
else: its YAML reading, parameter resolution and methods run as shipped, and then draw the same masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cli.main import main as fdamerge
from fda_core.merge.seeding import named_seed
from tests.support.compare import load_tensors, max_abs_difference

pytestmark = pytest.mark.mergekit
TOLERANCE = 1e-5
SEED = 0  # our default seed: the YAML files here set none

# models: each expert's parameters; base: where base_model goes ("unlisted": only base_model, "listed": also
# first among the models, "none": no base_model); method: when the case name is not the method's; slices: the
# models as one slice's sources over every layer (mergekit appends no unlisted base to a slice).
CASES: dict[str, dict[str, Any]] = {
    "linear": dict(models=[{"weight": 0.7}, {"weight": 0.3}], parameters={}, base="weighted"),
    "task_arithmetic": dict(models=[{"weight": 0.6}, {"weight": 0.9}], parameters={"lambda": 0.8}),
    "ties": dict(models=[{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.3}], parameters={"lambda": 1.0}),
    "slerp": dict(
        models=[{}],
        parameters={"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]},
        base="listed",
    ),
    "dare_linear": dict(models=[{"weight": 0.6, "density": 0.5}, {"weight": 0.9, "density": 0.7}], parameters={}),
    "dare_ties": dict(
        models=[{"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.6}], parameters={"normalize": True}
    ),
    "breadcrumbs": dict(  # the second model has no density: mergekit's default 1.0, not ours
        models=[{"weight": 1.0, "density": 0.8, "gamma": 0.05}, {"weight": 0.5}], parameters={"lambda": 0.9}
    ),
    "breadcrumbs_ties": dict(
        models=[{"weight": 1.0, "density": 0.7, "gamma": 0.02}, {"weight": 0.8, "density": 0.6}],
        parameters={"rescale": True, "normalize": True},
    ),
    "della": dict(
        models=[{"weight": 1.0, "density": 0.5, "epsilon": 0.1}, {"weight": 0.5, "density": 0.4, "epsilon": 0.2}],
        parameters={"lambda": 0.9},
    ),
    "della_linear": dict(
        models=[{"weight": 0.7, "density": 0.6}, {"weight": 0.4, "density": [0.3, 0.7]}],
        parameters={"epsilon": 0.1, "normalize": True},
        base="listed",
    ),
    "sce": dict(models=[{}, {}], parameters={"select_topk": 0.6}),
    "sce_all": dict(method="sce", models=[{"weight": 1.0}, {"weight": 0.3}], parameters={}),  # weight: ignored
    "nuslerp": dict(models=[{"weight": 0.3}, {"weight": 0.9}], parameters={}),
    "nuslerp_rows_no_base": dict(
        method="nuslerp", models=[{"weight": 1.0}, {"weight": 0.5}], parameters={"nuslerp_flatten": False}, base="none"
    ),
    "multislerp": dict(models=[{"weight": 1.0}, {"weight": 0.5}], parameters={}),
    "multislerp_no_base": dict(
        method="multislerp",
        models=[{"weight": 0.2}, {"weight": 0.5}],
        parameters={"normalize_weights": False},
        base="none",
    ),
    "karcher": dict(models=[{}, {}], parameters={"max_iter": 20}),  # the unlisted base is averaged in, as mergekit
    "nearswap": dict(models=[{}], parameters={"t": [0.005, 0.03]}),
    "arcee_fusion": dict(models=[{}], parameters={}),
    "ram": dict(models=[{}, {}], parameters={"epsilon": 0.01}),
    "ramplus_tl": dict(models=[{}, {}], parameters={"epsilon": 0.02, "r": 0.5, "alpha": 0.3}),
    "model_stock": dict(models=[{}, {}], parameters={}),  # independent noise: some cosines < 0, so t < 0
    "model_stock_filter_wise": dict(method="model_stock", models=[{}, {}], parameters={"filter_wise": True}),
    "passthrough": dict(models=[{"scale": 0.5}], parameters={}, base="none"),
    "karcher_slice": dict(method="karcher", models=[{}, {}], parameters={}, base="listed", slices=True),
    "linear_slice": dict(method="linear", models=[{"weight": 0.7}, {"weight": 0.3}], parameters={}, slices=True),
}


def mergekit_config(case: dict[str, Any], base: Path, experts: list[Path]) -> dict[str, Any]:
    models = [{"model": str(path), "parameters": params} for path, params in zip(experts, case["models"])]
    where = case.get("base", "unlisted")
    if where == "listed":
        models.insert(0, {"model": str(base)})
    if where == "weighted":  # linear averages the base in: mergekit wants its weight
        models.append({"model": str(base), "parameters": {"weight": 0.5}})
    config = {"merge_method": case.get("method", case["name"]), "dtype": "float32", "parameters": case["parameters"]}
    if case.get("slices"):
        layers = [0, num_layers(base)]
        config["slices"] = [{"sources": [{"layer_range": layers} | source for source in models]}]
    else:
        config["models"] = models
    return config | ({} if where == "none" else {"base_model": str(base)})


def num_layers(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    return config.get("num_hidden_layers") or config["n_layer"]


@pytest.fixture
def mergekit_seeded_per_tensor(monkeypatch: pytest.MonkeyPatch):
    """mergekit, with torch's global generator seeded as ours is before each tensor it merges."""
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

    shipped = ExecuteMergeMethodTask.execute

    def execute(self, *args, **kwargs):
        torch.manual_seed(named_seed(SEED, self.output_weight.name))
        return shipped(self, *args, **kwargs)

    monkeypatch.setattr(ExecuteMergeMethodTask, "execute", execute)

    def run(config: dict, out: Path) -> None:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        run_merge(
            MergeConfiguration.model_validate(config),
            str(out),
            options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False),
        )

    return run


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_equals_mergekit(name: str, family: str, families, mergekit_seeded_per_tensor, tmp_path: Path) -> None:
    base, experts = families[family]
    case = {"name": name, **CASES[name]}
    config = mergekit_config(case, base, experts[: len(case["models"])])
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))

    mergekit_seeded_per_tensor(config, tmp_path / "mergekit")
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "ours"), "--quiet"]) == 0

    ours, theirs = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "mergekit")
    differences = max_abs_difference(ours, theirs)
    worst = max(differences, key=differences.get)
    assert differences[worst] <= TOLERANCE, f"{worst}: max |Δ| = {differences[worst]:.3g}"
    assert any(not torch.equal(ours[n], b) for n, b in load_tensors(base).items()), "the merge changed nothing"


def test_every_mergekit_method_has_an_equality_case() -> None:
    from mergekit.merge_methods.registry import registered_methods

    covered = {case.get("method", name) for name, case in CASES.items()}
    assert {method.spec.name for method in registered_methods()} - covered == set()


def stack_config(first: Path, second: Path, layers: int) -> dict[str, Any]:
    """A frankenmerge: every layer of `first`, then `second`'s layers from 1 on at half scale."""
    return {
        "merge_method": "passthrough",
        "dtype": "float32",
        "slices": [
            {"sources": [{"model": str(first), "layer_range": [0, layers]}]},
            {"sources": [{"model": str(second), "layer_range": [1, layers], "parameters": {"scale": 0.5}}]},
        ],
    }


@pytest.mark.parametrize("family", ["llama", "gpt2", "tied_llama"])
def test_a_multi_slice_passthrough_equals_mergekit(family: str, families, tmp_path: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    if family == "tied_llama":
        from tests.support.tiny_llama import save_tiny_llama

        first, second = save_tiny_llama(tmp_path / "a"), save_tiny_llama(tmp_path / "b", seed=1)
    else:
        _, (first, second) = families[family]
    layers = num_layers(first)
    config = stack_config(first, second, layers)
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    run_merge(
        MergeConfiguration.model_validate(config),
        str(tmp_path / "mergekit"),
        options=MergeOptions(copy_tokenizer=False),
    )
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "ours"), "--quiet"]) == 0

    ours, theirs = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "mergekit")
    differences = max_abs_difference(ours, theirs)  # also: the same tensor names, so the head is (not) there alike
    assert max(differences.values()) <= TOLERANCE
    ours_config = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs_config = json.loads((tmp_path / "mergekit" / "config.json").read_text())
    key = "num_hidden_layers" if "num_hidden_layers" in ours_config else "n_layer"
    assert ours_config[key] == theirs_config[key] == 2 * layers - 1
    tied = family in ("gpt2", "tied_llama")  # GPT-2 ties its head too: neither writes lm_head
    assert ours_config["tie_word_embeddings"] is tied and ("lm_head.weight" not in ours) is tied
    assert bool(theirs_config.get("tie_word_embeddings", True)) is tied
