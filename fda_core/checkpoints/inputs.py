"""Open a merge input whatever it is — a checkpoint folder or file, a GGUF file, a LoRA adapter — and
the reader that gives its tensors."""

from __future__ import annotations

from fda_core.checkpoints.layout import CheckpointLayout, InputLimits, inspect_checkpoint
from fda_core.checkpoints.lora import LoraReader, lora_input, lora_layout
from fda_core.checkpoints.reader import TensorReader


def open_input(location: str, merge_base: CheckpointLayout | None, limits: InputLimits) -> CheckpointLayout:
    """The input at `location` (`BASE+ADAPTER` or an adapter folder: the adapter applied to its base)."""
    found = lora_input(location, merge_base, limits)
    return lora_layout(location, found) if found is not None else inspect_checkpoint(location, limits)


def open_reader(layout: CheckpointLayout, check_finite: bool = False) -> TensorReader:
    return LoraReader(layout.lora, check_finite) if layout.lora is not None else TensorReader(layout, check_finite)
