"""WUDI per tensor: the closed-form gradient against autograd, at SmolLM2-135M's block shapes.

For each linear weight shape of one SmolLM2 decoder block (q/o 576×576, k/v 192×576, gate/up 1536×576,
down 576×1536), four random task vectors, WUDI's 300 Adam steps at its default lr: seconds with the
gradient in closed form (fda_core, 2 (τm·A − B)) and with the objective's autograd (the implementation
before it), the median of --repeats runs, and the largest difference between the two merged tensors.

Run:  .venv/bin/python bench/wudi_speed.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fda_core.methods.wudi import WudiParams, interference, wudi_delta  # noqa: E402

SHAPES = {"q_proj / o_proj": (576, 576), "k_proj / v_proj": (192, 576), "gate / up_proj": (1536, 576),
          "down_proj": (576, 1536)}  # fmt: skip
TASKS = 4


def by_autograd(taus: list[torch.Tensor], params: WudiParams) -> torch.Tensor:
    """The objective differentiated by autograd each step (fda_core's WUDI before the closed form)."""
    rows, cols = taus[0].shape
    grams = [tau.T @ tau if rows > cols else None for tau in taus]
    tau_m = torch.stack(taus).sum(dim=0).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([tau_m], lr=params.lr)
    for _ in range(params.steps):
        optimiser.zero_grad(set_to_none=True)
        interference(tau_m, taus, grams).backward()
        optimiser.step()
    return tau_m.detach()


def timed(function, taus: list[torch.Tensor], params: WudiParams, repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(taus, params)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = WudiParams()
    print(f"threads {args.threads}, {TASKS} task vectors, {params.steps} steps, median of {args.repeats}\n")
    print("| tensor | shape | closed form s | autograd s | speed-up | max abs diff |\n|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        generator = torch.Generator().manual_seed(0)
        taus = [torch.randn(*shape, generator=generator) * 1e-3 for _ in range(TASKS)]
        fast, ours = timed(wudi_delta, taus, params, args.repeats)
        slow, reference = timed(by_autograd, taus, params, args.repeats)
        diff = float((ours - reference).abs().max())
        print(f"| {name} | {shape[0]}×{shape[1]} | {fast:.2f} | {slow:.2f} | {slow / fast:.1f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
