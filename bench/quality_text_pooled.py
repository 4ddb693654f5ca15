"""TEXT-3 / TEXT-8 over several seeds: pooled accuracy, paired-bootstrap intervals and the per-seed spread.

Each seed has its own splits, fine-tunes and validation choices; a role ("TA tuned") takes each
seed's choice (bench/quality_text.py writes them to summary.json). Test examples of all seeds are
pooled per task, so the intervals are paired per example; the per-seed margins show what the
example bootstrap does not: the spread between seeds.

Run:  .venv/bin/python bench/quality_text_pooled.py --suite text8 --seeds 0 1 2 [--candidate FDA]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_bench import RESULTS, Outcome, bootstrap, interval  # noqa: E402

PARAMETER_SPACE_ROLES = (
    "linear", "model_stock", "TA", "TIES", "DARE-TIES", "breadcrumbs", "TSV", "WUDI", "Iso-C", "Iso-CTS", "ACE", "SVC",
)  # fmt: skip


def load_seed(suite: str, seed: int, train: int, test: int) -> tuple[dict[str, str], dict[str, Outcome]]:
    root = RESULTS / f"{suite}-train{train}-test{test}-seed{seed}"
    roles = json.loads((root / "summary.json").read_text())["roles"]
    outcomes = {}
    for path in (root / "results").glob("*.json"):
        outcome = Outcome(**json.loads(path.read_text()))
        outcomes[outcome.label] = outcome
    return roles, outcomes


def pooled(runs, role: str) -> list[list[int]] | None:
    """Per task, `role`'s test correctness over every seed; None if a seed lacks it."""
    picked = []
    for roles, outcomes in runs:
        if role not in roles or roles[role] not in outcomes:
            return None
        picked.append(outcomes[roles[role]])
    tasks = len(picked[0].test)
    return [[x for o in picked for x in o.test[t]] for t in range(tasks)]


def average(scores: list[list[int]]) -> float:
    return statistics.mean(statistics.mean(t) for t in scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["text3", "text8"], default="text8")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--candidate", default="FDA", help="the role compared with every parameter-space method")
    args = parser.parse_args()
    runs = [load_seed(args.suite, seed, args.train, args.test) for seed in args.seeds]
    roles = [role for role in runs[0][0] if all(role in r for r, _ in runs)]
    rows = {role: pooled(runs, role) for role in roles}
    rows = {role: scores for role, scores in rows.items() if scores is not None}
    expert, ta = average(rows["expert"]), average(rows["TA tuned"])
    print(f"{args.suite}, seeds {args.seeds}: pooled over {len(args.seeds)} × {args.test} test examples per task")
    print("| method | per-seed average | pooled average | gap closed | per-seed Δ vs candidate (points) |")
    print("|---|---|---|---|---|")
    for role, scores in rows.items():
        per_seed = [runs[i][1][runs[i][0][role]].average for i in range(len(runs))]
        mine = (
            [runs[i][1][runs[i][0][args.candidate]].average for i in range(len(runs))]
            if args.candidate in rows
            else per_seed
        )
        margins = " / ".join(f"{100 * (m - p):+.2f}" for m, p in zip(mine, per_seed))
        closed = (average(scores) - ta) / (expert - ta) if expert > ta else float("nan")
        print(
            f"| {role} | {' / '.join(f'{p:.4f}' for p in per_seed)} | {average(scores):.4f} | {closed:+.0%} | {margins} |"
        )
    if args.candidate not in rows:
        return
    print(f"\n{args.candidate} against every parameter-space method (pooled paired bootstrap, 95 % CI of Δ, points):")
    best = rows[args.candidate]
    for role in [r for r in rows if r.removesuffix(" tuned") in PARAMETER_SPACE_ROLES]:
        low, high = bootstrap(best, rows[role])
        per_seed = [
            runs[i][1][runs[i][0][args.candidate]].average - runs[i][1][runs[i][0][role]].average
            for i in range(len(runs))
        ]
        verdict = "above" if low > 0 else "not separated" if high > 0 else "below"
        every = (
            "every seed" if all(d > 0 for d in per_seed) else f"{sum(d > 0 for d in per_seed)}/{len(per_seed)} seeds"
        )
        print(f"  vs {role:18s} {interval((low, high))} — {verdict}; ahead on {every}")


if __name__ == "__main__":
    main()
