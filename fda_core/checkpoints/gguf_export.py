"""Write a Hugging Face LLaMA folder (a merge's output) as one GGUF file for llama.cpp.

Tensors stream one at a time from the validated folder into the file (gguf's writer, header and
tensor table first: every size is known up front); q_proj/k_proj get llama.cpp's rotary order back.
`f16` / `bf16` / `q8_0` apply to 2-D weights whose rows fit the type's blocks; norms stay F32, as
llama.cpp's converter keeps them. A tied head (`tie_word_embeddings`) is written once, as
`token_embd.weight`: a stored `lm_head.weight` that equals it is dropped, one that differs is refused.
The file is built beside the target and renamed into place when complete.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fda_core.checkpoints.gguf import BLOCK_NAMES, GLOBAL_NAMES, permute_rotary
from fda_core.checkpoints.header import load_json
from fda_core.checkpoints.layout import CheckpointLayout, InputLimits, inspect_checkpoint
from fda_core.checkpoints.reader import TensorReader
from fda_core.errors import CheckpointError, ConfigError, OutputError

OUT_TYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7)}  # llama_ftype
HF_TO_GGUF = {hf: gguf for gguf, hf in GLOBAL_NAMES.items()}
HF_BLOCK_TO_GGUF = {hf: gguf for gguf, hf in BLOCK_NAMES.items()}
MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json of a 256k vocabulary is ~30 MB
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


@dataclass
class GgufExport:
    path: Path
    tensors: int
    bytes: int
    warnings: list[str] = field(default_factory=list)


def export_gguf(
    folder: str, out: Path, out_type: str = "f16", *, overwrite: bool = False, tokenizer_pre: str | None = None,
    limits: InputLimits = InputLimits(),
) -> GgufExport:  # fmt: skip
    """Write the LLaMA checkpoint at `folder` as the GGUF file `out`."""
    if out_type not in OUT_TYPES:
        raise ConfigError(f"GGUF output type '{out_type}' is not one of {', '.join(OUT_TYPES)}")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists; choose another output or pass --overwrite")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: parent folder of the output does not exist")
    layout = inspect_checkpoint(folder, limits)
    config = _llama_config(layout)
    names = _gguf_names(layout, config)
    warnings: list[str] = []
    metadata = _model_metadata(config, out_type, Path(folder).name) + _tokenizer_metadata(
        layout, config, tokenizer_pre, warnings
    )
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        count = _write(layout, config, names, metadata, out_type, staging)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return GgufExport(out, count, out.stat().st_size, warnings)


def _llama_config(layout: CheckpointLayout) -> dict[str, Any]:
    config = layout.config
    if config is None:
        raise CheckpointError(f"{layout.uri}: GGUF export needs the model folder's config.json")
    if config.get("model_type") not in ("llama", "mistral"):
        raise CheckpointError(
            f"{layout.uri}: model_type {config.get('model_type')!r}; fda-merge writes GGUF for LLaMA-style models"
            " (model_type llama or mistral)"
        )
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "?"
    if kind not in ("default", None):
        raise CheckpointError(f"{layout.uri}: rope scaling '{kind}' is not written to GGUF; plain RoPE only")
    return config


def _gguf_names(layout: CheckpointLayout, config: dict[str, Any]) -> dict[str, str]:
    """HF tensor name → GGUF name, in the folder's order; the tied head dropped (checked equal)."""
    names: dict[str, str] = {}
    tied = bool(config.get("tie_word_embeddings", False))
    for name in sorted(layout.tensors, key=lambda n: (layout.tensors[n].file, layout.tensors[n].start)):
        if name == "lm_head.weight" and tied:
            _check_tied_copy(layout)
            continue
        parts = name.split(".")
        if name in HF_TO_GGUF:
            names[name] = HF_TO_GGUF[name]
        elif len(parts) > 3 and parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in HF_BLOCK_TO_GGUF:
            names[name] = f"blk.{int(parts[2])}.{HF_BLOCK_TO_GGUF['.'.join(parts[3:])]}"
        else:
            raise CheckpointError(
                f"{layout.describe(name)}: tensor '{name}' has no GGUF (llama.cpp) name; not exported"
            )
    if "lm_head.weight" not in layout.tensors and not tied:
        raise CheckpointError(f"{layout.uri}: config.json unties the head but there is no lm_head.weight")
    return names


