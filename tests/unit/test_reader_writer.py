"""Positioned reads return what safetensors itself reads; the streaming writer round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fda_core.checkpoints.header import DTYPE_NAMES
from fda_core.checkpoints.layout import inspect_checkpoint
from fda_core.checkpoints.reader import TensorReader
from fda_core.checkpoints.writer import OutputTensor, ShardedWriter, plan_shards

SAMPLES = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).to(torch.bfloat16),
    "f16": torch.randn(2, 2).to(torch.float16),
    "f64": torch.randn(4).double(),
    "i64": torch.arange(6).reshape(2, 3),
    "mask": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 4),
}


def test_reader_matches_safe_open_for_every_dtype(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(SAMPLES, str(path))
    reader = TensorReader(inspect_checkpoint(str(path)))
    with safe_open(str(path), "pt") as handle:
        for name in SAMPLES:
            ours, theirs = reader.read(name), handle.get_tensor(name)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and torch.equal(ours, theirs), name
    reader.close()


def write_all(
    directory: Path, tensors: dict[str, torch.Tensor], shard_bytes: int, metadata: dict[str, str]
) -> ShardedWriter:
    outputs = [OutputTensor(n, DTYPE_NAMES[t.dtype], tuple(t.shape)) for n, t in tensors.items()]
    writer = ShardedWriter(directory, plan_shards(outputs, shard_bytes), metadata)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    return writer


def test_streamed_shards_load_with_safetensors_and_carry_final_metadata(tmp_path: Path) -> None:
    tensors = {f"layer{i}.weight": torch.randn(16, 16) for i in range(5)}  # 1 KiB each
    writer = write_all(tmp_path, tensors, shard_bytes=2100, metadata={"fda_merge": "0" * 64})
    shards = writer.finish({"fda_merge": "f" * 64})
    assert [s.file for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    for shard in shards:
        with safe_open(str(tmp_path / shard.file), "pt") as handle:
            assert handle.metadata() == {"fda_merge": "f" * 64}
            for name in handle.keys():
                assert torch.equal(handle.get_tensor(name), tensors[name])


def test_a_single_shard_has_no_index(tmp_path: Path) -> None:
    write_all(tmp_path, {"w": torch.ones(3)}, shard_bytes=10**9, metadata={}).finish({})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_writer_refuses_a_tensor_out_of_plan_order(tmp_path: Path) -> None:
    outputs = [OutputTensor("a", "F32", (2,)), OutputTensor("b", "F32", (2,))]
    writer = ShardedWriter(tmp_path, plan_shards(outputs, 10**9), {})
    with pytest.raises(RuntimeError, match="expected"):
        writer.write("b", torch.zeros(2))
    writer.abort()


def test_tensor_larger_than_the_shard_limit_gets_its_own_shard() -> None:
    outputs = [
        OutputTensor("small", "F32", (10,)),
        OutputTensor("big", "F32", (1000,)),
        OutputTensor("tail", "F32", (10,)),
    ]
    assert [[t.name for t in shard] for shard in plan_shards(outputs, 100)] == [["small"], ["big"], ["tail"]]
