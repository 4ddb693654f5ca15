"""Parse and validate a safetensors header before a single tensor byte is allocated.

Layout of a safetensors file: 8 bytes little-endian header length N, N bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
tensor data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

from fda_core.errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # same bound as the safetensors library
MAX_BYTES = 2**63

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "I16": (torch.int16, 2),
    "U16": (torch.uint16, 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "U32": (torch.uint32, 4),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "I64": (torch.int64, 8),
    "U64": (torch.uint64, 8),
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, (dtype, _) in DTYPES.items()}
FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    name: str
    file: str  # file name inside the checkpoint
    dtype: str  # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]
    start: int  # absolute offset of the first data byte in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class FileHeader:
    file: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def header_length(prefix: bytes, where: str) -> int:
    """The JSON header's length from the first 8 bytes, bounded before anything is read."""
    if len(prefix) < 8:
        raise CheckpointError(f"{where}: not a safetensors file: {len(prefix)} bytes, need at least 8")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{where}: not a safetensors file: header claims {length} bytes "
            f"(limit {MAX_HEADER_BYTES}); is it a pickle or another format?"
        )
    return length


def parse_header(raw: bytes, *, file: str, where: str, file_size: int) -> FileHeader:
    """Validate the JSON header `raw` (without its 8-byte prefix) against the file size."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(
            f"{where}: unreadable safetensors header ({type(exc).__name__}); the file is corrupt"
        ) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: safetensors header is not a JSON object; the file is corrupt")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings; the file is corrupt")
    data_start = 8 + len(raw)
    tensors = {name: _tensor_info(name, entry, file, where, data_start) for name, entry in doc.items()}
    _check_layout(tensors, where, data_start, file_size)
    return FileHeader(file=file, tensors=tensors, metadata=metadata, data_start=data_start)


def _tensor_info(name: str, entry: object, file: str, where: str, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: tensor '{name}': header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: tensor '{name}': unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < MAX_BYTES for d in shape):
        raise CheckpointError(f"{where}: tensor '{name}': invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise CheckpointError(f"{where}: tensor '{name}': invalid data_offsets {offsets!r}")
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype][1]
    if expected >= MAX_BYTES:
        raise CheckpointError(f"{where}: tensor '{name}': invalid shape {shape!r} (impossibly large)")
    if begin < 0 or end - begin != expected:
        raise CheckpointError(
            f"{where}: tensor '{name}': data_offsets {offsets} hold {end - begin} bytes, "
            f"but {dtype} {tuple(shape)} needs {expected}"
        )
    return TensorInfo(name, file, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_layout(tensors: dict[str, TensorInfo], where: str, data_start: int, file_size: int) -> None:
    """Tensors must tile the data section exactly (no overlap, no gap) and end where the file ends."""
    position = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != position:
            fault = "overlaps the previous tensor" if info.start < position else "leaves a gap before it"
            raise CheckpointError(f"{where}: tensor '{info.name}' {fault}; the file is corrupt")
        position = info.end
    if position > file_size:
        last = max(tensors.values(), key=lambda t: t.end)
        raise CheckpointError(
            f"{where}: truncated: tensor '{last.name}' ends at byte {last.end} but the file has "
            f"{file_size} bytes; download or copy it again"
        )
    if position < file_size:
        raise CheckpointError(
            f"{where}: {file_size - position} unexpected bytes after the last tensor; the file is corrupt"
        )
