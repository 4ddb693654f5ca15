"""Typed errors, raised where the fault is known and translated once at the edge.

Every message names the input (file or URI), the tensor and the shapes involved, and says
what to do next, on one line.
"""


class FdaMergeError(Exception):
    """Base class of every error fda_core raises on purpose."""


class ConfigError(FdaMergeError):
    """The merge configuration is invalid (unknown method, bad parameter, wrong model count)."""


class CheckpointError(FdaMergeError):
    """A checkpoint cannot be read: missing, unsupported format, corrupt or truncated."""


class InputLimitError(CheckpointError):
    """An input is larger than this merge accepts (header bytes, tensor count, total input bytes)."""


class PickleCheckpointError(CheckpointError):
    """The checkpoint is a pickle (.bin/.pt/.pth/.ckpt); we never unpickle user files."""


class IncompatibleModelsError(FdaMergeError):
    """Two checkpoints disagree on tensor names, shapes or dtypes."""


class NonFiniteError(FdaMergeError):
    """A tensor holds NaN or infinite values: an input checkpoint's, or what the merge produced."""


class OutputError(FdaMergeError):
    """The output location cannot be written (exists already, not writable)."""


class MergeCancelled(FdaMergeError):
    """A cancel callback asked the merge to stop; no output was written."""
