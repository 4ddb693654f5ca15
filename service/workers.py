"""Operator controls of running merge workers, over the broker (Celery remote control).

`drain`: the workers stop taking merge jobs (their consumer of the merge queue is cancelled), finish
the one they run, and stay up idle, so a supervisor does not restart them into new work; stopping a
drained worker is then immediate. `resume` undoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.celery_config import make_celery
from service.queue import MERGE_QUEUE

Out = Callable[[str], None]


def merge_workers(app, names: list[str] | None) -> list[str]:
    """The workers consuming the merge queue (or the named ones)."""
    if names:
        return names
    queues = app.control.inspect(timeout=5).active_queues() or {}
    return sorted(name for name, consumed in queues.items() if any(q.get("name") == MERGE_QUEUE for q in consumed))


def drain(broker_url: str, names: list[str] | None, wait: bool = True, out: Out = print, poll: float = 5.0) -> int:
    app = make_celery(broker_url)
    targets = merge_workers(app, names)
    if not targets:
        out("no merge worker answered")
        return 1
    replies = app.control.cancel_consumer(MERGE_QUEUE, destination=targets, reply=True, timeout=5)
    answered = sorted(name for reply in replies for name in reply)
    out(f"draining {', '.join(answered) or 'nobody'}: no new jobs will start there")
    if not answered:
        return 1
    while wait:
        active = app.control.inspect(destination=answered, timeout=5).active() or {}
        running = {name: [task["id"] for task in tasks] for name, tasks in active.items() if tasks}
        if not running:
            out("drained: no job is running on them; stopping them now is immediate")
            return 0
        out("waiting for " + "; ".join(f"{name}: {', '.join(jobs)}" for name, jobs in sorted(running.items())))
        time.sleep(poll)
    return 0


def resume(broker_url: str, names: list[str] | None, out: Out = print) -> int:
    app = make_celery(broker_url)
    # without names: the workers `fdamerge worker` starts (merge@host), never the control or webhook workers
    targets = names or sorted(
        name for reply in app.control.ping(timeout=5) for name in reply if name.startswith("merge@")
    )
    if not targets:
        out("no merge worker answered")
        return 1
    replies = app.control.add_consumer(MERGE_QUEUE, destination=targets, reply=True, timeout=5)
    answered = sorted(name for reply in replies for name in reply)
    out(f"resumed: {', '.join(answered) or 'nobody'}")
    return 0 if answered else 1
