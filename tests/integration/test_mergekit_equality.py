"""Our merges equal mergekit 0.1.5's on the same YAML, tensor by tensor (max |Δ| ≤ 1e-5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.main import main as fdamerge
from tests.support.compare import load_tensors, max_abs_difference

pytestmark = pytest.mark.mergekit
TOLERANCE = 1e-5


def run_mergekit(config: dict, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False),
    )


CASES = {
    "linear": dict(models=[{"weight": 0.7}, {"weight": 0.3}], parameters={}),
    "task_arithmetic": dict(models=[{"weight": 0.6}, {"weight": 0.9}], parameters={"lambda": 0.8}),
    "ties": dict(models=[{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.3}], parameters={"lambda": 1.0}),
    "slerp": dict(models=[{}], parameters={"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]}),
}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", sorted(CASES))
def test_merge_equals_mergekit(method: str, family: str, families, tmp_path: Path) -> None:
    base, experts = families[family]
    case = CASES[method]
    inputs = experts[: len(case["models"])]
    config = {
        "merge_method": method,
        "base_model": str(base),
        "dtype": "float32",
        "parameters": case["parameters"],
        "models": [{"model": str(path), "parameters": params} for path, params in zip(inputs, case["models"])],
    }
    if method == "slerp":  # mergekit's usual slerp file lists the base among the models
        config["models"].insert(0, {"model": str(base)})
    if method == "linear":
        config["models"].append({"model": str(base), "parameters": {"weight": 0.5}})
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))

    run_mergekit(config, tmp_path / "mergekit")
    assert fdamerge(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "ours"), "--quiet"]) == 0

    differences = max_abs_difference(load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "mergekit"))
    worst = max(differences, key=differences.get)
    assert differences[worst] <= TOLERANCE, f"{worst}: max |Δ| = {differences[worst]:.3g}"