def _check_tied_copy(layout: CheckpointLayout) -> None:
    reader = TensorReader(layout)
    try:
        same = torch.equal(reader.read("lm_head.weight"), reader.read("model.embed_tokens.weight"))
    finally:
        reader.close()
    if not same:
        raise CheckpointError(
            f"{layout.uri}: config.json ties the head to the embeddings but lm_head.weight differs from them;"
            " set tie_word_embeddings: false to keep both"
        )


def _model_metadata(config: dict[str, Any], out_type: str, name: str) -> list[tuple[str, Any, str]]:
    heads = int(config["num_attention_heads"])
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    entries = [
        ("general.name", name, "string"),
        ("general.file_type", OUT_TYPES[out_type][1], "uint32"),
        ("general.quantization_version", 2, "uint32"),
        ("llama.block_count", config["num_hidden_layers"], "uint32"),
        ("llama.context_length", config.get("max_position_embeddings", 2048), "uint32"),
        ("llama.embedding_length", config["hidden_size"], "uint32"),
        ("llama.feed_forward_length", config["intermediate_size"], "uint32"),
        ("llama.attention.head_count", heads, "uint32"),
        ("llama.attention.head_count_kv", config.get("num_key_value_heads") or heads, "uint32"),
        ("llama.rope.freq_base", float(theta), "float32"),
        ("llama.attention.layer_norm_rms_epsilon", float(config.get("rms_norm_eps", 1e-6)), "float32"),
        ("llama.vocab_size", config["vocab_size"], "uint32"),
        ("llama.rope.dimension_count", config.get("head_dim") or config["hidden_size"] // heads, "uint32"),
    ]
    return entries


def _tokenizer_metadata(
    layout: CheckpointLayout, config: dict[str, Any], pre: str | None, warnings: list[str]
) -> list[tuple[str, Any, str]]:
    """tokenizer.ggml.* from tokenizer.json: byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen)."""
    files = set(layout.source.list_files()) if not layout.source.single_file else set()
    if "tokenizer.json" not in files:
        warnings.append("no tokenizer.json: the GGUF file has no tokenizer (llama.cpp needs one)")
        return []
    tokenizer = _json(layout, "tokenizer.json")
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(tokenizer.get("pre_tokenizer")):
        raise CheckpointError(
            f"{layout.uri}: tokenizer.json is {model.get('type')!r} without a byte-level pre-tokenizer; fda-merge writes"
            " GGUF tokenizers for byte-level BPE only (convert this one with llama.cpp's convert_hf_to_gguf.py)"
        )
    vocab_size = int(config["vocab_size"])
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [TOKEN_UNUSED] * vocab_size
    vocab, added_tokens, merges = _vocabulary(layout, tokenizer)
    for token, index in vocab.items():
        if 0 <= index < vocab_size:
            tokens[index], types[index] = token, TOKEN_NORMAL
    for index, token, special in added_tokens:
        if 0 <= index < vocab_size:
            tokens[index], types[index] = token, TOKEN_CONTROL if special else TOKEN_USER_DEFINED
    entries: list[tuple[str, Any, str]] = [
        ("tokenizer.ggml.model", "gpt2", "string"),
        ("tokenizer.ggml.pre", pre or _pre_name(tokenizer["pre_tokenizer"], warnings), "string"),
        ("tokenizer.ggml.tokens", tokens, "array"),
        ("tokenizer.ggml.token_type", types, "int32_array"),
        ("tokenizer.ggml.merges", merges, "array"),
    ]
    entries += _special_tokens(layout, config, tokens, files)
    return entries


def _vocabulary(
    layout: CheckpointLayout, tokenizer: dict[str, Any]
) -> tuple[dict[str, int], list[tuple[int, str, bool]], list[str]]:
    """tokenizer.json's vocabulary, added tokens and merges, each entry type-checked."""
    model = tokenizer["model"]
    vocab, added, merges = model.get("vocab"), tokenizer.get("added_tokens") or [], model.get("merges") or []
    where = f"{layout.uri}/tokenizer.json"
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise CheckpointError(f"{where}: model.vocab must map tokens to integer ids")
    if not isinstance(added, list) or not all(
        isinstance(a, dict) and type(a.get("id")) is int and isinstance(a.get("content"), str) for a in added
    ):
        raise CheckpointError(f"{where}: added_tokens must be objects with an integer id and a content string")
    if not isinstance(merges, list) or not all(
        isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m))
        for m in merges
    ):
        raise CheckpointError(f"{where}: model.merges must be 'a b' strings or [a, b] pairs")
    pairs = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return vocab, [(a["id"], a["content"], bool(a.get("special"))) for a in added], pairs


