"""FDA construction throughput and memory on CPU (and CUDA when present).

For one MiniLM-sized BERT layer and one Llama-style decoder layer (random weights, 3 experts =
base + noise, 64 anchors × 5 tokens): construction steps per second, achieved GFLOP/s (FLOPs of one
step counted by torch's FlopCounterMode) against this machine's measured fp32 matmul GFLOP/s, and
peak RSS — for all tasks batched in one double backward, the same chunked (16 anchors per chunk),
and one task at a time. Each configuration runs in its own process (bench/measure.py).

Run:  .venv/bin/python bench/fda_speed.py [--steps 20] [--threads 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYERS = {
    "minilm-layer": {
        "model_type": "bert",
        "vocab_size": 128,
        "hidden_size": 384,
        "num_hidden_layers": 1,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "llama-decoder-layer": {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 512,
        "num_hidden_layers": 1,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 1536,
    },
}
MODES = ("batched", "chunked-16", "one-task-at-a-time")
TASKS, ANCHORS, TOKENS = 3, 64, 5


def matmul_gflops(device: str, size: int = 1024, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def one_config(layer: str, mode: str, steps: int, device: str) -> dict:
    """Time `steps` construction steps of one configuration in this process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fda_core.fda.blocks import discover_blocks
    from fda_core.fda.construction import ConstructionSettings, construct_anchors
    from fda_core.fda.sdpa import second_order_attention

    config = LAYERS[layer]
    skeleton_names = _checkpoint_names(config)
    block = discover_blocks(config, skeleton_names, tokens=TOKENS)[0]
    block.to(torch.device(device))
    g = torch.Generator().manual_seed(0)
    theta0 = {n: (0.05 * torch.randn(p.shape, generator=g)).to(device) for n, p in block.module.named_parameters()}
    experts = [
        {n: v + 0.01 * torch.randn(v.shape, generator=g).to(device) for n, v in theta0.items()} for _ in range(TASKS)
    ]
    taus = {n: torch.stack([e[n] - theta0[n] for e in experts]) for n in theta0}
    initial = (0.01 * torch.randn(TASKS, ANCHORS, *block.anchor_shape, generator=g)).to(device)
    chunk = 16 if mode == "chunked-16" else None
    settings = ConstructionSettings(steps=steps, chunk_size=chunk, patience=10**6)
    groups = [[i] for i in range(TASKS)] if mode == "one-task-at-a-time" else [list(range(TASKS))]

    def run(step_count: int) -> None:
        for group in groups:
            part = ConstructionSettings(steps=step_count, chunk_size=chunk, patience=10**6)
            construct_anchors(
                block, theta0, [experts[i] for i in group], {n: t[group] for n, t in taus.items()}, initial[group], part
            )

    with second_order_attention():
        run(1)  # warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            run(1)
        flops_per_step = counter.get_total_flops()
        start = time.perf_counter()
        run(settings.steps)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {
        "steps_per_s": settings.steps / seconds,
        "gflops": flops_per_step * settings.steps / seconds / 1e9,
        "threads": torch.get_num_threads(),
    }


def _checkpoint_names(config: dict) -> list[str]:
    """Tensor names as a checkpoint of this config would have them (the skeleton's own)."""
    from transformers import AutoConfig, AutoModel

    values = {k: v for k, v in config.items() if k != "model_type"}
    model = AutoModel.from_config(AutoConfig.for_model(config["model_type"], **values))
    from transformers.core_model_loading import revert_weight_conversion

    return list(revert_weight_conversion(model, dict(model.state_dict())).keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=3, metavar=("LAYER", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        layer, mode, out = args.one
        Path(out).write_text(json.dumps(one_config(layer, mode, args.steps, args.device)))
        return
    from measure import run_measured

    print(
        f"command: python bench/fda_speed.py --steps {args.steps} --threads {' '.join(map(str, args.threads))} --device {args.device}"
    )
    for threads in args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        import torch

        torch.set_num_threads(threads)
        peak = matmul_gflops(args.device)
        print(
            f"\n{threads} thread(s), {args.device}: fp32 matmul 1024³ = {peak:.1f} GFLOP/s; {TASKS} tasks × {ANCHORS} anchors × {TOKENS} tokens"
        )
        print("| layer | mode | steps/s (all tasks) | GFLOP/s | share of matmul peak | peak RSS GiB |")
        print("|---|---|---|---|---|---|")
        for layer in LAYERS:
            for mode in MODES:
                out = Path(f"/tmp/fda_speed_{os.getpid()}.json")
                wall, rss, code, tail = run_measured(
                    [
                        sys.executable,
                        __file__,
                        "--steps",
                        str(args.steps),
                        "--device",
                        args.device,
                        "--one",
                        layer,
                        mode,
                        str(out),
                    ],
                    env,
                )
                if code != 0:
                    print(f"| {layer} | {mode} | failed: {tail[-300:]!r} |")
                    continue
                result = json.loads(out.read_text())
                out.unlink()
                print(
                    f"| {layer} | {mode} | {result['steps_per_s']:.2f} | {result['gflops']:.1f} | {result['gflops'] / peak:.0%} | {rss:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
