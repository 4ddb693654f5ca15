"""The merge job as a tenant specifies it: one typed model from the API body to the worker.

`JobSpec` is the body of `POST /v1/merge-jobs` and of a schedule's template, what submit stores
(its digest, for Idempotency-Key replays, is derived from the model), what a schedule keeps, and
what a worker rebuilds from the job row for the job id the queue carries — and validates again.
Every check that needs no I/O lives here: the fda_core merge config (method, parameters, finite
numbers), a safe output prefix, bounded metadata, and the per-job limits.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema

from fda_core.config import MergeConfig, ModelInput
from fda_core.fda.settings import FdaParams
from fda_core.methods import method_names
from service.limits import Limits, at_most
from service.models import MergeJob

SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+@,~-]*$")
MAX_SEGMENT_BYTES = 255  # a file name on every filesystem we write to
MAX_OUTPUT_CHARS = 512
CONFIG_FIELDS = set(MergeConfig.model_fields)
MAX_MODELS = 1024  # the schema's bound, checked before any per-model work; FDA_LIMIT_MODELS_PER_JOB is ≤ it


def output_prefix(value: str) -> str:
    """A relative prefix under the service's storage: `team/run-1`, never absolute, never `..`."""
    if value.startswith("/") or "://" in value:
        raise ValueError(f"{value!r} must be a relative prefix inside the service's storage")
    for segment in value.split("/"):
        if not SEGMENT.match(segment) or segment in (".", ".."):
            raise ValueError(
                f"{value!r}: each '/'-separated part is letters, digits and . _ = + @ , ~ - (starting with a"
                " letter or digit), none empty"
            )
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise ValueError(f"a part of {len(segment.encode())} bytes; at most {MAX_SEGMENT_BYTES}")
    return value


def metadata_text(value: str) -> str:
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise ValueError("control characters are not allowed")
    return value


MethodName = Annotated[
    str, WithJsonSchema({"type": "string", "enum": sorted(method_names()), "description": "A merge method"})
]
OutputPrefix = Annotated[str, Field(min_length=1, max_length=MAX_OUTPUT_CHARS), AfterValidator(output_prefix)]
MetadataKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^:]+$"), AfterValidator(metadata_text)]
MetadataValue = Annotated[str, Field(max_length=512), AfterValidator(metadata_text)]


class JobSpec(MergeConfig):
    """An fda_core merge config (method, base_model, models, parameters, dtype, seed, layers,
    check_finite) plus where the output goes and what for."""

    method: MethodName = Field(description="A registered merge method, e.g. task_arithmetic, ties, fda")
    models: list[ModelInput] = Field(min_length=1, max_length=MAX_MODELS)
    output: OutputPrefix | None = Field(None, description="Prefix under the service's storage; default: none")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=32, description="Free key/values, filterable as key:value"
    )

    def merge_config(self) -> MergeConfig:
        return MergeConfig.model_validate(self.model_dump(include=CONFIG_FIELDS))

    def config_document(self) -> dict[str, Any]:
        """The merge config as stored on the job and shown in its `config`."""
        return self.model_dump(mode="json", include=CONFIG_FIELDS, exclude_none=True)

    def stored(self) -> dict[str, Any]:
        """The form a schedule keeps (and the digest covers): {config, output, metadata}."""
        return {"config": self.config_document(), "output": self.output, "metadata": dict(self.metadata)}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> JobSpec:
        return cls.model_validate(
            {**stored["config"], "output": stored.get("output"), "metadata": stored.get("metadata") or {}}
        )

    @classmethod
    def of_job(cls, job: MergeJob) -> JobSpec:
        """The job's specification, validated again (a worker trusts nothing it reads back)."""
        return cls.from_stored({"config": job.config, "output": job.output_prefix, "metadata": job.metadata_})

    def with_metadata(self, **extra: str) -> JobSpec:
        return self.model_copy(update={"metadata": {**self.metadata, **extra}})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.stored(), sort_keys=True).encode()).hexdigest()

    def check_limits(self, limits: Limits) -> None:
        """The per-job limits that need no I/O (LimitExceeded naming the field and the limit)."""
        at_most(len(self.models), limits.models_per_job, "models_per_job", "models", "model count")
        steps = _steps(self)
        if steps is not None:
            at_most(steps[1], limits.optimizer_steps, "optimizer_steps", steps[0], "steps")
        if self.method == "fda":
            _check_fda(FdaParams.model_validate(self.parameters), limits)


def _steps(spec: JobSpec) -> tuple[str, int] | None:
    """The largest `steps` an iterative method (wudi, directly or as FDA's init/outside) is asked for."""
    found: list[tuple[str, int]] = []
    for where, value in _numbers(spec.parameters, "parameters"):
        if where.split(".")[-1] == "steps" and isinstance(value, int):
            found.append((where, value))
    for index, model in enumerate(spec.models):
        for where, value in _numbers(model.parameters, f"models[{index}].parameters"):
            if where.split(".")[-1] == "steps" and isinstance(value, int):
                found.append((where, value))
    return max(found, key=lambda item: item[1]) if found else None


def _numbers(value: Any, where: str) -> list[tuple[str, Any]]:
    """(path, leaf) of every leaf under a parameters dict; a gradient's or condition's leaves keep the key."""
    if isinstance(value, dict):
        if "value" in value and set(value) <= {"filter", "value"}:
            return _numbers(value["value"], where)
        return [leaf for key, item in value.items() for leaf in _numbers(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _numbers(item, where)]
    return [(where, value)]


def _check_fda(fda: FdaParams, limits: Limits) -> None:
    at_most(fda.anchors, limits.fda_anchors, "fda_anchors", "parameters.anchors", "anchors")
    at_most(fda.tokens, limits.fda_tokens, "fda_tokens", "parameters.tokens", "tokens")
    budget = fda.anchors * fda.tokens * (fda.construction_steps + fda.adaptation_epochs)
    at_most(budget, limits.fda_budget, "fda_budget", "parameters", "anchors × tokens × (steps + epochs)")
