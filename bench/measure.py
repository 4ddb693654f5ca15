"""Wall time and peak RSS of one whole command, measured from a small launcher process.

Why a launcher: on Linux a child's ru_maxrss starts from the high-water mark of the process it
was forked (or vforked) from, so a child spawned straight from a benchmark that has imported torch
reports at least the benchmark's own peak. The launcher is a bare `python -S` (~10 MiB): it forks
the command, waits for it with wait4 and writes the child's figures to a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCHER = """
import json, os, sys, time
result, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as handle:
    json.dump({"wall": time.perf_counter() - start, "rss_kib": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}, handle)
"""


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS GiB, exit code, tail of output) of `command`."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        log = Path(scratch) / "log"
        with open(log, "wb") as output:
            subprocess.run(
                [sys.executable, "-S", "-c", LAUNCHER, str(result), *command],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            )
        tail = log.read_bytes().decode(errors="replace")[-4000:]
        if not result.exists():
            return 0.0, 0.0, -1, tail
        figures = json.loads(result.read_text())
    return figures["wall"], figures["rss_kib"] / 2**20, figures["rc"], tail
