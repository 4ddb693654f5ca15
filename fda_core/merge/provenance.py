"""What produced an output: method, parameters, seed, version, and each input's sha256.

It goes into every shard's safetensors metadata (key `fda_merge`), merge_provenance.json and
the model card. A sharded input's `sha256` is the digest of its `sha256  file` lines, sorted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fda_core import __version__
from fda_core.merge.plan import MergePlan

PLACEHOLDER = "0" * 64
METADATA_KEY = "fda_merge"


def input_digest(files: dict[str, str]) -> str:
    if len(files) == 1:
        return next(iter(files.values()))
    listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def build_provenance(plan: MergePlan, hashes: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    """`hashes` maps each input URI to {file: sha256}; None gives same-length placeholders."""
    inputs = []
    for role, layout in [("base", plan.base)] + [("model", e) for e in plan.experts]:
        if layout is None:
            continue
        files = hashes[layout.uri] if hashes else {label: PLACEHOLDER for label, _, _ in layout.hashed_files()}
        inputs.append({"role": role, "location": layout.uri, "sha256": input_digest(files), "files": files})
    for found in plan.calibration:
        if found is not None:
            inputs.append({"role": "calibration", "location": found.uri, "sha256": found.sha256})
    return {
        "fda_merge_version": __version__,
        "method": plan.config.method,
        "config": plan.config.model_dump(mode="json"),
        "seed": plan.config.seed,
        "inputs": inputs,
    }


def safetensors_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    return {"format": "pt", METADATA_KEY: json.dumps(provenance, sort_keys=True, separators=(",", ":"))}
