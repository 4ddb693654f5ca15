"""Hostile inputs, as a tenant could hand them to the service: each a small file or config that once
cost the API seconds, gigabytes or a 500 (issue #11). Used by tests/security and bench/api_hostile.py."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def write_safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def folder_with(root: Path, name: str, header: dict | bytes, data: bytes = b"", config: str | None = None) -> Path:
    folder = root / name
    write_safetensors(folder / "model.safetensors", header, data)
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


def copy_with_config(source: Path, target: Path, **changes: Any) -> Path:
    """A real checkpoint folder whose config.json says something else (the weights are untouched)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


# --- headers ---------------------------------------------------------------------------------------


def shape_product_header() -> bytes:
    """~0.8 MB: a shape of 40,000 dimensions near 2^62, whose product is a 2.5-million-bit integer
    (computed before any bound: 11.5 s of /healthz frozen)."""
    return json.dumps({"t": {"dtype": "F32", "shape": [2**62 - 1] * 40_000, "data_offsets": [0, 4]}}).encode()


def zero_size_tensors_header(count: int) -> bytes:
    """`count` zero-size tensors (accepted: +863 MB and 27 s per input at a million)."""
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(count))
    return ("{" + entries + "}").encode()


def huge_integer_header() -> bytes:
    return b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'


def stride_overflow_header() -> dict:
    return {"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}


def nested_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


HEADERS: dict[str, Callable[[], dict | bytes]] = {
    "shape_product": shape_product_header,
    "huge_integer": huge_integer_header,
    "stride_overflow": stride_overflow_header,
    "nested_header": lambda: ("[" * 100_000).encode(),
    "surrogate_name": lambda: b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    "list_metadata": lambda: {"__metadata__": [], "w": F32},
    "nan_offset": lambda: b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}',
    "float_dim": lambda: {"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}},
}
REASONS = {  # what each refusal must say (not an incidental mismatch with the other model)
    "shape_product": "invalid shape", "huge_integer": "unreadable", "stride_overflow": "invalid shape",
    "nested_header": "unreadable", "surrogate_name": "unreadable", "list_metadata": "__metadata__",
    "nan_offset": "unreadable", "float_dim": "invalid shape",
}  # fmt: skip


# --- job bodies ------------------------------------------------------------------------------------


def fda_body(base: Path, experts: list[Path], **parameters: Any) -> dict[str, Any]:
    return {
        "method": "fda",
        "base_model": str(base),
        "models": [{"model": str(e)} for e in experts],
        "parameters": {"anchors": 4, "construction_steps": 2, "adaptation_epochs": 1, **parameters},
    }


def ta_body(base: str, experts: list[str], **fields: Any) -> dict[str, Any]:
    return {"method": "task_arithmetic", "base_model": base, "models": [{"model": e} for e in experts], **fields}
