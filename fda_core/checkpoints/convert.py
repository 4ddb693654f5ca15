"""`fdamerge convert`: a GGUF file → a Hugging Face safetensors folder, or a folder → one GGUF file.

GGUF → folder is a one-input passthrough merge of the GGUF (read as the Hugging Face model it holds,
dequantised tensor by tensor): the same validation, streaming, staging and provenance as any merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fda_core.checkpoints.gguf_export import GgufExport, export_gguf
from fda_core.checkpoints.layout import GGUF_SUFFIX, InputLimits
from fda_core.config import DTypeName, MergeConfig
from fda_core.errors import ConfigError


@dataclass
class Converted:
    output: Path
    tensors: int
    bytes: int
    warnings: list[str]


def convert(
    source: str, out: Path, *, dtype: DTypeName | None = None, gguf_type: str = "f16", overwrite: bool = False,
    tokenizer_pre: str | None = None, limits: InputLimits = InputLimits(),
) -> Converted:  # fmt: skip
    """GGUF in (`source` ends with .gguf) gives a folder at `out`; `out` ending with .gguf gives a GGUF file."""
    to_gguf = out.name.endswith(GGUF_SUFFIX)
    if source.endswith(GGUF_SUFFIX) == to_gguf:
        raise ConfigError(
            f"convert {source} → {out}: give a .gguf file and a folder (GGUF → Hugging Face), or a folder and an"
            " output ending in .gguf (Hugging Face → GGUF)"
        )
    if to_gguf:
        if dtype is not None:
            raise ConfigError("--dtype is for GGUF → Hugging Face; the GGUF file's type is --type (f16, bf16, q8_0)")
        written: GgufExport = export_gguf(
            source, out, gguf_type, overwrite=overwrite, tokenizer_pre=tokenizer_pre, limits=limits
        )
        return Converted(written.path, written.tensors, written.bytes, written.warnings)
    from fda_core.merge.run import MergeOptions, run_merge

    config = MergeConfig(method="passthrough", models=[{"model": source}], dtype=dtype)  # type: ignore[list-item]
    result = run_merge(config, out, MergeOptions(overwrite=overwrite, limits=limits))
    return Converted(result.output_dir, result.tensors, sum(s.bytes for s in result.shards), result.warnings)
