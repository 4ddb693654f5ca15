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
from typing import Protocol

import torch

from fda_core.errors import CheckpointError, InputLimitError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # same bound as the safetensors library
MAX_BYTES = 2**63
MAX_TENSORS = 1_000_000  # per file; the service sets a lower bound (FDA_LIMIT_TENSORS_PER_INPUT)
MAX_DEPTH = 128  # the safetensors library's (serde_json's) nesting limit
MAX_RANK = 64

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


class Decoding(Protocol):
    """How a tensor stored in another encoding (a GGUF quantisation, llama.cpp's q/k order) becomes
    the `dtype` and `shape` its TensorInfo states, from the raw bytes of its range."""

    def decode(self, raw: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    name: str
    file: str  # file name inside the checkpoint
    dtype: str  # safetensors dtype name, e.g. "F32" (for an encoded tensor: what decoding gives)
    shape: tuple[int, ...]
    start: int  # absolute offset of the first data byte in the file
    end: int
    decoding: Decoding | None = None  # None: the bytes are the tensor (safetensors)

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


def parse_header(raw: bytes, *, file: str, where: str, file_size: int, max_tensors: int = MAX_TENSORS) -> FileHeader:
    """Validate the JSON header `raw` (without its 8-byte prefix) against the file size.

    The work is linear in the header's size: integers are bounded before any arithmetic and shape
    products stop as soon as they pass the file size. What the safetensors library refuses (invalid
    UTF-8, lone surrogates, NaN literals, non-string metadata, nesting past 128 levels, …) is refused
    here too, always as CheckpointError naming the file."""
    doc = load_json(raw, f"{where}: unreadable safetensors header", MAX_DEPTH)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: safetensors header is not a JSON object; the file is corrupt")
    metadata = doc.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings; the file is corrupt")
    if len(doc) > max_tensors:
        raise InputLimitError(f"{where}: {len(doc)} tensors; at most {max_tensors} are accepted")
    data_start = 8 + len(raw)
    tensors = {name: _tensor_info(name, entry, file, where, data_start, file_size) for name, entry in doc.items()}
    _check_layout(tensors, where, data_start, file_size)
    return FileHeader(file=file, tensors=tensors, metadata=metadata, data_start=data_start)


def load_json(raw: bytes, what: str, max_depth: int = MAX_DEPTH) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, no lone surrogates, integers Python converts quickly
    (at most 4,300 digits), nesting within `max_depth` (checked by the caller where it can be deeper:
    `nesting`). Anything else is CheckpointError(`what` …)."""
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, parse_constant=_no_constant)
        if "\\u" in text:  # a lone surrogate can only come from an escape
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, _Refused) else type(exc).__name__
        raise CheckpointError(f"{what} ({reason}); the file is corrupt") from None
    return doc


class _Refused(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _Refused(f"{name} is not JSON")


def nesting(value: object, limit: int) -> bool:
    """Whether `value` nests containers deeper than `limit` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _tensor_info(name: str, entry: object, file: str, where: str, data_start: int, file_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: tensor '{_short(name)}': header entry is not an object")
    if len(entry) > 3 and nesting(entry, MAX_DEPTH - 2):
        raise CheckpointError(f"{where}: tensor '{_short(name)}': nested more than {MAX_DEPTH} levels")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(
            f"{where}: tensor '{_short(name)}': unknown dtype {_short(repr(dtype))}; known: {', '.join(DTYPES)}"
        )
    expected = _byte_count(name, shape, DTYPES[dtype][1], where, file_size)
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and 0 <= o < MAX_BYTES for o in offsets)
    ):
        raise CheckpointError(f"{where}: tensor '{_short(name)}': invalid data_offsets {_short(repr(offsets))}")
    begin, end = offsets
    if end - begin != expected:
        raise CheckpointError(
            f"{where}: tensor '{_short(name)}': data_offsets {offsets} hold {end - begin} bytes, "
            f"but {dtype} {tuple(shape)} needs {expected}"  # type: ignore[arg-type]
        )
    return TensorInfo(name, file, dtype, tuple(shape), data_start + begin, data_start + end)  # type: ignore[arg-type]


def _byte_count(name: str, shape: object, itemsize: int, where: str, file_size: int) -> int:
    """Bytes the shape needs. Dimensions are unsigned 64-bit integers; the product of the non-zero ones
    must stay under 2^63 (torch's strides) and, unless a dimension is 0, within the file."""
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and 0 <= d < 2**64 for d in shape)
    ):
        raise CheckpointError(f"{where}: tensor '{_short(name)}': invalid shape {_short(repr(shape))}")
    product = 1
    for dim in shape:
        product *= dim or 1
        if product >= MAX_BYTES:
            raise CheckpointError(f"{where}: tensor '{_short(name)}': invalid shape {_short(repr(shape))} (too large)")
    if 0 in shape:
        return 0
    if product * itemsize > file_size:
        raise CheckpointError(
            f"{where}: tensor '{_short(name)}': shape {_short(repr(shape))} needs {product * itemsize} bytes, "
            f"more than the file's {file_size}; the file is truncated or corrupt"
        )
    return product * itemsize


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_layout(tensors: dict[str, TensorInfo], where: str, data_start: int, file_size: int) -> None:
    """Tensors must tile the data section exactly (no overlap, no gap) and end where the file ends."""
    position = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != position:
            fault = "overlaps the previous tensor" if info.start < position else "leaves a gap before it"
            raise CheckpointError(f"{where}: tensor '{_short(info.name)}' {fault}; the file is corrupt")
        position = info.end
    if position > file_size:
        last = max(tensors.values(), key=lambda t: t.end)
        raise CheckpointError(
            f"{where}: truncated: tensor '{_short(last.name)}' ends at byte {last.end} but the file has "
            f"{file_size} bytes; download or copy it again"
        )
    if position < file_size:
        raise CheckpointError(
            f"{where}: {file_size - position} unexpected bytes after the last tensor; the file is corrupt"
        )
