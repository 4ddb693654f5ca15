"""Header validation catches corrupt files before any tensor is allocated."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fda_core.checkpoints.layout import inspect_checkpoint
from fda_core.errors import CheckpointError, PickleCheckpointError


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_valid_file_lists_every_tensor_with_dtype_and_shape(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, str(tmp_path / "m.safetensors"))
    layout = inspect_checkpoint(str(tmp_path / "m.safetensors"))
    assert {n: (t.dtype, t.shape) for n, t in layout.tensors.items()} == {"a": ("F32", (2, 3)), "b": ("BF16", (4,))}


def test_truncated_file_names_the_file_and_the_last_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"first": torch.zeros(8), "last.weight": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"m\.safetensors: truncated: tensor 'last\.weight' ends at byte"):
        inspect_checkpoint(str(path))


def test_unknown_dtype_is_refused_with_the_tensor_name(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "m.safetensors", {"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16
    )
    with pytest.raises(CheckpointError, match="tensor 'w': unknown dtype 'F128'"):
        inspect_checkpoint(str(path))


def test_offsets_that_disagree_with_the_shape_are_refused(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "m.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    with pytest.raises(
        CheckpointError, match=r"tensor 'w': data_offsets \[0, 8\] hold 8 bytes, but F32 \(4,\) needs 16"
    ):
        inspect_checkpoint(str(path))


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(CheckpointError, match="overlaps"):
        inspect_checkpoint(str(write_raw(tmp_path / "m.safetensors", header, b"\0" * 12)))


def test_absurd_header_length_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="header claims 1099511627776 bytes"):
        inspect_checkpoint(str(path))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickled_file_is_refused_with_a_conversion_hint(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x02}q\x00.")  # a pickle; it must never be loaded
    with pytest.raises(PickleCheckpointError, match="convert it to safetensors"):
        inspect_checkpoint(str(path))


def test_folder_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(PickleCheckpointError, match=r"only pickled weights \(pytorch_model\.bin\)"):
        inspect_checkpoint(str(tmp_path))


def test_sharded_folder_is_read_through_its_index(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    layout = inspect_checkpoint(str(tmp_path))
    assert {n: t.file for n, t in layout.tensors.items()} == weight_map


def test_index_that_points_at_the_wrong_shard_is_refused(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "s2.safetensors"))
    weight_map = {"a": "s2.safetensors", "b": "s2.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="maps tensor 'a' to s2.safetensors"):
        inspect_checkpoint(str(tmp_path))


def test_file_uri_is_accepted(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    assert set(inspect_checkpoint(f"file://{tmp_path}/m.safetensors").tensors) == {"a"}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}, b"", "invalid shape"),
        ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
        (
            {"__metadata__": ["x"], "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "__metadata__",
        ),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "unexpected bytes"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(tmp_path: Path, header: dict, data: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(str(write_raw(tmp_path / "m.safetensors", header, data)))


def test_deeply_nested_header_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    raw = b"[" * 100_000
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="unreadable safetensors header"):
        inspect_checkpoint(str(tmp_path / "m.safetensors"))


def test_a_checkpoint_without_tensors_is_refused(tmp_path: Path) -> None:
    save_file({}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="holds no tensors"):
        inspect_checkpoint(str(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "missing.safetensors"])
def test_index_entries_must_be_files_of_the_folder(tmp_path: Path, target: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": target}}))
    with pytest.raises(CheckpointError, match="which is not a file of this folder"):
        inspect_checkpoint(str(folder))


def test_an_empty_weight_map_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(CheckpointError, match="weight_map must be a non-empty object"):
        inspect_checkpoint(str(tmp_path))
