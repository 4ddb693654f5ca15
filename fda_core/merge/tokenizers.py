"""mergekit's `tokenizer_source`: base (the default), a model of the merge, or the union of their vocabularies.

fda-merge does not remap embedding rows between vocabularies: a tokenizer source is accepted when every input
has the same vocabulary (each id the same token), and then its tokenizer files are the output's. Inputs whose
vocabularies differ are refused before anything is read, saying what to do.
"""

from __future__ import annotations

import hashlib
import json

from fda_core.checkpoints.layout import CheckpointLayout
from fda_core.config import MergeConfig
from fda_core.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model")
MAX_TOKENIZER_BYTES = 64 << 20
EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def tokenizer_reference(
    config: MergeConfig, layouts: list[CheckpointLayout], reference: CheckpointLayout
) -> CheckpointLayout:
    """The input whose tokenizer the output gets (`reference`, the base, unless tokenizer_source names another)."""
    source = config.tokenizer_source
    if source in (None, "base"):
        return reference
    chosen = reference if source == "union" else _named(source, layouts)
    wanted = _vocabulary(chosen)
    for layout in layouts:
        found = _vocabulary(layout)
        if found != wanted and (found[0] is not None and wanted[0] is not None or found[1] != wanted[1]):
            raise ConfigError(
                f"tokenizer_source {source}: {chosen.uri} and {layout.uri} have different vocabularies"
                f" ({_describe(wanted)} and {_describe(found)}); fda-merge does not remap embedding rows between"
                " vocabularies. Merge models that share one tokenizer, or align them first: add the missing tokens"
                " and resize every model to the target tokenizer (transformers' resize_token_embeddings) so that each"
                " id means the same token in every input, then drop tokenizer_source"
            )
    return chosen


def _named(source: str, layouts: list[CheckpointLayout]) -> CheckpointLayout:
    for layout in layouts:
        if layout.uri.rstrip("/") == source.rstrip("/") or layout.uri.split("+")[-1].rstrip("/") == source.rstrip("/"):
            return layout
    raise ConfigError(
        f"tokenizer_source {source}: not one of the merge's inputs; name base, union, or the base or a model"
    )


def _vocabulary(layout: CheckpointLayout) -> tuple[str | None, int | None]:
    """(a digest of the tokenizer files' vocabulary, or None without any; the embeddings' row count)."""
    rows = next((info.shape[0] for name, info in layout.tensors.items() if name.endswith(EMBEDDINGS)), None)
    files = [] if layout.source.single_file else layout.source.list_files()
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        if name in files:
            size = layout.source.size(name)
            if size > MAX_TOKENIZER_BYTES:
                raise ConfigError(f"{layout.uri}/{name}: {size} bytes is too large for a tokenizer file")
            data = layout.source.read_range(name, 0, size)
            digest.update(_vocabulary_part(name, data))
            found = True
    if not found and layout.side_files is not None:  # a GGUF's tokenizer is built from its metadata
        built = layout.side_files().get("tokenizer.json")
        if built is not None:
            digest.update(_vocabulary_part("tokenizer.json", built))
            found = True
    return (digest.hexdigest() if found else None), rows


def _vocabulary_part(name: str, data: bytes) -> bytes:
    if name != "tokenizer.json":
        return data
    try:
        doc = json.loads(data)
        model = doc.get("model") or {}
        added = sorted((t.get("id"), t.get("content")) for t in doc.get("added_tokens") or [])
        return json.dumps([model.get("vocab"), model.get("merges"), added], sort_keys=True).encode()
    except (ValueError, AttributeError, TypeError):
        return data


def _describe(vocabulary: tuple[str | None, int | None]) -> str:
    digest, rows = vocabulary
    tokens = f"{rows} embedding rows" if rows is not None else "no embeddings"
    return f"{tokens}, tokenizer {digest[:12]}" if digest else f"{tokens}, no tokenizer files"
