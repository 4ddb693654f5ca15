"""The output folder: built in a hidden sibling, renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fda_core.checkpoints.layout import CheckpointLayout
from fda_core.errors import OutputError

SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer.model", "spiece.model", "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",  # sentence-transformers
)  # fmt: skip
PROVENANCE_FILE = "merge_provenance.json"
CONFIG_FILE = "fdamerge_config.yaml"


def check_output_free(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(f"{out_dir}: already exists and is not empty; choose another --out or pass --overwrite")
    if not out_dir.parent.exists():
        raise OutputError(f"{out_dir.parent}: parent folder of the output does not exist")


@contextmanager
def staging_directory(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it becomes `out_dir`, on error it is removed."""
    check_output_free(out_dir, overwrite)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _swap_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    check_output_free(out_dir, overwrite)
    previous = None
    if out_dir.exists():
        previous = out_dir.parent / f".{out_dir.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, previous)
    os.replace(staging, out_dir)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def copy_side_files(
    reference: CheckpointLayout, directory: Path, dtype: str | None, updates: dict[str, Any] | None = None
) -> list[str]:
    """Config and tokenizer files of the reference model (usually the base); a GGUF's are built. `updates`
    go into config.json (a layer stack's layer count and head tying)."""
    changes = {**(updates or {}), **({} if dtype is None else {"dtype": dtype})}
    if reference.side_files is not None:
        built = reference.side_files()
        for name, data in built.items():
            (directory / name).write_bytes(_updated(data, changes) if name == "config.json" and changes else data)
        return sorted(built)
    if reference.source.single_file:
        return []
    available = set(reference.source.list_files())
    copied = []
    for name in SIDE_FILES:
        if name in available:
            data = reference.source.read_range(name, 0, reference.source.size(name))
            if name == "config.json" and changes:
                data = _updated(data, changes)
            (directory / name).write_bytes(data)
            copied.append(name)
    return copied


def copy_tokenizer_files(source: CheckpointLayout, directory: Path) -> list[str]:
    """tokenizer_source: that input's tokenizer files replace the reference's."""
    files = source.side_files() if source.side_files is not None else None
    names = [n for n in SIDE_FILES if n not in ("config.json", "generation_config.json")]
    if files is None:
        available = set() if source.source.single_file else set(source.source.list_files())
        files = {n: source.source.read_range(n, 0, source.source.size(n)) for n in names if n in available}
    for name in names:
        (directory / name).unlink(missing_ok=True)
    copied = [name for name in names if name in files]
    for name in copied:
        (directory / name).write_bytes(files[name])
    return copied


def _updated(config_bytes: bytes, changes: dict[str, Any]) -> bytes:
    config = json.loads(config_bytes)
    changes = dict(changes)
    if "dtype" in changes:
        dtype = changes.pop("dtype")
        for key in [key for key in ("dtype", "torch_dtype") if key in config] or ["dtype"]:
            config[key] = dtype
    config.update(changes)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def write_records(directory: Path, provenance: dict[str, Any]) -> None:
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(provenance["config"], sort_keys=False))
    (directory / "README.md").write_text(model_card(provenance))


def model_card(provenance: dict[str, Any]) -> str:
    config = provenance["config"]
    rows = "\n".join(f"| {i['role']} | `{i['location']}` | `{i['sha256']}` |" for i in provenance["inputs"])
    base = config.get("base_model")
    front = (
        "---\nlibrary_name: transformers\ntags: [merge, fda-merge]\n"
        + (f"base_model: {json.dumps(base)}\n" if base else "")
        + "---\n"
    )
    return f"""{front}
# Merged model

Produced by fda-merge {provenance["fda_merge_version"]} with method `{config["method"]}`, seed {config["seed"]}.

## Inputs

| role | location | sha256 |
|---|---|---|
{rows}

## Configuration

```yaml
{yaml.safe_dump(config, sort_keys=False).rstrip()}
```

Reproduce with `fdamerge merge {CONFIG_FILE} --out DIR`; {PROVENANCE_FILE} holds each input file's sha256.
"""
