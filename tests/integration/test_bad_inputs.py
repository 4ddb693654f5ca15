"""Bad input: a one-line error naming the file and tensor, a non-zero exit, and no output left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fda_core.config import parse_config
from fda_core.errors import MergeCancelled
from fda_core.merge.run import run_merge
from tests.support.cli import run_cli, write_config


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def assert_failed_cleanly(result, out: Path, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging folder left behind"


def merge(tmp: Path, base: Path, experts: list[Path], method: str = "task_arithmetic"):
    out = tmp / "out"
    return run_cli("merge", str(write_config(tmp / "c.yaml", method, base, experts)), "--out", str(out)), out


def test_pickle_checkpoint_is_refused(llama, tmp_path: Path) -> None:
    base, experts = llama
    pickled = tmp_path / "expert.bin"
    torch.save({"w": torch.zeros(2)}, pickled)
    result, out = merge(tmp_path, base, [experts[0], pickled])
    assert_failed_cleanly(result, out, str(pickled), "pickled checkpoint refused", "convert it to safetensors")


def test_shape_mismatch_names_the_tensor_both_models_and_both_shapes(llama, tmp_path: Path) -> None:
    base, experts = llama
    wrong = copy_model(experts[1], tmp_path / "wrong-vocab")
    tensors = load_file(str(wrong / "model.safetensors"))
    tensors["model.embed_tokens.weight"] = torch.zeros(100, 32)
    save_file(tensors, str(wrong / "model.safetensors"))
    result, out = merge(tmp_path, base, [experts[0], wrong])
    assert_failed_cleanly(result, out, "'model.embed_tokens.weight'", "[96, 32]", "[100, 32]", str(base), str(wrong))


def test_missing_tensor_names_the_tensor_and_the_model_lacking_it(llama, tmp_path: Path) -> None:
    base, experts = llama
    partial = copy_model(experts[0], tmp_path / "partial")
    tensors = load_file(str(partial / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(partial / "model.safetensors"))
    result, out = merge(tmp_path, base, [partial, experts[1]])
    assert_failed_cleanly(result, out, "'model.layers.1.mlp.down_proj.weight'", "missing from", str(partial))


def test_truncated_file_names_the_file_and_tensor(llama, tmp_path: Path) -> None:
    base, experts = llama
    cut = copy_model(experts[0], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    result, out = merge(tmp_path, base, [cut, experts[1]])
    assert_failed_cleanly(result, out, f"{cut}/model.safetensors", "truncated", "tensor '")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"method": "tie"}, "unknown merge method 'tie'; available:"),
        ({"method": "slerp"}, "method 'slerp' takes exactly 1 model(s) besides base_model, got 2"),
        ({"parameters": {"density": 1.5}}, "parameters.density: Input should be less than or equal to 1"),
        ({"parameters": {"densty": 0.5}}, "parameters.densty: unknown parameter of 'ties'"),
        ({"base_model": None}, "method 'ties' needs base_model"),
    ],
)
def test_config_errors_name_the_field(llama, tmp_path: Path, change: dict, fragment: str) -> None:
    base, experts = llama
    config = write_config(tmp_path / "c.yaml", "ties", base, experts)
    import yaml

    doc = {**yaml.safe_load(config.read_text()), **change}
    config.write_text(yaml.safe_dump(doc))
    result = run_cli("merge", str(config), "--out", str(tmp_path / "out"))
    assert_failed_cleanly(result, tmp_path / "out", str(config), fragment)


def test_existing_output_is_kept_unless_overwrite(llama, tmp_path: Path) -> None:
    base, experts = llama
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    config = write_config(tmp_path / "c.yaml", "task_arithmetic", base, experts)
    result = run_cli("merge", str(config), "--out", str(out))
    assert result.returncode != 0 and "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"
    assert run_cli("merge", str(config), "--out", str(out), "--overwrite").returncode == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()


def test_a_merge_stopped_midway_leaves_no_output(llama, tmp_path: Path) -> None:
    base, experts = llama
    config = parse_config({"method": "ties", "base_model": str(base), "models": [{"model": str(e)} for e in experts]})
    calls = iter(range(1000))
    with pytest.raises(MergeCancelled, match="after 10 of 30 tensors"):
        run_merge(config, tmp_path / "out", should_cancel=lambda: next(calls) >= 10)
    assert list(tmp_path.iterdir()) == []


def test_overflowing_half_precision_output_is_an_error_not_inf(tmp_path: Path) -> None:
    for name, value in (("base", 1e5), ("a", 2e5), ("b", 3e5)):
        (tmp_path / name).mkdir()
        save_file({"w": torch.full((4,), value, dtype=torch.bfloat16)}, str(tmp_path / name / "model.safetensors"))
    config = write_config(
        tmp_path / "c.yaml", "task_arithmetic", tmp_path / "base", [tmp_path / "a", tmp_path / "b"], dtype="float16"
    )
    result = run_cli("merge", str(config), "--out", str(tmp_path / "out"))
    assert_failed_cleanly(result, tmp_path / "out", "tensor 'w'", "overflow float16")


@pytest.mark.parametrize(
    ("args", "fragment"), [(["--device", "tpu"], "not one of cpu, cuda, cuda:N"), (["--seed", "-5"], "seed")]
)
def test_bad_command_line_values_are_one_line_errors(llama, tmp_path: Path, args: list[str], fragment: str) -> None:
    base, experts = llama
    config = write_config(tmp_path / "c.yaml", "ties", base, experts)
    assert_failed_cleanly(
        run_cli("merge", str(config), "--out", str(tmp_path / "out"), *args), tmp_path / "out", fragment
    )


def test_an_integer_buffer_missing_from_an_expert_is_kept_from_the_base(llama, tmp_path: Path) -> None:
    """BERT checkpoints saved by older transformers carry embeddings.position_ids; newer ones do not."""
    base, experts = llama
    with_ids = copy_model(base, tmp_path / "base-with-ids")
    tensors = load_file(str(with_ids / "model.safetensors"))
    tensors["model.position_ids"] = torch.arange(8).unsqueeze(0)
    save_file(tensors, str(with_ids / "model.safetensors"))
    result, out = merge(tmp_path, with_ids, experts)
    assert result.returncode == 0, result.stderr
    from tests.support.compare import load_tensors

    assert torch.equal(load_tensors(out)["model.position_ids"], torch.arange(8).unsqueeze(0))
