"""The parser refuses, never crashes: random and mutated safetensors headers, config.json and index
files give CheckpointError (or parse), nothing else; what the safetensors library refuses, we refuse.
Bounded: a few hundred examples each, well under a minute together."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fda_core.checkpoints.header import parse_header
from fda_core.checkpoints.layout import inspect_checkpoint
from fda_core.errors import CheckpointError
from tests.support.hostile import HEADERS, write_safetensors

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "X"]) | json_values,
        "shape": st.lists(st.integers(-2, 2**64 + 1), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-2, 2**64), min_size=0, max_size=3) | json_values,
    },
)
headers = st.dictionaries(st.text(max_size=6), entries | json_values, max_size=5)


def ours(raw: bytes, size: int) -> Exception | None:
    try:
        parse_header(raw, file="m.safetensors", where="m.safetensors", file_size=size)
    except CheckpointError as exc:
        return exc
    return None


@FUZZ
@given(header=headers, data=st.binary(max_size=64))
def test_structured_headers_give_checkpoint_error_or_parse(header: dict, data: bytes) -> None:
    raw = json.dumps(header, allow_nan=True).encode()
    ours(raw, 8 + len(raw) + len(data))  # anything but CheckpointError propagates and fails the test


@FUZZ
@given(raw=st.binary(max_size=256))
def test_random_bytes_give_checkpoint_error_or_parse(raw: bytes) -> None:
    ours(raw, 8 + len(raw))


def test_what_the_safetensors_library_refuses_we_refuse(tmp_path: Path) -> None:
    for name, make in HEADERS.items():
        path = write_safetensors(tmp_path / f"{name}.safetensors", make(), b"\0" * 4)
        with pytest.raises(SafetensorError), safe_open(str(path), "pt") as handle:
            list(handle.keys())
        with pytest.raises(CheckpointError, match=r"\.safetensors"):
            inspect_checkpoint(str(path))


@FUZZ
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_a_valid_file_with_one_byte_changed_is_read_or_refused_like_the_library(
    tmp_path: Path, position: int, value: int
) -> None:
    path = tmp_path / "m.safetensors"
    if not path.exists():
        save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, str(path), {"k": "v"})
    original = path.read_bytes()
    length = struct.unpack("<Q", original[:8])[0]
    index = 8 + position % length  # inside the JSON header
    mutated = original[:index] + bytes([value]) + original[index + 1 :]
    raw = mutated[8 : 8 + length]
    try:
        library_refuses = False
        (tmp_path / "x.safetensors").write_bytes(mutated)
        with safe_open(str(tmp_path / "x.safetensors"), "pt") as handle:
            list(handle.keys())
    except SafetensorError:
        library_refuses = True
    refusal = ours(raw, len(mutated))
    if library_refuses:
        assert refusal is not None, f"the library refuses {raw!r}, we accepted it"


@FUZZ
@given(document=json_values, name=st.sampled_from(["config.json", "model.safetensors.index.json"]))
def test_side_files_give_checkpoint_error_or_parse(tmp_path: Path, document, name: str) -> None:
    folder = tmp_path / "model"
    if not folder.exists():
        folder.mkdir()
        save_file({"a": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / name).write_text(json.dumps(document, allow_nan=True))
    with contextlib.suppress(CheckpointError):  # anything else fails the test
        inspect_checkpoint(str(folder))
