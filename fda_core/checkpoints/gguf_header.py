"""Parse and validate a GGUF file's header (metadata and tensor table) before any tensor is read.

Layout (GGUF v2/v3): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
key/values, one entry per tensor (name, u32 n_dims, u64 dims fastest first, u32 ggml type, u64 offset
into the data section), padding to `general.alignment` (32), the data. Everything is read through
ranged reads of at most `max_header_bytes` in total; every count is checked against the bytes left
before anything is allocated for it, strings must be UTF-8, and tensors must lie inside the file
without overlapping.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from fda_core.checkpoints.header import MAX_HEADER_BYTES, MAX_TENSORS
from fda_core.checkpoints.sources import CheckpointSource
from fda_core.errors import CheckpointError, InputLimitError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEY_BYTES = 65_535
MAX_METADATA = 65_536  # key/value pairs: real files have tens
CHUNK = 1 << 20

# value type: (struct format, width); 8 is a string, 9 an array
SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4),
    6: ("f", 4), 7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8),
}  # fmt: skip
STRING, ARRAY = 8, 9

# ggml type id: (name, elements per block, bytes per block) — ggml's own table (gguf.constants)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}  # fmt: skip


@dataclass(frozen=True)
class GgufTensor:
    """One tensor as stored: ggml type, shape in torch order (slowest first), absolute byte range."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


@dataclass(frozen=True)
class GgufFile:
    version: int
    metadata: dict[str, Any]  # arrays as tuples
    tensors: dict[str, GgufTensor]  # in file order
    data_start: int
    alignment: int


