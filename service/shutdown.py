"""Stopping a worker without losing its job or one of the job's attempts.

On SIGTERM (docker stop, systemctl stop, `fdamerge up` exiting) a Celery worker stops taking jobs and
waits for the running one. That wait is bounded: after FDA_SHUTDOWN_GRACE_SECONDS the worker asks its
job's process to stop (SIGUSR2); the job stops at its next step or transfer chunk, deletes its partial
output and goes back to the queue without using up an attempt, and the worker exits. A SIGTERM sent
to the job's process itself (a whole process group or cgroup being stopped) waits for that request.
SIGUSR2, not SIGUSR1: billiard installs its soft-time-limit handler on SIGUSR1 in every pool process
after Celery's worker_process_init, so a SIGUSR1 raised SoftTimeLimitExceeded and failed the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)
release = threading.Event()  # set in a job's process: stop and hand the job back (no attempt used)
running = threading.Event()  # set while this process runs a job's attempt


def install_in_job_process() -> None:
    """In each pool process: SIGUSR2 hands the running job back; SIGTERM while a job runs waits for it."""
    signal.signal(signal.SIGUSR2, _on_release)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame) -> None:
        if running.is_set():
            log.warning("SIGTERM during a job: waiting for the worker's grace period (or SIGUSR2) to hand it back")
            return
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


def _on_release(signum, frame) -> None:
    release.set()


def after_grace(seconds: float) -> threading.Thread:
    """In the worker's main process, when its shutdown begins: after `seconds`, SIGUSR2 to every child."""

    def later() -> None:
        threading.Event().wait(seconds)
        children = child_pids()
        if children:
            log.warning("shutdown grace of %.0f s over: handing back the jobs of processes %s", seconds, children)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)

    timer = threading.Thread(target=later, daemon=True, name="shutdown-grace")
    timer.start()
    return timer


def child_pids() -> list[int]:
    """This process's children (Linux /proc; elsewhere billiard's view of its pool)."""
    me = os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        import billiard

        return [int(p.pid) for p in billiard.active_children() if p.pid]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(entry.name))
    return found
