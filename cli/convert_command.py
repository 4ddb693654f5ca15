"""`fdamerge convert IN --out OUT`: GGUF → Hugging Face safetensors folder, or a folder → GGUF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.sizes import format_bytes


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="GGUF file → Hugging Face folder (dequantised), or a Hugging Face LLaMA folder → GGUF (--out x.gguf)",
    )
    parser.add_argument("source", help="a .gguf file, or a Hugging Face model folder (safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="a folder (from GGUF) or a file ending in .gguf")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None,
        help="GGUF → folder: dtype of the dequantised weights (default float32)",
    )  # fmt: skip
    parser.add_argument(
        "--type", dest="gguf_type", choices=["f32", "f16", "bf16", "q8_0"], default="f16",
        help="folder → GGUF: type of the 2-D weights (default f16; norms stay f32)",
    )  # fmt: skip
    parser.add_argument("--tokenizer-pre", default=None, help="folder → GGUF: llama.cpp pre-tokenizer name to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fda_core.checkpoints.convert import convert
    from fda_core.errors import FdaMergeError

    try:
        done = convert(
            args.source, args.out, dtype=args.dtype, gguf_type=args.gguf_type, overwrite=args.overwrite,
            tokenizer_pre=args.tokenizer_pre,
        )  # fmt: skip
    except (FdaMergeError, OSError) as exc:
        print(f"fdamerge: error: {exc}", file=sys.stderr)
        return 2
    for warning in done.warnings:
        print(f"fdamerge: warning: {warning}", file=sys.stderr)
    print(f"converted {done.tensors} tensors -> {done.output} ({format_bytes(done.bytes)})")
    return 0
