"""The worker's download cache on disk: one lock per object, and a byte budget kept by LRU eviction.

Objects live under `<cache>/s3/<bucket>/objects/…` with a record (ETag, size, sha256) under
`records/`; a record's mtime is the object's last use. Before a download, the least recently
used objects are evicted until the new one fits the budget (FDA_CACHE_MAX_BYTES).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sweep_partials(cache_root: Path) -> list[Path]:
    """Delete `.part-*` downloads nobody is writing (their writer died: a download holds the object's
    lock for as long as its `.part` exists). Returns what was deleted."""
    removed = []
    for partial in cache_root.glob("s3/*/objects/**/*.part-*"):
        lock = partial.with_name(partial.name.split(".part-")[0] + ".lock")
        try:
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: no download of it is running
                try:
                    partial.unlink(missing_ok=True)
                    removed.append(partial)
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            continue  # a live download
        except OSError:
            continue
    return removed


@contextmanager
def object_lock(path: Path) -> Iterator[None]:
    """Exclusive per-object lock across worker processes on one host (the second waits, then finds it cached)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_pinned: set[Path] = set()  # objects this process has handed to a merge: never evicted under it


stats = {"hits": 0, "misses": 0, "bytes_downloaded": 0}  # this process's (= this job's) first uses


def use(obj: Path, record: Path, downloaded: bool) -> None:
    """Mark an object as used now, and pinned for the rest of this process (a worker runs one job)."""
    record.touch(exist_ok=True)
    resolved = obj.resolve()
    if resolved not in _pinned:
        stats["misses" if downloaded else "hits"] += 1
        stats["bytes_downloaded"] += obj.stat().st_size if downloaded else 0
    _pinned.add(resolved)


def make_room(cache_root: Path, needed: int, budget: int | None) -> list[Path]:
    """Evict least-recently-used cached objects until `needed` more bytes fit in `budget`; returns evicted."""
    if budget is None:
        return []
    entries = sorted(_entries(cache_root), key=lambda entry: entry[0])  # oldest use first
    used = sum(size for _, size, _, _ in entries)
    evicted = []
    for _, size, obj, record in entries:
        if used + needed <= budget:
            break
        if obj.resolve() in _pinned:
            continue
        record.unlink(missing_ok=True)  # the record first: a half-evicted object is never trusted
        obj.unlink(missing_ok=True)
        used -= size
        evicted.append(obj)
    return evicted


def _entries(cache_root: Path) -> Iterator[tuple[float, int, Path, Path]]:
    """(last use, size, object, record) for every cached object under every bucket."""
    for records in cache_root.glob("s3/*/records"):
        objects = records.parent / "objects"
        for record in records.rglob("*.json"):
            obj = objects / record.relative_to(records).as_posix().removesuffix(".json")
            if obj.exists():
                yield record.stat().st_mtime, obj.stat().st_size, obj, record
