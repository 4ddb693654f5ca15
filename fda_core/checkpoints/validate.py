"""Cross-checkpoint validation: every input must agree with the reference on names and shapes."""

from __future__ import annotations

from fda_core.checkpoints.layout import CheckpointLayout
from fda_core.errors import IncompatibleModelsError


def check_compatible(reference: CheckpointLayout, others: list[CheckpointLayout]) -> None:
    """Raise on the first tensor missing, extra or of another shape; names both models."""
    for other in others:
        _check_pair(reference, other)


def _check_pair(ref: CheckpointLayout, other: CheckpointLayout) -> None:
    # Integer buffers (BERT's legacy embeddings.position_ids) come and go between library versions:
    # they are never merged, the reference's copy is kept, so only float tensors must match.
    missing = sorted(n for n in set(ref.tensors) - set(other.tensors) if ref.tensors[n].is_float)
    if missing:
        raise IncompatibleModelsError(
            f"tensor '{missing[0]}' is in {ref.describe(missing[0])} but missing from {other.uri}" + _more(missing)
        )
    extra = sorted(n for n in set(other.tensors) - set(ref.tensors) if other.tensors[n].is_float)
    if extra:
        raise IncompatibleModelsError(
            f"tensor '{extra[0]}' is in {other.describe(extra[0])} but missing from {ref.uri}" + _more(extra)
        )
    for name, info in ref.tensors.items():
        theirs = other.tensors.get(name)
        if theirs is None:
            continue
        if theirs.shape != info.shape:
            raise IncompatibleModelsError(
                f"tensor '{name}' has shape {list(info.shape)} in {ref.describe(name)} "
                f"but {list(theirs.shape)} in {other.describe(name)}"
            )
        if info.is_float != theirs.is_float:
            raise IncompatibleModelsError(
                f"tensor '{name}' is {info.dtype} in {ref.describe(name)} but {theirs.dtype} in {other.describe(name)}"
            )


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""
