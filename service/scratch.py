"""Worker scratch folders: one per attempt, locked while the attempt runs, swept when their owner died.

A killed worker never ran its cleanup; the next attempt on the host (any job) deletes every scratch
folder whose lock it can take, i.e. whose owning process is gone.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_folder(root: Path, name: str) -> Iterator[Path]:
    """`root/jobs/name`, held (flock) for the attempt, removed at the end; stale ones swept first."""
    jobs = root / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    sweep(jobs)
    folder, lock = jobs / name, jobs / f"{name}.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep(jobs: Path) -> list[Path]:
    """Scratch folders (and their locks) whose attempt is no longer running on this host."""
    removed = []
    for folder in [p for p in jobs.iterdir() if p.is_dir()]:
        lock = jobs / f"{folder.name}.lock"
        try:
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                finally:
                    lock.unlink(missing_ok=True)
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            continue  # its attempt is running
    return removed
