"""Tiny random Hugging Face models built from configs (offline), and experts derived from them."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("bert", "gpt2", "llama", "vit")


ENCODER = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
VISION = dict(
    image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)


def _config(family: str):
    import transformers as tf

    if family in ("bert", "roberta"):
        config_class = tf.BertConfig if family == "bert" else tf.RobertaConfig
        return config_class(**ENCODER, max_position_embeddings=64)
    if family == "clip_vision":
        return tf.CLIPVisionConfig(**VISION)
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    if family == "llama":
        return tf.LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    if family == "vit":
        return tf.ViTConfig(**VISION, num_channels=3)
    raise ValueError(family)


def build_model(family: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    config = _config(family)
    model_class = {
        "bert": tf.BertModel,
        "roberta": tf.RobertaModel,
        "gpt2": tf.GPT2LMHeadModel,
        "llama": tf.LlamaForCausalLM,
        "vit": tf.ViTModel,
        "clip_vision": tf.CLIPVisionModel,
    }[family]
    return model_class(config).eval()


def save_base(family: str, path: Path) -> Path:
    model = build_model(family)
    model.save_pretrained(path, safe_serialization=True)
    if family == "bert":  # a tokenizer file, so copying side files is exercised
        (path / "vocab.txt").write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(91)]) + "\n"
        )
    return path


def save_expert(family: str, path: Path, seed: int, scale: float = 0.02) -> Path:
    """The base plus seeded noise on every floating parameter: a stand-in fine-tune."""
    model = build_model(family)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_family(root: Path, family: str, experts: int = 2) -> tuple[Path, list[Path]]:
    base = save_base(family, root / f"{family}-base")
    return base, [save_expert(family, root / f"{family}-expert{i}", seed=i) for i in range(experts)]
