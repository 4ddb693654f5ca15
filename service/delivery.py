"""Before a worker spends a process on a merge message: is its job still claimable?

A cancelled or finished job's message (or a duplicate of a running job's) is dropped in the Celery
worker's main process with one database read, instead of forking a pool process that would only
find nothing to do. The main process uses a connection per check (no pool: its forked children must
not inherit open connections). Any doubt — the database not answering — lets the message through:
the claim in the pool process decides, as always.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _engine(url: str) -> Engine:
    from service.db import make_engine

    return make_engine(url, pooled=False)


def worth_running(database_url: str, job_id: str) -> bool:
    from service.jobs import is_claimable

    try:
        with Session(_engine(database_url)) as session:
            return is_claimable(session, job_id)
    except Exception:
        log.warning("could not check job %s before running it; running it", job_id, exc_info=True)
        return True
