"""Peak memory of `fdamerge merge` as the model grows: streaming means it should not grow.

Builds Llama-style checkpoints (hidden 512, intermediate 1536, vocab 8,000, fp32) with 4 and 16
layers (4× the parameters), base + 2 experts, and merges each with every method as a whole
process, reporting each child's peak RSS (bench/measure.py). If merging streamed nothing, RSS would
scale with the model; streamed, it is set by the largest tensor and the method's working set.

Run:  .venv/bin/python bench/memory_scaling.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache" / "memory_scaling"
FDAMERGE = Path(sys.executable).parent / "fdamerge"
METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "breadcrumbs": {},
    "model_stock": {},
    "tsv": {},
    "iso_c": {},
    "iso_cts": {},
    "ace": {},
    "svc": {},
    "wudi": {"steps": 3},
}


def build(layers: int) -> list[Path]:
    """Base + 2 noisy experts with `layers` decoder layers, cached under bench/.cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = CACHE / f"layers{layers}"
    paths = [root / name for name in ("base", "expert1", "expert2")]
    if all((p / "model.safetensors").exists() for p in paths):
        return paths
    config = LlamaConfig(
        vocab_size=8000, hidden_size=512, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=8
    )
    for index, path in enumerate(paths):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01 * index * torch.randn(parameter.shape, generator=generator))
        model.save_pretrained(path, safe_serialization=True)
    return paths


def peak_rss(method: str, paths: list[Path], scratch: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one `fdamerge merge` process."""
    config = {
        "method": method,
        "base_model": str(paths[0]),
        "models": [{"model": str(p)} for p in paths[1:]],
        "parameters": METHODS[method],
    }
    (scratch / "c.yaml").write_text(yaml.safe_dump(config))
    shutil.rmtree(scratch / "out", ignore_errors=True)
    command = [str(FDAMERGE), "merge", str(scratch / "c.yaml"), "--out", str(scratch / "out"), "--quiet"]
    wall, rss, code, tail = run_measured(command)
    if code != 0:
        raise SystemExit(f"fdamerge failed for {method}: {tail}")
    return wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    models = {layers: build(layers) for layers in args.layers}
    scratch = CACHE / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    sizes = {layers: (paths[0] / "model.safetensors").stat().st_size / 2**20 for layers, paths in models.items()}
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    header = " | ".join(f"{layers} layers ({sizes[layers]:.0f} MiB/ckpt): s, GiB" for layers in args.layers)
    print(f"\n| method | {header} | RSS ratio largest/smallest |")
    print("|---|" + "---|" * (len(args.layers) + 1))
    for method in METHODS:
        results = [peak_rss(method, models[layers], scratch) for layers in args.layers]
        cells = " | ".join(f"{wall:.1f} s, {rss:.2f}" for wall, rss in results)
        print(f"| {method} | {cells} | {results[-1][1] / results[0][1]:.2f} |", flush=True)
    shutil.rmtree(scratch / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
