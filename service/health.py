"""Per-role liveness for container health checks (`fdamerge healthcheck`).

Each running role keeps a file fresh in FDA_HEALTH_DIR (default /tmp/fdamerge-health): Celery
workers from a timer on their own event loop (a wedged consumer stops touching it), the API from its
lifespan with its port inside (the check then also asks /healthz). The check passes when every role
file present is fresh and the API, if any, answers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

STALE_SECONDS = 60.0
TOUCH_SECONDS = 10.0


def health_dir() -> Path:
    return Path(os.environ.get("FDA_HEALTH_DIR", "/tmp/fdamerge-health"))


def touch(role: str, **details: object) -> None:
    folder = health_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}.json"
    partial = folder / f".{role}.{os.getpid()}.tmp"
    partial.write_text(json.dumps({"role": role, "pid": os.getpid(), **details}))
    os.replace(partial, path)


def keep_fresh(role: str, **details: object) -> threading.Thread:
    """A daemon thread touching the role's file (for processes without an event loop of their own)."""

    def loop() -> None:
        while True:
            touch(role, **details)
            time.sleep(TOUCH_SECONDS)

    thread = threading.Thread(target=loop, daemon=True, name=f"health-{role}")
    thread.start()
    return thread


def check(stale_after: float = STALE_SECONDS) -> tuple[bool, list[str]]:
    """(healthy, one line per role)."""
    folder = health_dir()
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return False, [f"no fda-merge role is running here (nothing in {folder})"]
    lines, healthy = [], True
    for path in files:
        age = time.time() - path.stat().st_mtime
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = {}
        role = str(info.get("role", path.stem))
        ok = age <= stale_after and _alive(info.get("pid"))
        detail = f"{role}: last seen {age:.0f} s ago"
        if ok and info.get("port"):
            ok, answer = _api_answers(int(str(info["port"])))
            detail += f", /healthz {answer}"
        lines.append(("ok " if ok else "FAIL ") + detail)
        healthy = healthy and ok
    return healthy, lines


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _api_answers(port: int) -> tuple[bool, str]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status == 200, str(response.status)
    except OSError as exc:
        return False, f"unreachable ({exc})"
