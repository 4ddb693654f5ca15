"""Progress reports and the callbacks a merge takes (the service maps them to job events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MergeProgress:
    phase: str  # "validate" | "fetch" | "check" | "merge" | "construct" | "adapt" | "finalize"
    done: int
    total: int
    tensor: str | None = None
    layer: int | None = None  # FDA: block index
    task: int | None = None  # FDA: model index
    step: int | None = None  # FDA: construction step or adaptation epoch
    value: float | None = None  # FDA: mean (1 − cos) while constructing, loss while adapting
    message: str | None = None  # "check": a warning about the inputs (the merge goes on)


ProgressCallback = Callable[[MergeProgress], None]
CancelCallback = Callable[[], bool]
