"""Build tiny demo checkpoints and merge them: `python -m cli.demo DIR` (used by scripts/demo.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from cli.main import main as fdamerge


def build(directory: Path) -> list[Path]:
    """A random 2-layer Llama base and two 'experts' (base + seeded noise), as safetensors folders."""
    from transformers import LlamaConfig, LlamaForCausalLM

    paths = []
    for index, name in enumerate(["base", "expert-a", "expert-b"]):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
        model = LlamaForCausalLM(config)
        if index:
            generator = torch.Generator().manual_seed(index)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
        model.save_pretrained(directory / name, safe_serialization=True)
        paths.append(directory / name)
    return paths


def main(directory: str) -> int:
    root = Path(directory)
    base, *experts = build(root / "models")
    config = {
        "method": "ties",
        "base_model": str(base),
        "models": [{"model": str(e), "parameters": {"density": 0.5}} for e in experts],
        "parameters": {"lambda": 1.0},
    }
    (root / "ties.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"config: {root / 'ties.yaml'}")
    return fdamerge(["merge", str(root / "ties.yaml"), "--out", str(root / "merged"), "--overwrite"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "var/demo"))
