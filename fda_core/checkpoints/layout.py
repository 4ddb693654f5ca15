"""Find the weight files of a checkpoint and read their headers (no tensor data).

Accepted: a Hugging Face folder (config.json + model.safetensors, or shards +
model.safetensors.index.json) or a single .safetensors file. Pickles are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fda_core.checkpoints.header import FileHeader, TensorInfo, header_length, parse_header
from fda_core.checkpoints.sources import CheckpointSource, open_source
from fda_core.errors import CheckpointError, PickleCheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "convert it to safetensors in a trusted environment (e.g. transformers "
    "save_pretrained(dir, safe_serialization=True)); fda-merge never unpickles user files"
)


@dataclass
class CheckpointLayout:
    """A checkpoint's weight files, every tensor's location, and its config.json if any."""

    uri: str
    source: CheckpointSource
    weight_files: list[str]
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    config: dict | None = None

    def describe(self, tensor: str) -> str:
        info = self.tensors[tensor]
        return f"{self.uri} ({info.file})"


def inspect_checkpoint(uri: str) -> CheckpointLayout:
    """Open `uri` and validate every weight file's header; reads only headers and small files."""
    source = open_source(uri)
    files = source.list_files()
    weight_files = _weight_files(source, files)
    headers = [read_header(source, name) for name in weight_files]
    tensors = _collect_tensors(uri, headers)
    if INDEX_FILE in files and not source.single_file:
        _check_index(uri, source, tensors)
    config = _read_json(source, "config.json") if "config.json" in files and not source.single_file else None
    return CheckpointLayout(uri, source, weight_files, tensors, headers[0].metadata, config)


def read_header(source: CheckpointSource, name: str) -> FileHeader:
    where = _where(source, name)
    size = source.size(name)
    length = header_length(source.read_range(name, 0, 8), where)
    if 8 + length > size:
        raise CheckpointError(f"{where}: truncated: header of {length} bytes but the file has {size} bytes")
    return parse_header(source.read_range(name, 8, length), file=name, where=where, file_size=size)


def _where(source: CheckpointSource, name: str) -> str:
    return source.uri if source.single_file else f"{source.uri.rstrip('/')}/{name}"


def _weight_files(source: CheckpointSource, files: list[str]) -> list[str]:
    if source.single_file:
        name = files[0]
        if name.endswith(PICKLE_SUFFIXES):
            raise PickleCheckpointError(f"{source.uri}: pickled checkpoint refused; {CONVERT_HINT}")
        if not name.endswith(".safetensors"):
            raise CheckpointError(f"{source.uri}: not a .safetensors file or a model folder")
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
    raise CheckpointError(
        f"{source.uri}: no {SINGLE_FILE} or {INDEX_FILE} found "
        f"(files: {', '.join(files) or 'none'}); point at a Hugging Face model folder or a .safetensors file"
    )


def _weight_map(source: CheckpointSource, files: list[str]) -> dict[str, str]:
    """The index's {tensor: file}; every file a plain name present in the folder (no ../, no /abs)."""
    where = _where(source, INDEX_FILE)
    weight_map = _read_json(source, INDEX_FILE).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{where}: weight_map must be a non-empty object of tensor name → file")
    present = set(files)
    for tensor, file in weight_map.items():
        if not isinstance(file, str) or file not in present or "/" in file or "\\" in file or file in (".", ".."):
            raise CheckpointError(f"{where}: lists tensor '{tensor}' in {file!r}, which is not a file of this folder")
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


def _read_json(source: CheckpointSource, name: str) -> dict:
    size = source.size(name)
    if size > 64 * 1024 * 1024:
        raise CheckpointError(f"{_where(source, name)}: {size} bytes is too large for a JSON side file")
    try:
        doc = json.loads(source.read_range(name, 0, size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{_where(source, name)}: invalid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{_where(source, name)}: expected a JSON object")
    return doc
