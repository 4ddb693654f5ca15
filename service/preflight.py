"""Checks at submit time that fda_core would otherwise make minutes later on a worker.

Every input's listing and safetensors header are read (ranged GETs for S3, no tensor data), the
models are checked against each other (names, shapes, dtypes) and FDA's blocks are discovered:
a missing object, a pickle, a shape mismatch or a wrong block path answers 422 at submit, naming
the input, instead of failing after the download.
"""

from __future__ import annotations

import re

from fda_core.config import MergeConfig
from fda_core.errors import FdaMergeError
from fda_core.merge.plan import build_plan
from service.errors import InvalidRequest
from service.settings import Settings
from service.sources import register_s3

PLAN_SHARD_BYTES = 5 << 30


def preflight(config: MergeConfig, settings: Settings) -> None:
    register_s3(settings)
    try:
        build_plan(config, PLAN_SHARD_BYTES)
    except FdaMergeError as exc:
        raise InvalidRequest(str(exc), _input_named(config, str(exc))) from None


def _input_named(config: MergeConfig, message: str) -> str | None:
    """The request field of the input the message blames: an expert before the base (a mismatch names
    both, and the base is the reference), the longest URI first (…/a-2 before …/a); a plan error that
    names a config field (`layers: …`, `models[1].calibration: …`) blames that field."""
    if message.startswith("layers:"):
        return "layers"
    field = re.match(r"models\[\d+\]\.calibration(?=:)", message)
    if field:
        return field.group(0)
    experts = sorted(((f"models[{i}].model", m.model) for i, m in enumerate(config.models)), key=lambda p: -len(p[1]))
    base = [("base_model", config.base_model)] if config.base_model else []
    return next((param for param, uri in [*experts, *base] if uri in message), None)
