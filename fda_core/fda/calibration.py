"""Calibration inputs (optional): a few unlabelled examples of an expert's task, for FDA.

`models[i].calibration` names one file, read and validated when the plan is built (bounded):
- `.jsonl`: one example per line, a JSON string or an object with a "text" string; tokenised with
  the base's tokenizer at merge time, each text gives its first T tokens (shorter texts are skipped);
- `.safetensors`: one tensor `inputs` of model inputs (m, …): token ids (integers, (m, T)), pixel
  values (m, C, H, W), or features (m, d) for `model_type: fda_mlp`.

At every block the examples are the base model's inputs to that block — embeddings first, then the
base's own earlier blocks — so they have an anchor's shape (T, d). `calibration_use` says what FDA
does with them: `augment` adds them to that task's adaptation set (targets from its expert),
`init` starts that task's anchors from them before construction (ESM, arXiv 2602.20208, shows how
much 32 unlabelled inputs per task are worth).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fda_core.checkpoints.header import DTYPES, FLOAT_DTYPES, header_length, parse_header
from fda_core.checkpoints.sources import open_source
from fda_core.errors import CheckpointError

MAX_BYTES = 8 << 20
MAX_EXAMPLES = 1024
MAX_TEXT_CHARS = 20_000
INPUTS_TENSOR = "inputs"
INTEGER_DTYPES = {"I8", "I16", "I32", "I64", "U8", "U16", "U32"}


@dataclass(frozen=True)
class CalibrationSet:
    """One expert's calibration examples: texts, or a tensor of model inputs."""

    uri: str
    sha256: str
    texts: tuple[str, ...] = ()
    inputs: torch.Tensor | None = None  # (m, …)

    @property
    def count(self) -> int:
        return len(self.texts) if self.inputs is None else int(self.inputs.shape[0])


def read_calibration(uri: str, where: str) -> CalibrationSet:
    """Read and validate `uri` (local, file:// or a registered remote scheme); `where` names the field."""
    source = open_source(uri)
    if not source.single_file:
        raise CheckpointError(f"{where}: {uri} is a folder; give one .jsonl or .safetensors file")
    name = source.list_files()[0]
    size = source.size(name)
    if size > MAX_BYTES:
        raise CheckpointError(f"{where}: {uri} is {size} bytes; calibration files are limited to {MAX_BYTES} bytes")
    data = source.read_range(name, 0, size)
    digest = hashlib.sha256(data).hexdigest()
    if name.endswith(".jsonl"):
        return CalibrationSet(uri, digest, texts=_texts(data, uri, where))
    if name.endswith(".safetensors"):
        return CalibrationSet(uri, digest, inputs=_tensor(data, name, uri, where))
    raise CheckpointError(f"{where}: {uri} must be a .jsonl file of texts or a .safetensors file of inputs")


def _texts(data: bytes, uri: str, where: str) -> tuple[str, ...]:
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise CheckpointError(f"{where}: {uri} is not UTF-8 text") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        texts.append(_text_of(line, f"{where}: {uri} line {number}"))
        if len(texts) > MAX_EXAMPLES:
            raise CheckpointError(f"{where}: {uri} has more than {MAX_EXAMPLES} examples")
    if not texts:
        raise CheckpointError(f"{where}: {uri} has no examples")
    return tuple(texts)


def _text_of(line: str, where: str) -> str:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{where}: not a JSON value") from None
    text = value.get("text") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f'{where}: expected a JSON string or an object with a non-empty "text" string')
    if len(text) > MAX_TEXT_CHARS:
        raise CheckpointError(f"{where}: a text of {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return text


def _tensor(data: bytes, name: str, uri: str, where: str) -> torch.Tensor:
    label = f"{where}: {uri}"
    if len(data) < 8:
        raise CheckpointError(f"{label}: truncated safetensors file")
    length = header_length(data[:8], label)
    if 8 + length > len(data):
        raise CheckpointError(f"{label}: truncated: header of {length} bytes but the file has {len(data)} bytes")
    header = parse_header(data[8 : 8 + length], file=name, where=label, file_size=len(data))
    if set(header.tensors) != {INPUTS_TENSOR}:
        raise CheckpointError(
            f"{label}: expected exactly one tensor named '{INPUTS_TENSOR}', found {sorted(header.tensors)}"
        )
    info = header.tensors[INPUTS_TENSOR]
    if info.dtype not in FLOAT_DTYPES | INTEGER_DTYPES or len(info.shape) < 2:
        raise CheckpointError(
            f"{label}: '{INPUTS_TENSOR}' must be (examples, …) of floats or token ids, got {info.dtype} {list(info.shape)}"
        )
    if not 1 <= info.shape[0] <= MAX_EXAMPLES:
        raise CheckpointError(f"{label}: {info.shape[0]} examples; give 1 to {MAX_EXAMPLES}")
    dtype = DTYPES[info.dtype][0]
    tensor = torch.frombuffer(bytearray(data[info.start : info.end]), dtype=torch.uint8).view(dtype).reshape(info.shape)
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{label}: '{INPUTS_TENSOR}' holds NaN or infinite values")
    return tensor.clone()


def tokenised_inputs(texts: tuple[str, ...], tokenizer_dir: Path, tokens: int, uri: str) -> torch.Tensor:
    """Token ids (m, T): each text's first T tokens (special tokens included); shorter texts are skipped."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, trust_remote_code=False)
    ids = tokenizer(list(texts), truncation=True, max_length=max(tokens, 512))["input_ids"]
    kept = [row[:tokens] for row in ids if len(row) >= tokens]
    if not kept:
        raise CheckpointError(
            f"{uri}: no calibration text has {tokens} tokens (the anchors' length); give longer texts"
        )
    return torch.tensor(kept, dtype=torch.long)


def digest_of(sets: list[CalibrationSet | None]) -> str:
    """One digest for a merge's calibration files (provenance, anchor cache keys)."""
    parts = [s.sha256 if s is not None else "-" for s in sets]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest() if any(s is not None for s in sets) else ""
