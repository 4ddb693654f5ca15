"""Find the weight files of a checkpoint and read their headers (no tensor data).

Accepted: a Hugging Face folder (config.json + model.safetensors, or shards +
model.safetensors.index.json), a single .safetensors file, or a single .gguf file (read as the
Hugging Face model it holds: fda_core/checkpoints/gguf.py). Pickles are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fda_core.checkpoints.header import (
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    FileHeader,
    TensorInfo,
    header_length,
    load_json,
    nesting,
    parse_header,
)
from fda_core.checkpoints.sources import CheckpointSource, open_source
from fda_core.errors import CheckpointError, InputLimitError, PickleCheckpointError

if TYPE_CHECKING:
    from fda_core.checkpoints.lora import LoraInput

MAX_JSON_BYTES = 16 << 20  # config.json, the index: real ones are kilobytes
MAX_JSON_DEPTH = 64

INDEX_FILE = "model.safetensors.index.json"
GGUF_SUFFIX = ".gguf"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "convert it to safetensors in a trusted environment (e.g. transformers "
    "save_pretrained(dir, safe_serialization=True)); fda-merge never unpickles user files"
)


@dataclass(frozen=True)
class InputLimits:
    """Bounds on what reading one input may cost (the format's own bounds by default)."""

    header_bytes: int = MAX_HEADER_BYTES  # one weight file's JSON header
    tensors: int = MAX_TENSORS  # one checkpoint, all its files
    input_bytes: int | None = None  # weight bytes of all a merge's inputs together (checked by the plan)


@dataclass
class CheckpointLayout:
    """A checkpoint's weight files, every tensor's location, and its config.json if any."""

    uri: str
    source: CheckpointSource
    weight_files: list[str]
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    config: dict | None = None
    side_files: Callable[[], dict[str, bytes]] | None = None  # built, not copied: a GGUF's config and tokenizer
    lora: LoraInput | None = None  # a LoRA adapter applied to a base (fda_core/checkpoints/lora.py)

    def describe(self, tensor: str) -> str:
        info = self.tensors[tensor]
        return f"{self.uri} ({info.file})"

    def hashed_files(self) -> list[tuple[str, CheckpointSource, str]]:
        """(label, source, file) of every file this input's tensors come from: a LoRA input's adapter and,
        when its base is not the merge's base, that base's files as base/FILE."""
        files = [(name, self.source, name) for name in self.weight_files]
        if self.lora is not None and not self.lora.base_is_merge_base:
            files += [(f"base/{name}", self.lora.base.source, name) for name in self.lora.base.weight_files]
        return files


def inspect_checkpoint(uri: str, limits: InputLimits = InputLimits()) -> CheckpointLayout:
    """Open `uri` and validate every weight file's header; reads only headers and small files."""
    source = open_source(uri)
    files = source.list_files()
    if source.single_file and files[0].endswith(GGUF_SUFFIX):
        return gguf_layout(uri, source, files[0], limits)
    if not source.single_file and "adapter_config.json" in files:
        raise CheckpointError(f"{uri}: a LoRA adapter, not a model; give it as a model input (its base applies)")
    weight_files = _weight_files(source, files)
    headers, count = [], 0
    for name in weight_files:
        headers.append(read_header(source, name, limits.header_bytes, limits.tensors))
        count += len(headers[-1].tensors)
        if count > limits.tensors:
            raise InputLimitError(f"{uri}: more than {limits.tensors} tensors; this service accepts at most that many")
    tensors = _collect_tensors(uri, headers)
    if INDEX_FILE in files and not source.single_file:
        _check_index(uri, source, tensors)
    config = read_json(source, "config.json") if "config.json" in files and not source.single_file else None
    return CheckpointLayout(uri, source, weight_files, tensors, headers[0].metadata, config)


def gguf_layout(uri: str, source: CheckpointSource, name: str, limits: InputLimits) -> CheckpointLayout:
    """A GGUF file's tensors under Hugging Face names, dequantised on read, with a built config and tokenizer."""
    from fda_core.checkpoints.gguf import hf_side_files, hf_tensors, llama_config
    from fda_core.checkpoints.gguf_header import read_gguf

    gguf = read_gguf(source, name, source.uri, limits.header_bytes, limits.tensors)
    config = llama_config(gguf, uri)
    tensors = {
        t.name: TensorInfo(t.name, name, t.dtype, t.stored.shape, t.stored.start, t.stored.end, t.decoding)
        for t in hf_tensors(gguf, config, uri)
    }
    return CheckpointLayout(uri, source, [name], tensors, {}, config, lambda: hf_side_files(gguf, config, uri))


def read_header(
    source: CheckpointSource, name: str, max_header_bytes: int = MAX_HEADER_BYTES, max_tensors: int = MAX_TENSORS
) -> FileHeader:
    where = _where(source, name)
    size = source.size(name)
    length = header_length(source.read_range(name, 0, min(8, size)), where)
    if length > max_header_bytes:
        raise InputLimitError(f"{where}: a header of {length} bytes; this service reads at most {max_header_bytes}")
    if 8 + length > size:
        raise CheckpointError(f"{where}: truncated: header of {length} bytes but the file has {size} bytes")
    raw = source.read_range(name, 8, length)
    return parse_header(raw, file=name, where=where, file_size=size, max_tensors=max_tensors)


def _where(source: CheckpointSource, name: str) -> str:
    return source.uri if source.single_file else f"{source.uri.rstrip('/')}/{name}"


def _weight_files(source: CheckpointSource, files: list[str]) -> list[str]:
    if source.single_file:
        name = files[0]
        if name.endswith(PICKLE_SUFFIXES):
            raise PickleCheckpointError(f"{source.uri}: pickled checkpoint refused; {CONVERT_HINT}")
        if not name.endswith(".safetensors"):
            raise CheckpointError(f"{source.uri}: not a .safetensors or .gguf file, nor a model folder")
        return [name]
    if INDEX_FILE in files:
        return sorted(set(_weight_map(source, files).values()))
    if SINGLE_FILE in files:
        return [SINGLE_FILE]
    candidates = [f for f in files if f.endswith(".safetensors")]
    if len(candidates) == 1:
        return candidates
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PickleCheckpointError(f"{source.uri}: only pickled weights ({', '.join(pickles)}); {CONVERT_HINT}")
    found = f"{len(candidates)} .safetensors files" if candidates else "no .safetensors file"
    raise CheckpointError(
        f"{source.uri}: no {SINGLE_FILE} or {INDEX_FILE} found ({found} among {len(files)} files); "
        "point at a Hugging Face model folder or a .safetensors file"
    )


def _weight_map(source: CheckpointSource, files: list[str]) -> dict[str, str]:
    """The index's {tensor: file}; every file a plain name present in the folder (no ../, no /abs)."""
    where = _where(source, INDEX_FILE)
    weight_map = read_json(source, INDEX_FILE).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{where}: weight_map must be a non-empty object of tensor name → file")
    present = set(files)
    for tensor, file in weight_map.items():
        if not isinstance(file, str) or file not in present or "/" in file or "\\" in file or file in (".", ".."):
            raise CheckpointError(
                f"{where}: lists tensor '{tensor[:200]}' in {str(file)[:200]!r}, which is not a file of this folder"
            )
        if not file.endswith(".safetensors"):
            raise CheckpointError(
                f"{where}: lists tensor '{tensor[:200]}' in {file!r}, which is not a .safetensors file"
            )
    return weight_map


def _collect_tensors(uri: str, headers: list[FileHeader]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for header in headers:
        for name, info in header.tensors.items():
            if name in tensors:
                raise CheckpointError(f"{uri}: tensor '{name}' is stored twice ({tensors[name].file} and {info.file})")
            tensors[name] = info
    if not tensors:
        raise CheckpointError(f"{uri}: holds no tensors")
    return tensors


def _check_index(uri: str, source: CheckpointSource, tensors: dict[str, TensorInfo]) -> None:
    weight_map = _weight_map(source, source.list_files())
    for name, file in weight_map.items():
        info = tensors.get(name)
        if info is None or info.file != file:
            raise CheckpointError(
                f"{uri}: {INDEX_FILE} maps tensor '{name}' to {file}, but that file's header lacks it"
            )


def read_json(source: CheckpointSource, name: str) -> dict:
    """A small JSON side file (config.json, the index), strictly parsed and bounded."""
    where = _where(source, name)
    size = source.size(name)
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{where}: {size} bytes is too large for a JSON side file (at most {MAX_JSON_BYTES})")
    doc = load_json(source.read_range(name, 0, size), f"{where}: invalid JSON")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    if nesting(doc, MAX_JSON_DEPTH):
        raise CheckpointError(f"{where}: nested more than {MAX_JSON_DEPTH} levels")
    return doc
