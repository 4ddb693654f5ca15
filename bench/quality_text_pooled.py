"""TEXT-3 over several seeds: pooled accuracy and paired-bootstrap intervals from quality_text.py's results.

Each seed has its own splits, fine-tunes and validation choices (TA's λ, Eq. 5's lr, the best
parameter-space method); a role ("TA, λ on validation") takes each seed's choice. Test examples of
all seeds are pooled per task, so the intervals are paired per example and ~√(seeds) narrower.

Run:  .venv/bin/python bench/quality_text_pooled.py --seeds 0 1 2 [--train 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from quality_text import CACHE, bootstrap, interval, run_tag  # noqa: E402

PARAMETER_SPACE = ("linear", "TA", "ties", "tsv", "wudi")


def roles(chosen: dict[str, str]) -> dict[str, str]:
    """Row label → this seed's method name."""
    best = chosen["parameter-space"]
    fda_best = "FDA(TA)" if best.startswith("TA") else f"FDA({best})"
    return {
        "expert": "expert",
        "pretrained": "pretrained",
        "linear": "linear",
        "TA": chosen["TA"],
        "ties": "ties",
        "tsv": "tsv",
        "wudi": "wudi",
        "FDA(pretrained)": chosen["FDA(pretrained)"],
        "FDA(TA)": "FDA(TA)",
        "FDA(best parameter-space)": fda_best,
        "FDA(pretrained) real inputs 32×5": "FDA(pretrained) real inputs 32×5",
        "FDA(pretrained) real inputs 64×16": "FDA(pretrained) real inputs 64×16",
        "FDA(best parameter-space) real inputs 64×16": f"{fda_best} real inputs 64×16",
    }


def pooled(runs: list[dict], label: str) -> list[torch.Tensor] | None:
    """Per task, the correctness of `label` over every seed's test examples; None if a seed lacks it."""
    names = [roles(run["chosen"])[label] for run in runs]
    if any(name not in run["correct"] for name, run in zip(names, runs)):
        return None
    tasks = len(runs[0]["correct"]["expert"])
    return [
        torch.tensor([x for name, run in zip(names, runs) for x in run["correct"][name][task]], dtype=torch.float)
        for task in range(tasks)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=1000)
    args = parser.parse_args()
    runs = [json.loads((CACHE / f"results-{run_tag(args.train, seed)}.json").read_text()) for seed in args.seeds]
    rows = {label: pooled(runs, label) for label in roles(runs[0]["chosen"])}
    rows = {label: scores for label, scores in rows.items() if scores is not None}
    print(f"TEXT-3, seeds {args.seeds}, train {args.train}: validation choices per seed")
    for seed, run in zip(args.seeds, runs):
        print(f"  seed {seed}: {run['chosen']}")
    print(
        "\n| method | per-seed average | pooled average | Δ vs TA, 95 % CI | Δ vs wudi, 95 % CI | Δ vs tsv, 95 % CI |"
    )
    print("|---|---|---|---|---|---|")
    for label, scores in rows.items():
        per_seed = " / ".join(
            f"{statistics.mean(statistics.mean(t) for t in run['correct'][roles(run['chosen'])[label]]):.4f}"
            for run in runs
        )
        average = statistics.mean(float(s.mean()) for s in scores)
        versus = [interval(bootstrap(scores, rows[ref], 0)) for ref in ("TA", "wudi", "tsv")]
        print(f"| {label} | {per_seed} | {average:.4f} | {' | '.join(versus)} |")
    best = "FDA(best parameter-space)"
    print(f"\n{best} against every parameter-space method (pooled, paired bootstrap 95 % CI of Δ average):")
    for reference in PARAMETER_SPACE:
        low, high = bootstrap(rows[best], rows[reference], 0)
        verdict = "above, outside the interval" if low > 0 else "not separated" if high > 0 else "below"
        print(f"  vs {reference}: [{low:+.4f}, {high:+.4f}] — {verdict}")


if __name__ == "__main__":
    main()
