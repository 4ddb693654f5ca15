"""A process whose wall clock runs ahead: imported at start-up (`clock_ahead_env` writes the
sitecustomize that does it), it shifts `time.time` and every `utcnow()` of the service by
FDA_TEST_CLOCK_AHEAD_SECONDS. Monotonic time, sleeps and timed waits are untouched, as on a machine
whose clock is merely set wrong (libfaketime breaks Python's sleeps: EINVAL or a hang)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

VARIABLE = "FDA_TEST_CLOCK_AHEAD_SECONDS"


def install(seconds: float) -> None:
    from service import models

    real_time, real_time_ns = time.time, time.time_ns

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return datetime.now(tz) + timedelta(seconds=seconds)

    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_time_ns() + int(seconds * 1e9)
    models.datetime = Ahead  # type: ignore[misc] # models.utcnow(): column defaults and every service module


def clock_ahead_env(seconds: float, directory: Path, root: Path) -> dict[str, str]:
    """The environment of a Python process whose clock runs `seconds` ahead (its sitecustomize in `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import os\n"
        f"if os.environ.get({VARIABLE!r}):\n"
        "    from tests.support.clock_ahead import install\n\n"
        f"    install(float(os.environ[{VARIABLE!r}]))\n"
    )
    path = os.pathsep.join(p for p in (str(directory), str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {VARIABLE: str(seconds), "PYTHONPATH": path}
