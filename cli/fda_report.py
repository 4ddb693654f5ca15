"""FDA's metrics as a short table: per block, each task's construction result and the adaptation loss."""

from __future__ import annotations

from typing import Any


def describe_fda(metrics: dict[str, Any]) -> str:
    lines = ["block                      task  cached  steps  mean cos  min cos  adapt loss first → last"]
    for layer in metrics["layers"]:
        adaptation = layer["adaptation"]
        for index, task in enumerate(layer["tasks"]):
            cosines = list(task.get("cosines", {}).values()) or [float("nan")]
            loss = f"{adaptation['first_loss']:.4g} → {adaptation['last_loss']:.4g}" if index == 0 else ""
            lines.append(
                f"{layer['block'][-26:]:<26} {index:>4}  {'yes' if task['cached'] else 'no':>6}  {task['steps']:>5}"
                f"  {sum(cosines) / len(cosines):>8.3f}  {min(cosines):>7.3f}  {loss}"
            )
    seconds = metrics["seconds"]
    lines.append(f"construction {seconds['construct']:.1f} s, adaptation {seconds['adapt']:.1f} s")
    return "\n".join(lines)