def _special_tokens(
    layout: CheckpointLayout, config: dict[str, Any], tokens: list[str], files: set[str]
) -> list[tuple[str, Any, str]]:
    settings = _json(layout, "tokenizer_config.json") if "tokenizer_config.json" in files else {}
    index = {token: i for i, token in enumerate(tokens)}
    entries: list[tuple[str, Any, str]] = []
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token = settings.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token
        token_id = index.get(token) if isinstance(token, str) else config.get(f"{key}_token_id")
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            entries.append((f"tokenizer.ggml.{gguf_key}_token_id", token_id, "uint32"))
    entries.append(("tokenizer.ggml.add_bos_token", bool(settings.get("add_bos_token", False)), "bool"))
    template = settings.get("chat_template")
    if not isinstance(template, str) and "chat_template.jinja" in files:
        template = layout.source.read_range(
            "chat_template.jinja", 0, layout.source.size("chat_template.jinja")
        ).decode()
    if isinstance(template, str):
        entries.append(("tokenizer.chat_template", template, "string"))
    return entries


def _byte_level(pre: Any) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return pre.get("type") == "Sequence" and any(_byte_level(p) for p in pre.get("pretokenizers") or [])


def _pre_name(pre: dict[str, Any], warnings: list[str]) -> str:
    """llama.cpp's pre-tokenizer name for this tokenizer.json's pre-tokenizer."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # transformers 4.x has no such table
        GGUF_PRE_TOKENIZER_SPLITS = {}

    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    steps = [step for step in steps or [] if isinstance(step, dict)]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if split == pattern:
                return name
    warnings.append("pre-tokenizer not recognised: tokenizer.ggml.pre is 'default' (pass --tokenizer-pre NAME)")
    return "default"


def _json(layout: CheckpointLayout, name: str) -> dict[str, Any]:
    size = layout.source.size(name)
    if size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{layout.uri}/{name}: {size} bytes is too large (at most {MAX_TOKENIZER_BYTES})")
    doc = load_json(layout.source.read_range(name, 0, size), f"{layout.uri}/{name}: invalid JSON")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{layout.uri}/{name}: expected a JSON object")
    return doc


def _write(
    layout: CheckpointLayout, config: dict[str, Any], names: dict[str, str], metadata: list[tuple[str, Any, str]],
    out_type: str, path: Path,
) -> int:  # fmt: skip
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.constants import GGML_QUANT_SIZES

    writer = GGUFWriter(path, "llama")
    _add_metadata(writer, metadata)
    plan = []
    for name, gguf_name in names.items():
        shape = layout.tensors[name].shape
        kind = _tensor_type(shape, out_type)
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count // block * block_bytes
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=GGMLQuantizationType[kind])
        plan.append((name, kind))
    heads = {"q_proj": int(config["num_attention_heads"]), "k_proj": int(config.get("num_key_value_heads") or config["num_attention_heads"])}  # fmt: skip
    reader = TensorReader(layout, check_finite=True)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, kind in plan:
            tensor = reader.read(name).to(torch.float32)
            projection = name.split(".")[-2]
            if projection in heads and "self_attn" in name:
                tensor = permute_rotary(tensor, heads[projection])
            writer.write_tensor_data(_encode(tensor, kind))
    finally:
        reader.close()
        writer.close()
    return len(plan)


def _tensor_type(shape: tuple[int, ...], out_type: str) -> str:
    kind = OUT_TYPES[out_type][0]
    if len(shape) < 2:
        return "F32"  # norms and biases, as llama.cpp's converter keeps them
    if kind == "Q8_0" and shape[-1] % 32:
        return "F16"  # rows that do not fill Q8_0's 32-value blocks
    return kind


def _encode(tensor: torch.Tensor, kind: str) -> Any:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    values = tensor.contiguous().numpy()
    if kind == "F32":
        return values
    if kind == "F16":
        return values.astype(np.float16)
    if kind == "BF16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(*values.shape[:-1], -1)
    return quantize(values, GGMLQuantizationType[kind])


def _add_metadata(writer: Any, entries: list[tuple[str, Any, str]]) -> None:
    from gguf import GGUFValueType

    for key, value, kind in entries:
        if kind == "string":
            writer.add_string(key, value)
        elif kind == "uint32":
            writer.add_uint32(key, int(value))
        elif kind == "float32":
            writer.add_float32(key, value)
        elif kind == "bool":
            writer.add_bool(key, value)
        elif kind == "int32_array":
            writer.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
        else:
            writer.add_array(key, value)
