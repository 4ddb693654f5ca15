"""Calibration examples as the base model carries them from block to block (fda_core.fda.calibration)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from fda_core.checkpoints.layout import CheckpointLayout
from fda_core.checkpoints.reader import TensorReader
from fda_core.checkpoints.sources import LocalSource
from fda_core.errors import CheckpointError
from fda_core.fda.blocks import Block, first_block_inputs
from fda_core.fda.calibration import CalibrationSet, tokenised_inputs
from fda_core.fda.objective import Params
from fda_core.merge.output import SIDE_FILES


class CalibrationStream:
    """Per task, its examples as inputs to the current block (m_i, *one anchor), or None."""

    def __init__(self, hidden: list[torch.Tensor | None]) -> None:
        self.hidden = hidden

    @classmethod
    def start(
        cls,
        sets: list[CalibrationSet | None],
        reference: CheckpointLayout,
        base: TensorReader,
        first: Block,
        blocks: str | None,
        device: torch.device,
    ) -> CalibrationStream:
        assert reference.config is not None
        hidden: list[torch.Tensor | None] = []
        with tempfile.TemporaryDirectory(prefix="fda-tokenizer-") as scratch:
            for found in sets:
                if found is None:
                    hidden.append(None)
                    continue
                inputs = _model_inputs(found, reference, first, Path(scratch))
                states = first_block_inputs(reference.config, list(reference.tensors), base.read, inputs, blocks=blocks)
                if tuple(states.shape[1:]) != first.anchor_shape:
                    raise CheckpointError(
                        f"{found.uri}: its examples enter the blocks as {list(states.shape[1:])}, the anchors are"
                        f" {list(first.anchor_shape)} (tokens, width); give inputs of the anchors' shape"
                    )
                hidden.append(states.to(device))
        return cls(hidden)

    def advance(self, block: Block, theta0: Params) -> None:
        """Carry every task's examples through the base's block: the next block's inputs."""
        self.hidden = [None if h is None else block.outputs(theta0, h) for h in self.hidden]


def _model_inputs(found: CalibrationSet, reference: CheckpointLayout, first: Block, scratch: Path) -> torch.Tensor:
    tokens = first.anchor_shape[0] if len(first.anchor_shape) == 2 else 0
    if found.inputs is None:
        return tokenised_inputs(found.texts, _tokenizer_folder(reference, scratch), tokens, found.uri)
    if found.inputs.is_floating_point():
        return found.inputs
    if found.inputs.dim() != 2 or found.inputs.shape[1] < tokens:
        raise CheckpointError(
            f"{found.uri}: token ids must be (examples, ≥ {tokens}) — the anchors' length — got {list(found.inputs.shape)}"
        )
    return found.inputs[:, :tokens].long()


def _tokenizer_folder(reference: CheckpointLayout, scratch: Path) -> Path:
    """A local folder with the base's tokenizer files (copied from a remote base)."""
    source = reference.source
    if isinstance(source, LocalSource) and not source.single_file:
        return source.root
    names = [name for name in source.list_files() if name in SIDE_FILES]
    if not names:
        raise CheckpointError(f"{reference.uri}: no tokenizer files beside the base model; text calibration needs them")
    for name in names:
        shutil.copyfile(source.local_path(name), scratch / name)
    return scratch