def is_gguf(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


def read_gguf(
    source: CheckpointSource,
    name: str,
    where: str,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_tensors: int = MAX_TENSORS,
) -> GgufFile:
    """The file's metadata and tensor table, validated; CheckpointError naming `where` otherwise."""
    cursor = _Cursor(source, name, where, max_header_bytes)
    if cursor.take(4) != MAGIC:
        raise CheckpointError(f"{where}: not a GGUF file (no GGUF magic bytes)")
    version = cursor.scalar(4)
    if version not in VERSIONS:
        raise CheckpointError(f"{where}: GGUF version {version}; fda-merge reads versions 2 and 3")
    tensor_count, kv_count = cursor.scalar(10), cursor.scalar(10)
    if tensor_count > max_tensors:
        raise InputLimitError(f"{where}: {tensor_count} tensors; at most {max_tensors} are accepted")
    if kv_count > MAX_METADATA:
        raise CheckpointError(f"{where}: {kv_count} metadata entries (at most {MAX_METADATA}); the file is corrupt")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string(MAX_KEY_BYTES, "a metadata key")
        if key in metadata:
            raise CheckpointError(f"{where}: metadata key '{key[:200]}' appears twice; the file is corrupt")
        metadata[key] = cursor.value(cursor.scalar(4), key)
    alignment = _alignment(metadata, where)
    entries = [_tensor_entry(cursor) for _ in range(tensor_count)]
    data_start = cursor.position + (-cursor.position) % alignment
    tensors = _tensors(entries, data_start, alignment, cursor.size, where)
    return GgufFile(version, metadata, tensors, data_start, alignment)


def _alignment(metadata: dict[str, Any], where: str) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise CheckpointError(f"{where}: general.alignment {alignment!r} is not a power of two up to 2^20")
    return alignment


def _tensor_entry(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string(MAX_KEY_BYTES, "a tensor name")
    n_dims = cursor.scalar(4)
    if not 1 <= n_dims <= MAX_DIMS:
        raise CheckpointError(f"{cursor.where}: tensor '{name[:200]}' has {n_dims} dimensions (1 to {MAX_DIMS})")
    dims = struct.unpack(f"<{n_dims}Q", cursor.take(8 * n_dims))
    ggml_type, offset = cursor.scalar(4), cursor.scalar(10)
    return name, dims, ggml_type, offset


def _tensors(
    entries: list[tuple[str, tuple[int, ...], int, int]], data_start: int, alignment: int, size: int, where: str
) -> dict[str, GgufTensor]:
    tensors: dict[str, GgufTensor] = {}
    for name, dims, ggml_type, offset in entries:
        label = f"{where}: tensor '{name[:200]}'"
        if name in tensors:
            raise CheckpointError(f"{label} is listed twice; the file is corrupt")
        if ggml_type not in GGML_TYPES:
            raise CheckpointError(f"{label} has unknown ggml type {ggml_type}; the file is corrupt or too new")
        type_name, block, block_bytes = GGML_TYPES[ggml_type]
        if any(d == 0 or d >= 2**63 for d in dims) or dims[0] % block:
            raise CheckpointError(f"{label}: invalid shape {list(dims)} for {type_name} (blocks of {block})")
        count = 1
        for d in dims:
            count *= d
            if count * block_bytes > size * block:  # past the file: stop before the number grows
                raise CheckpointError(f"{label}: shape {list(dims)} needs more bytes than the file has")
        nbytes = count // block * block_bytes
        start = data_start + offset
        if offset % alignment or start + nbytes > size:
            raise CheckpointError(
                f"{label}: data at offset {offset} ({nbytes} bytes) is misaligned or past the end of the "
                f"{size}-byte file; the file is truncated or corrupt"
            )
        tensors[name] = GgufTensor(name, ggml_type, tuple(reversed(dims)), start, start + nbytes)
    _check_no_overlap(tensors, where)
    return tensors


def _check_no_overlap(tensors: dict[str, GgufTensor], where: str) -> None:
    end = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start < end:
            raise CheckpointError(f"{where}: tensor '{info.name[:200]}' overlaps the previous one; the file is corrupt")
        end = info.end


class _Cursor:
    """Sequential reads of the header through ranged reads, never past `limit` bytes nor the file."""

    def __init__(self, source: CheckpointSource, name: str, where: str, limit: int) -> None:
        self.source, self.name, self.where = source, name, where
        self.size = source.size(name)
        self.limit = min(limit, self.size)
        self.header_limit = limit
        self.position = 0
        self._buffer = b""
        self._buffer_start = 0

    def take(self, count: int) -> bytes:
        end = self.position + count
        if end > self.limit:
            if end > self.size:
                raise CheckpointError(f"{self.where}: truncated GGUF header ({self.size} bytes)")
            raise InputLimitError(f"{self.where}: a GGUF header over {self.header_limit} bytes; not accepted")
        offset = self.position - self._buffer_start
        if offset + count > len(self._buffer):
            self._buffer = self.source.read_range(
                self.name, self.position, min(max(count, CHUNK), self.limit - self.position)
            )
            self._buffer_start, offset = self.position, 0
            if len(self._buffer) < count:
                raise CheckpointError(f"{self.where}: truncated GGUF header ({self.size} bytes)")
        self.position = end
        return self._buffer[offset : offset + count]

    def left(self) -> int:
        return self.limit - self.position

    def scalar(self, kind: int) -> Any:
        fmt, width = SCALARS[kind]
        return struct.unpack("<" + fmt, self.take(width))[0]

    def string(self, max_bytes: int, what: str) -> str:
        length = self.scalar(10)
        if length > max_bytes or self.position + length > self.size:
            raise CheckpointError(f"{self.where}: {what} of {length} bytes; the file is corrupt or truncated")
        try:
            return self.take(length).decode("utf-8")  # past the header limit: InputLimitError, before reading
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.where}: {what} is not UTF-8; the file is corrupt") from None

    def value(self, kind: int, key: str) -> Any:
        if kind in SCALARS:
            return self.scalar(kind)  # the values the conversion uses are checked there (finite, in range)
        if kind == STRING:
            return self.string(self.size, f"metadata '{key[:200]}'")
        if kind == ARRAY:
            return self._array(key)
        raise CheckpointError(
            f"{self.where}: metadata '{key[:200]}' has unknown value type {kind}; the file is corrupt"
        )

    def _array(self, key: str) -> tuple[Any, ...]:
        item, count = self.scalar(4), self.scalar(10)
        if item in SCALARS:
            fmt, width = SCALARS[item]
            if count * width > self.left():
                raise CheckpointError(f"{self.where}: metadata '{key[:200]}': {count} items do not fit the header")
            return struct.unpack(f"<{count}{fmt}", self.take(count * width))
        if item == STRING:
            if count * 8 > self.left():
                raise CheckpointError(f"{self.where}: metadata '{key[:200]}': {count} strings do not fit the header")
            return tuple(self.string(self.size, f"an item of metadata '{key[:200]}'") for _ in range(count))
        raise CheckpointError(
            f"{self.where}: metadata '{key[:200]}' is an array of type {item} (nested arrays are not accepted)"
        )
