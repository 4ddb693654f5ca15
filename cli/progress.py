"""A tqdm bar fed by fda_core's progress callback; silent when stderr is not a terminal."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._phase: str | None = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, progress: Any) -> None:
        if not self.enabled:
            return
        if progress.phase != self._phase:
            self._start(progress.phase, progress.total)
        self._bar.n = progress.done
        if progress.step is not None and progress.value is not None:
            self._bar.set_postfix_str(
                f"{(progress.tensor or '')[-24:]} step {progress.step} {progress.value:.4f}", refresh=False
            )
        elif progress.tensor:
            self._bar.set_postfix_str(progress.tensor[-40:], refresh=False)
        self._bar.refresh()

    def _start(self, phase: str, total: int) -> None:
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self._phase = phase
        units = {"merge": "tensor", "fetch": "file", "construct": "block", "adapt": "block"}
        self._bar = tqdm(total=total, desc=phase, unit=units.get(phase, "step"), leave=phase == "merge")
