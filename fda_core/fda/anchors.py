"""Anchors as artifacts: safetensors with a manifest, and a content-addressed cache.

A (layer, task)'s anchors are determined by the base and expert contents (sha256), the block,
the anchor shape, the seed and the construction settings; their digest names the cache entry, so
a later merge that includes the same expert on the same base with the same settings reuses them:
merging {A, B, C} then {A, B, D} constructs only D's anchors.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ANCHOR_FORMAT = 2  # bump when construction changes in a way that changes its anchors (2: structural-zero probe)


@dataclass(frozen=True)
class AnchorKey:
    base_sha256: str
    expert_sha256: str
    block: str  # checkpoint prefix, e.g. "model.layers.3."
    anchor_shape: tuple[int, ...]  # (n, *one anchor)
    seed: int
    settings: dict[str, Any]

    def digest(self) -> str:
        document = {"format": ANCHOR_FORMAT, **self.__dict__, "anchor_shape": list(self.anchor_shape)}
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    def generator_seed(self) -> int:
        """Seeds this (layer, task)'s initial anchors: independent of task order and batching."""
        return int(self.digest()[:15], 16)


def write_anchors(path: Path, tensors: dict[str, torch.Tensor], manifest: Any) -> None:
    """Atomically write anchors with their manifest in the safetensors metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(partial),
        metadata={"manifest": json.dumps(manifest, sort_keys=True)},
    )
    os.replace(partial, path)


class AnchorStore:
    """A folder of anchors keyed by AnchorKey digests: `<root>/<ab>/<digest>.safetensors`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: AnchorKey) -> Path:
        digest = key.digest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def load(self, key: AnchorKey) -> tuple[torch.Tensor, dict[str, Any]] | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt") as handle:
                manifest = json.loads(handle.metadata()["manifest"])
                anchors = handle.get_tensor("anchors")
        except Exception:  # a damaged entry is a miss, rebuilt and overwritten
            return None
        if tuple(anchors.shape) != key.anchor_shape:
            return None
        return anchors, manifest

    def save(self, key: AnchorKey, anchors: torch.Tensor, manifest: dict[str, Any]) -> None:
        write_anchors(self._path(key), {"anchors": anchors}, manifest)
