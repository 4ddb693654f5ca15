"""GGUF headers are validated before anything is allocated: every refusal names the file and the fault."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fda_core.checkpoints.gguf import permute_rotary, unpermute_rotary
from fda_core.checkpoints.gguf_header import read_gguf
from fda_core.checkpoints.layout import InputLimits, inspect_checkpoint
from fda_core.checkpoints.sources import open_source
from fda_core.errors import CheckpointError, InputLimitError


def string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(
    kvs: bytes = b"", kv_count: int = 0, tensors: bytes = b"", tensor_count: int = 0, data: bytes = b""
) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count) + kvs + tensors
    return head + b"\0" * ((-len(head)) % 32) + data


def tensor_entry(name: str, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return (
        string(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def parse(path: Path, data: bytes, **limits):
    path.write_bytes(data)
    return read_gguf(open_source(str(path)), path.name, str(path), **limits)


def test_a_file_without_the_magic_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        parse(tmp_path / "m.gguf", b"GGML" + b"\0" * 40)


def test_an_array_longer_than_the_file_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    kv = string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2**40)  # 2^40 strings
    with pytest.raises(CheckpointError, match=r"tokenizer\.ggml\.tokens': 1099511627776 strings do not fit"):
        parse(tmp_path / "m.gguf", gguf_bytes(kv, 1))


def test_a_string_longer_than_the_file_is_refused(tmp_path: Path) -> None:
    kv = string("general.name") + struct.pack("<IQ", 8, 2**62)
    with pytest.raises(CheckpointError, match=r"metadata 'general\.name' of 4611686018427387904 bytes"):
        parse(tmp_path / "m.gguf", gguf_bytes(kv, 1))


def test_a_header_over_the_limit_is_refused(tmp_path: Path) -> None:
    kv = string("general.name") + struct.pack("<I", 8) + string("x" * 5000)
    with pytest.raises(InputLimitError, match="a GGUF header over 4096 bytes"):
        parse(tmp_path / "m.gguf", gguf_bytes(kv, 1), max_header_bytes=4096)


def test_nested_arrays_duplicate_keys_and_unknown_types_are_refused(tmp_path: Path) -> None:
    nested = string("a") + struct.pack("<IIQ", 9, 9, 1)
    with pytest.raises(CheckpointError, match="nested arrays are not accepted"):
        parse(tmp_path / "m.gguf", gguf_bytes(nested, 1))
    twice = (string("a") + struct.pack("<IB", 0, 1)) * 2
    with pytest.raises(CheckpointError, match="metadata key 'a' appears twice"):
        parse(tmp_path / "m.gguf", gguf_bytes(twice, 2))
    unknown = string("a") + struct.pack("<I", 99)
    with pytest.raises(CheckpointError, match="unknown value type 99"):
        parse(tmp_path / "m.gguf", gguf_bytes(unknown, 1))


def test_tensors_past_the_end_overlapping_or_misaligned_are_refused(tmp_path: Path) -> None:
    past = tensor_entry("w", [8], 0, 0)
    with pytest.raises(CheckpointError, match=r"tensor 'w': data at offset 0 \(32 bytes\) .* past the end"):
        parse(tmp_path / "m.gguf", gguf_bytes(tensors=past, tensor_count=1, data=b"\0" * 16))
    overlap = tensor_entry("a", [8], 0, 0) + tensor_entry("b", [8], 0, 0)
    with pytest.raises(CheckpointError, match="tensor 'b' overlaps"):
        parse(tmp_path / "m.gguf", gguf_bytes(tensors=overlap, tensor_count=2, data=b"\0" * 64))
    misaligned = tensor_entry("a", [8], 0, 4)
    with pytest.raises(CheckpointError, match="misaligned"):
        parse(tmp_path / "m.gguf", gguf_bytes(tensors=misaligned, tensor_count=1, data=b"\0" * 64))
    huge = tensor_entry("a", [2**62, 2**62], 0, 0)
    with pytest.raises(CheckpointError, match="needs more bytes than the file has"):
        parse(tmp_path / "m.gguf", gguf_bytes(tensors=huge, tensor_count=1, data=b"\0" * 64))


def test_a_row_that_does_not_fill_its_quantisation_blocks_is_refused(tmp_path: Path) -> None:
    odd = tensor_entry("w", [48, 2], 8, 0)  # Q8_0 packs 32 values a block
    with pytest.raises(CheckpointError, match=r"tensor 'w': invalid shape \[48, 2\] for Q8_0 \(blocks of 32\)"):
        parse(tmp_path / "m.gguf", gguf_bytes(tensors=odd, tensor_count=1, data=b"\0" * 256))


def test_a_valid_tiny_file_lists_metadata_and_tensors_in_torch_order(tmp_path: Path) -> None:
    kv = string("general.architecture") + struct.pack("<I", 8) + string("llama")
    kv += string("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, 3) + struct.pack("<3i", 1, 3, 4)
    found = parse(tmp_path / "m.gguf", gguf_bytes(kv, 2, tensor_entry("w", [8, 2], 0, 0), 1, b"\0" * 64))
    assert found.metadata == {"general.architecture": "llama", "tokenizer.ggml.token_type": (1, 3, 4)}
    assert found.tensors["w"].shape == (2, 8) and found.tensors["w"].end - found.tensors["w"].start == 64


def test_an_unsupported_quantisation_is_refused_by_name_listing_the_supported_ones(tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter

    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path, "llama")
    for key, value in [("block_count", 1), ("embedding_length", 32), ("feed_forward_length", 64),
                       ("attention.head_count", 4), ("context_length", 64)]:  # fmt: skip
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((8, 40 * 32 // 32), dtype=np.uint8).reshape(8, 40),
                      raw_dtype=GGMLQuantizationType.Q8_1)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        CheckpointError,
        match=r"'token_embd\.weight' is stored as Q8_1, which fda-merge cannot dequantise; supported: F32, F16, Q4_0, Q4_1",
    ):
        inspect_checkpoint(str(path))


def test_a_gguf_input_obeys_the_tensor_limit(tmp_path: Path) -> None:
    data = gguf_bytes(
        tensors=tensor_entry("a", [8], 0, 0) + tensor_entry("b", [8], 0, 32), tensor_count=2, data=b"\0" * 64
    )
    (tmp_path / "m.gguf").write_bytes(data)
    with pytest.raises(InputLimitError, match="2 tensors; at most 1"):
        inspect_checkpoint(str(tmp_path / "m.gguf"), InputLimits(tensors=1))


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp ships it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (9, 3)])
def test_rotary_permutation_is_llama_cpps_and_its_inverse_undoes_it(heads: int, kv_heads: int) -> None:
    q, k = torch.randn(heads * 8, 16), torch.randn(kv_heads * 8, 16)
    assert torch.equal(permute_rotary(q, heads), torch.from_numpy(llama_cpp_permute(q.numpy(), heads, heads)))
    assert torch.equal(permute_rotary(k, kv_heads), torch.from_numpy(llama_cpp_permute(k.numpy(), heads, kv_heads)))
    assert torch.equal(unpermute_rotary(permute_rotary(k, kv_heads), kv_heads), k)
    assert not torch.equal(permute_rotary(q, heads), q)
