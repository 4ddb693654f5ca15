"""A cheap check before merging: do the experts' task vectors differ in size by a large factor?

DisTaC (Yoshida et al., 2025) shows that experts whose ‖τ‖ differ by 5–7× — different learning
rates, steps or weight decay — break merges that work with the task vectors' geometry (WUDI fell
from 85.5 to 49.2 on ViT-B/32, TSV-M from 83.3 to 72.2): the large one dominates every shared
direction. The check reads a bounded sample of tensors (evenly spread over the model) from each
input and warns; it never blocks a merge.
"""

from __future__ import annotations

import math

import torch

from fda_core.checkpoints.reader import TensorReader
from fda_core.merge.plan import MergePlan

RATIO_WARNING = 3.0  # max ‖τ‖ / min ‖τ‖ above which the merge gets a warning
SAMPLE_BYTES = 64 << 20  # per input


def sampled_tensors(plan: MergePlan, budget: int = SAMPLE_BYTES) -> list[str]:
    """Float tensors evenly spaced through the model, within `budget` bytes of the reference. Tensors
    above an eighth of the budget (embeddings, heads) are left out while others exist: they are often
    frozen in a fine-tune or untouched by a LoRA adapter, and one of them used to fill the whole sample
    (SmolLM2: the 113 MB embedding alone, the same for every expert)."""
    merged = [task for task in plan.tasks if task.merged]
    small = [task for task in merged if plan.reference.tensors[task.name].nbytes <= budget // 8]
    candidates = small or merged
    total = sum(plan.reference.tensors[t.name].nbytes for t in candidates)
    stride = max(1, math.ceil(total / budget))
    picked: list[str] = []
    used = 0
    for task in candidates[::stride]:
        size = plan.reference.tensors[task.name].nbytes
        if used + size > budget and picked:
            continue
        picked.append(task.name)
        used += size
    return picked


def task_vector_norms(plan: MergePlan, readers: list[TensorReader], names: list[str]) -> list[float]:
    """‖τ_i‖ over `names` for each expert (readers: base first)."""
    squares = [0.0] * len(plan.experts)
    for name in names:  # fp32 differences, fp64 sums: a warning's precision at a third of float64's cost
        base = readers[0].read(name).float()
        for i, reader in enumerate(readers[1:]):
            squares[i] += float((reader.read(name).float() - base).square().sum(dtype=torch.float64))
    return [math.sqrt(s) for s in squares]


def norm_warning(plan: MergePlan, readers: list[TensorReader]) -> str | None:
    """A one-line warning when the task vectors' sizes differ by more than RATIO_WARNING, else None."""
    if plan.base is None or len(plan.experts) < 2:
        return None
    names = sampled_tensors(plan, SAMPLE_BYTES)
    norms = task_vector_norms(plan, readers, names)
    small, large = min(range(len(norms)), key=norms.__getitem__), max(range(len(norms)), key=norms.__getitem__)
    if norms[large] == 0:  # no expert changes the sampled tensors: nothing to compare
        return None
    if norms[small] > 0 and norms[large] / norms[small] <= RATIO_WARNING:
        return None
    if norms[small] == 0:
        size = f"models[{small}] changes none of the {len(names)} sampled tensors that models[{large}] changes"
    else:
        size = (
            f"task vectors differ in size by {norms[large] / norms[small]:.1f}× over {len(names)} sampled tensors"
            f" (models[{large}] ‖τ‖ = {norms[large]:.3g}, models[{small}] {norms[small]:.3g})"
        )
    return (
        f"{size}: merges that use the task vectors' geometry (tsv, wudi, iso_c, iso_cts, ace, svc, fda) let the"
        " larger dominate (DisTaC, 2025); fine-tune with matching learning rates and steps, or scale the larger"
        " expert's task vector down before merging (a task_arithmetic merge of it with its base, lambda = the"
        " ratio's inverse), and compare"
    )
