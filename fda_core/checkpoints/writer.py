"""Stream merged tensors into sharded safetensors files, one tensor in memory at a time.

Every output name, dtype and shape is known before the merge starts, so each shard's header
length is fixed up front: tensor bytes are appended as they are produced and the header is
written last, once the provenance (input hashes, computed while merging) is known.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from fda_core.checkpoints.header import DTYPE_NAMES, DTYPES

INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


@dataclass(frozen=True)
class WrittenShard:
    file: str
    tensors: int
    bytes: int


def plan_shards(tensors: list[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    """Greedy shards in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _header_bytes(tensors: list[OutputTensor], metadata: dict[str, str], reserve: int = 0) -> bytes:
    doc: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for tensor in tensors:
        doc[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode()
    target = max(reserve, len(raw) + (-len(raw)) % 8)  # 8-byte aligned data, as safetensors writes
    return raw + b" " * (target - len(raw))


class ShardedWriter:
    """Write tensors in plan order; `finish` writes headers and the index."""

    def __init__(self, directory: Path, shards: list[list[OutputTensor]], metadata: dict[str, str]) -> None:
        self.directory = directory
        self.shards = shards
        self.files = shard_file_names(len(shards))
        self._reserved = [len(_header_bytes(s, metadata)) for s in shards]
        self._queue = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._position = 0
        self._handle: tuple[int, object] | None = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard_index, expected = self._queue[self._position]
        if (
            name != expected.name
            or DTYPE_NAMES[tensor.dtype] != expected.dtype
            or tuple(tensor.shape) != expected.shape
        ):
            raise RuntimeError(f"writer expected {expected}, got '{name}' {tensor.dtype} {tuple(tensor.shape)}")
        handle = self._file(shard_index)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        handle.write(data)
        self._position += 1

    def _file(self, shard_index: int):
        if self._handle is None or self._handle[0] != shard_index:
            self._close()
            handle = open(self.directory / self.files[shard_index], "wb")
            handle.seek(8 + self._reserved[shard_index])
            self._handle = (shard_index, handle)
        return self._handle[1]

    def _close(self) -> None:
        if self._handle is not None:
            self._handle[1].close()  # type: ignore[attr-defined]
            self._handle = None

    def finish(self, metadata: dict[str, str]) -> list[WrittenShard]:
        if self._position != len(self._queue):
            raise RuntimeError(f"writer finished after {self._position} of {len(self._queue)} tensors")
        self._close()
        written = [self._write_header(i, metadata) for i in range(len(self.shards))]
        if len(self.shards) > 1:
            self._write_index(metadata)
        return written

    def abort(self) -> None:
        self._close()

    def _write_header(self, index: int, metadata: dict[str, str]) -> WrittenShard:
        header = _header_bytes(self.shards[index], metadata, self._reserved[index])
        if len(header) != self._reserved[index]:
            raise RuntimeError("final safetensors header outgrew its reserved space")
        path = self.directory / self.files[index]
        with open(path, "r+b") as handle:
            handle.write(len(header).to_bytes(8, "little") + header)
        return WrittenShard(self.files[index], len(self.shards[index]), os.path.getsize(path))

    def _write_index(self, metadata: dict[str, str]) -> None:
        total = sum(t.nbytes for shard in self.shards for t in shard)
        weight_map = {t.name: file for file, shard in zip(self.files, self.shards) for t in shard}
        doc = {"metadata": {"total_size": total, **metadata}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_FILE).write_text(json.dumps(doc, indent=2) + "\n")


class BackgroundWriter:
    """Writes through a ShardedWriter on a thread, so disk writes overlap the next tensor's merge.

    At most `depth` merged tensors wait in the queue: memory stays bounded by a few tensors.
    """

    def __init__(self, writer: ShardedWriter, depth: int = 2) -> None:
        self.writer = writer
        self._queue: queue.Queue[tuple[str, torch.Tensor] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="shard-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.writer.write(*item)
                except BaseException as exc:  # re-raised in the merging thread
                    self._error = exc

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._raise_pending()
        self._queue.put((name, tensor))

    def finish(self, metadata: dict[str, str]) -> list[WrittenShard]:
        self._stop()
        self._raise_pending()
        return self.writer.finish(metadata)

    def abort(self) -> None:
        self._stop()
        self.writer.abort()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error
