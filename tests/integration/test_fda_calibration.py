"""models[].calibration: a few unlabelled examples per expert, validated at plan time and used by FDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fda_core.config import parse_config
from fda_core.errors import FdaMergeError
from fda_core.fda.blocks import first_block_inputs
from fda_core.merge.plan import build_plan
from tests.integration.test_fda_merge import FAST, merge
from tests.support.compare import load_tensors

TEXTS = ["tok1 tok2 tok3 tok4 tok5 tok6 tok7", "tok9 tok8 tok7 tok6 tok5 tok4", "tok3 tok3 tok2 tok1 tok0 tok11"]


def write_texts(path: Path, texts: list[str] = TEXTS) -> Path:
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    return path


def calibrated(base: Path, experts: list[Path], files: list[Path | None], **parameters) -> dict:
    return {
        "method": "fda",
        "base_model": str(base),
        "models": [
            {"model": str(e), **({"calibration": str(f)} if f else {})} for e, f in zip(experts, files, strict=True)
        ],
        "parameters": {**FAST, "init": "task_arithmetic", "init_parameters": {"lambda": 0.5}, **parameters},
    }


def test_augmented_adaptation_fits_the_examples_too(families, tmp_path: Path) -> None:
    base, experts = families["bert"]
    texts = write_texts(tmp_path / "a.jsonl")
    plain = merge(calibrated(base, experts, [None, None]), tmp_path / "plain")
    augmented = merge(calibrated(base, experts, [texts, None]), tmp_path / "augmented")
    width, tokens = 32, FAST["tokens"]
    per_block = [layer["adaptation"]["targets"] for layer in augmented.metrics["fda"]["layers"]]
    extra = len(TEXTS) * tokens * width  # every text has ≥ 5 tokens with [CLS]
    assert per_block == [layer["adaptation"]["targets"] + extra for layer in plain.metrics["fda"]["layers"]]
    a, b = load_tensors(tmp_path / "plain"), load_tensors(tmp_path / "augmented")
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(a[name], b[name])
    provenance = json.loads((tmp_path / "augmented" / "merge_provenance.json").read_text())
    assert [i["location"] for i in provenance["inputs"] if i["role"] == "calibration"] == [str(texts)]


def test_init_starts_a_tasks_anchors_from_its_examples_at_each_block(families, tmp_path: Path) -> None:
    """With no construction steps the anchors are the initial ones: the examples' block inputs first."""
    base, experts = families["bert"]
    from tests.support.tiny_models import build_model

    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3], [2, 20, 21, 22, 23, 24, 3]])
    save_file({"inputs": ids}, str(tmp_path / "ids.safetensors"))
    config = calibrated(
        base, experts, [tmp_path / "ids.safetensors", None], calibration_use="init", construction_steps=0
    )
    merge(config, tmp_path / "out")
    tensors = load_tensors(base)
    layout_config = json.loads((base / "config.json").read_text())
    expected = first_block_inputs(layout_config, list(tensors), tensors.__getitem__, ids[:, : FAST["tokens"]])
    with safe_open(str(tmp_path / "out" / "anchors" / "block-000.safetensors"), "pt") as handle:
        torch.testing.assert_close(handle.get_tensor("task0")[:2], expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(handle.get_tensor("task1")[:2], expected)
    model = build_model("bert")
    model.load_state_dict(tensors)
    with torch.no_grad():
        second = model(input_ids=ids[:, : FAST["tokens"]], output_hidden_states=True).hidden_states[1]
    with safe_open(str(tmp_path / "out" / "anchors" / "block-001.safetensors"), "pt") as handle:
        torch.testing.assert_close(handle.get_tensor("task0")[:2], second, atol=1e-4, rtol=1e-4)


def test_init_with_examples_changes_the_anchor_cache_key(families, tmp_path: Path) -> None:
    base, experts = families["bert"]
    cache = tmp_path / "cache"
    merge(calibrated(base, experts, [None, None], calibration_use="init"), tmp_path / "a", anchor_cache=cache)
    again = merge(
        calibrated(base, experts, [write_texts(tmp_path / "a.jsonl"), None], calibration_use="init"),
        tmp_path / "b",
        anchor_cache=cache,
    )
    assert [task["cached"] for task in again.metrics["fda"]["layers"][0]["tasks"]] == [False, True]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": 3}\n', r"line 2: expected a JSON string"),
        ("bad.jsonl", b"not json\n", r"line 1: not a JSON value"),
        ("empty.jsonl", b"\n\n", r"has no examples"),
        ("many.jsonl", b'"x"\n' * 1025, r"more than 1024 examples"),
        ("latin.jsonl", '"caf\xe9"'.encode("latin-1"), r"not UTF-8"),
        ("inputs.bin", b"\x80\x04", r"must be a \.jsonl file of texts or a \.safetensors"),
        ("short.safetensors", b"\x01\x00", r"truncated"),
    ],
)
def test_a_bad_calibration_file_is_refused_at_plan_time_naming_the_field(
    families, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    base, experts = families["bert"]
    (tmp_path / name).write_bytes(content)
    config = parse_config(calibrated(base, experts, [None, tmp_path / name]))
    with pytest.raises(FdaMergeError, match=rf"models\[1\]\.calibration: .*{message}"):
        build_plan(config, 1 << 30)


def test_calibration_tensors_are_checked_for_name_dtype_and_values(families, tmp_path: Path) -> None:
    base, experts = families["bert"]
    for tensors, message in [
        ({"x": torch.zeros(2, 5)}, "exactly one tensor named 'inputs'"),
        ({"inputs": torch.zeros(5)}, r"must be \(examples, …\)"),
        ({"inputs": torch.full((2, 5, 32), float("nan"))}, "NaN or infinite"),
    ]:
        save_file(tensors, str(tmp_path / "c.safetensors"))
        with pytest.raises(FdaMergeError, match=message):
            build_plan(parse_config(calibrated(base, experts, [tmp_path / "c.safetensors", None])), 1 << 30)


def test_calibration_is_refused_for_methods_that_do_not_use_it(families, tmp_path: Path) -> None:
    base, experts = families["bert"]
    config = calibrated(base, experts, [write_texts(tmp_path / "a.jsonl"), None])
    config = {**config, "method": "ties", "parameters": {}}
    with pytest.raises(FdaMergeError, match=r"models\[0\]\.calibration: calibration inputs are used by method: fda"):
        build_plan(parse_config(config), 1 << 30)


def test_token_ids_shorter_than_the_anchors_are_refused_by_file(families, tmp_path: Path) -> None:
    base, experts = families["bert"]
    save_file({"inputs": torch.zeros(2, 3, dtype=torch.long)}, str(tmp_path / "ids.safetensors"))
    with pytest.raises(FdaMergeError, match=r"ids\.safetensors: token ids must be \(examples, ≥ 5\)"):
        merge(calibrated(base, experts, [tmp_path / "ids.safetensors", None]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
