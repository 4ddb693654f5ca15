"""A GGUF file as a Hugging Face checkpoint: names, config.json, tokenizer and dequantised tensors.

A `.gguf` input is opened like any other (`inspect_checkpoint`): its header is validated
(gguf_header.py), its tensors get Hugging Face names and shapes, and each is dequantised when it is
read — one tensor at a time, so a merge of GGUF inputs streams as a safetensors merge does. LLaMA
only (llama.cpp's `llama` architecture, which Mistral files use too). llama.cpp stores q_proj and
k_proj with each head's rotary halves interleaved (its convert script's `permute`); we undo it,
exactly as transformers' own GGUF loader does. A file without `output.weight` ties the head to the
embeddings: `tie_word_embeddings: true` and no `lm_head.weight`, never a second copy.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from fda_core.checkpoints.gguf_header import GGML_TYPES, GgufFile, GgufTensor
from fda_core.errors import CheckpointError

ARCHITECTURES = ("llama",)
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
REQUIRED_BLOCK = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                  "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")  # fmt: skip
BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
         "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}  # fmt: skip
SAFETENSORS_NAMES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64", "I8": "I8", "I16": "I16",
                     "I32": "I32", "I64": "I64"}  # fmt: skip


@dataclass(frozen=True)
class GgufDecoding:
    """Dequantise one GGUF tensor and, for q/k, undo llama.cpp's rotary permutation."""

    ggml_type: int
    shape: tuple[int, ...]  # torch order
    heads: int | None = None  # q_proj: attention heads; k_proj: KV heads

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        type_name = GGML_TYPES[self.ggml_type][0]
        if type_name in PLAIN:
            tensor = raw.view(PLAIN[type_name]).reshape(self.shape)
        else:
            import numpy as np
            from gguf import GGMLQuantizationType
            from gguf.quants import dequantize

            rows = raw.numpy().reshape(-1, raw.numel() // _rows(self.shape))  # (rows, bytes per row)
            values = dequantize(rows, GGMLQuantizationType(self.ggml_type))  # (rows, row length) float32
            tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(self.shape)
        return unpermute_rotary(tensor, self.heads) if self.heads else tensor


def _rows(shape: tuple[int, ...]) -> int:
    rows = 1
    for dim in shape[:-1]:
        rows *= dim
    return rows


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face q/k rows → llama.cpp's order (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k rows → Hugging Face's (the inverse of `permute_rotary`)."""
    return (
        weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


@cache
def can_dequantize(ggml_type: int) -> bool:
    if GGML_TYPES[ggml_type][0] in PLAIN:
        return True
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    _, block, block_bytes = GGML_TYPES[ggml_type]
    try:
        dequantize(np.zeros((1, block_bytes), dtype=np.uint8), GGMLQuantizationType(ggml_type))
    except (NotImplementedError, ValueError, KeyError):
        return False
    return True


def supported_types() -> list[str]:
    return [name for type_id, (name, _, _) in sorted(GGML_TYPES.items()) if can_dequantize(type_id)]


@dataclass(frozen=True)
class HfTensor:
    """A GGUF tensor under its Hugging Face name, with what its read must do."""

    name: str
    dtype: str  # safetensors dtype after decoding
    stored: GgufTensor
    decoding: GgufDecoding


def hf_tensors(gguf: GgufFile, config: dict[str, Any], where: str) -> list[HfTensor]:
    """Every tensor of the file under its Hugging Face name, shapes checked against `config`."""
    expected = _expected_shapes(config)
    found: list[HfTensor] = []
    for stored in gguf.tensors.values():
        name = _hf_name(stored.name, config["num_hidden_layers"], where)
        if not can_dequantize(stored.ggml_type):
            raise CheckpointError(
                f"{where}: tensor '{stored.name}' is stored as {stored.type_name}, which fda-merge cannot dequantise;"
                f" supported: {', '.join(supported_types())} (re-quantise the model to one of them with llama.cpp)"
            )
        want = expected.get(re.sub(r"layers\.\d+\.", "layers.N.", name))
        if want is not None and stored.shape != want:
            raise CheckpointError(
                f"{where}: tensor '{stored.name}' has shape {list(stored.shape)}, the metadata implies {list(want)}"
            )
        heads = _rotary_heads(name, config)
        if heads and stored.shape[0] % (2 * heads):
            raise CheckpointError(
                f"{where}: tensor '{stored.name}': {stored.shape[0]} rows do not split into {heads} heads"
            )
        type_name = stored.type_name
        dtype = SAFETENSORS_NAMES.get(type_name, "F32")
        found.append(HfTensor(name, dtype, stored, GgufDecoding(stored.ggml_type, stored.shape, heads)))
    _check_complete({t.name for t in found}, config, where)
    return found


def _hf_name(name: str, layers: int, where: str) -> str:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    match = BLOCK.match(name)
    if match and match.group(2) in BLOCK_NAMES and int(match.group(1)) < layers:
        return f"model.layers.{int(match.group(1))}.{BLOCK_NAMES[match.group(2)]}"
    hint = " (Llama 3.1-style rope scaling has no Hugging Face tensor)" if name == "rope_freqs.weight" else ""
    raise CheckpointError(f"{where}: tensor '{name[:200]}' has no Hugging Face LLaMA equivalent{hint}; not converted")


def _rotary_heads(name: str, config: dict[str, Any]) -> int | None:
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return int(config["num_attention_heads"])
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return int(config["num_key_value_heads"])
    return None


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    hidden, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    block = {
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q, hidden), "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, q),
        "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.bias": (hidden,),
        "mlp.gate_proj.weight": (inner, hidden), "mlp.up_proj.weight": (inner, hidden), "mlp.down_proj.weight": (hidden, inner),
    }  # fmt: skip
    shapes = {f"model.layers.N.{name}": shape for name, shape in block.items()}
    return shapes | {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }


def _check_complete(names: set[str], config: dict[str, Any], where: str) -> None:
    wanted = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{BLOCK_NAMES[part]}" for i in range(config["num_hidden_layers"]) for part in REQUIRED_BLOCK
    ]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise CheckpointError(f"{where}: the GGUF file lacks '{missing[0]}' (and {len(missing) - 1} more tensors)")
    biases = {name.rsplit(".", 2)[-2] for name in names if name.endswith("_proj.bias")}
    if biases and biases != {"q_proj", "k_proj", "v_proj", "o_proj"}:
        raise CheckpointError(f"{where}: attention biases on {sorted(biases)} only; LLaMA has them on all or none")


def llama_config(gguf: GgufFile, where: str) -> dict[str, Any]:
    """config.json of the LLaMA model the metadata describes (transformers' own GGUF mapping)."""
    meta = gguf.metadata
    architecture = meta.get("general.architecture")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{where}: GGUF architecture {str(architecture)[:100]!r} is not supported; fda-merge converts "
            f"{', '.join(ARCHITECTURES)} (LLaMA-style: SmolLM, Llama 2/3, Mistral)"
        )
    a = architecture

    def number(key: str, default: Any = None, kind: type = int) -> Any:
        value = meta.get(f"{a}.{key}", default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and value < 2**31
        if value is None or not ok or (kind is int and not isinstance(value, int)):
            raise CheckpointError(f"{where}: metadata '{a}.{key}' is {value!r}; need a positive {kind.__name__}")
        return float(f"{value:.7g}") if kind is float else int(value)  # a float32's digits, not its binary tail

    if f"{a}.rope.scaling.type" in meta and meta[f"{a}.rope.scaling.type"] not in ("none",):
        raise CheckpointError(
            f"{where}: rope scaling '{meta[f'{a}.rope.scaling.type']}' is not converted; fda-merge converts plain RoPE"
        )
    heads = number("attention.head_count")
    hidden = number("embedding_length")
    embeddings = gguf.tensors.get("token_embd.weight")
    if embeddings is None or len(embeddings.shape) != 2:
        raise CheckpointError(f"{where}: no 2-D token_embd.weight tensor; not a LLaMA model file")
    tensor_names = set(gguf.tensors)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": number("feed_forward_length"),
        "num_hidden_layers": number("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": number("attention.head_count_kv", heads),
        "head_dim": number("rope.dimension_count", hidden // heads),
        "max_position_embeddings": number("context_length", 2048),
        "rms_norm_eps": number("attention.layer_norm_rms_epsilon", 1e-5, float),
        "rope_theta": number("rope.freq_base", 10000.0, float),
        "vocab_size": embeddings.shape[0],
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    for key in ("bos", "eos", "padding"):
        token = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(token, int) and 0 <= token < config["vocab_size"]:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = token
    return config


def hf_side_files(gguf: GgufFile, config: dict[str, Any], where: str) -> dict[str, bytes]:
    """config.json, generation_config.json and the tokenizer files a Hugging Face folder of this model has."""
    files = {"config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    files["generation_config.json"] = (json.dumps(generation, indent=2, sort_keys=True) + "\n").encode()
    if "tokenizer.ggml.tokens" in gguf.metadata:
        files.update(tokenizer_files(gguf, where))
    return files


def tokenizer_files(gguf: GgufFile, where: str) -> dict[str, bytes]:
    """tokenizer.json and tokenizer_config.json built from the GGUF metadata, as transformers builds them
    for `from_pretrained(..., gguf_file=...)` (its converters, fed our validated metadata)."""
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:  # transformers 4.x
        from transformers.integrations.ggml import (  # type: ignore[attr-defined,no-redef]
            GGUF_TO_TRANSFORMERS_MAPPING,
            convert_gguf_tokenizer,
        )

        GGUF_TOKENIZER_MAPPING = {k: GGUF_TO_TRANSFORMERS_MAPPING[k] for k in ("tokenizer", "tokenizer_config")}

    meta = gguf.metadata
    grouped = {
        group: {name: _plain(meta[f"tokenizer.{key}"]) for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    tokens = tokenizer["tokens"]
    for name, key in {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}.items():
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            tokenizer_config[name] = tokens[token_id]
    try:
        backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tokenizer)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot build a tokenizer from the GGUF metadata ({exc})") from None
    if tokenizer.get("pre_tokenizer_type") in OWN_PRE_TOKENIZERS:
        backend.pre_tokenizer = OWN_PRE_TOKENIZERS[tokenizer["pre_tokenizer_type"]]()
    built = PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
    with tempfile.TemporaryDirectory() as folder:
        built.save_pretrained(folder)
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


def _smollm_pre_tokenizer() -> Any:
    """llama.cpp's `smollm`: every digit on its own, then GPT-2's byte-level split — as SmolLM's own
    tokenizer.json has it (transformers' GGUF loader, which has no entry for it, keeps digits together)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )


OWN_PRE_TOKENIZERS = {"smollm": _smollm_pre_tokenizer}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
