"""Server-sent event streams that scale: no thread is held per stream.

Each stream is an async generator on the event loop. While its job is quiet it waits on an asyncio
event; one poller per API process (per event loop) asks the database, in one query for every watched
job, for the newest event id and status, and wakes only the streams whose job moved. Database reads
run in the thread pool and are short. A client that disconnects is noticed by Starlette, which
cancels the generator; a comment (`: keep-alive`) every FDA_STREAM_KEEPALIVE_SECONDS keeps proxies
from closing quiet streams and finds dead peers. Open streams are capped per tenant and API process
(FDA_LIMIT_EVENT_STREAMS_PER_TENANT): one more answers 429.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from anyio import to_thread
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.schemas import JobEventPublic
from service.db import session_scope
from service.job_queries import job_status, latest_events, list_events
from service.jobs import TERMINAL
from service.limits import QuotaExceeded

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


@dataclass(eq=False)
class _Watch:
    job_id: str
    after: int
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class _LoopPoller:
    """The streams of one event loop and the task that polls for them."""

    def __init__(self, database_url: str, poll: float) -> None:
        self.database_url, self.poll = database_url, poll
        self.watches: set[_Watch] = set()
        self.task: asyncio.Task | None = None

    def add(self, watch: _Watch) -> None:
        self.watches.add(watch)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        idle = 0
        while idle < 10:  # ends a few ticks after its last stream; the next stream starts it again
            await asyncio.sleep(self.poll)
            if not self.watches:
                idle += 1
                continue
            idle = 0
            jobs = sorted({watch.job_id for watch in self.watches})
            try:
                latest = await to_thread.run_sync(self._latest, jobs)
            except Exception:
                log.warning("event streams: polling the database failed; retrying", exc_info=True)
                continue
            for watch in list(self.watches):
                newest, status = latest.get(watch.job_id, (None, None))
                if (newest is not None and newest > watch.after) or status in TERMINAL or status is None:
                    watch.woken.set()

    def _latest(self, jobs: list[str]) -> dict[str, tuple[int | None, str | None]]:
        with session_scope(self.database_url) as session:
            return latest_events(session, jobs)


class StreamHub:
    """Per-tenant stream counts and one poller per event loop, for one API process."""

    def __init__(self, database_url: str, per_tenant: int, keepalive: float, poll: float = POLL_SECONDS) -> None:
        self.database_url, self.per_tenant, self.keepalive, self.poll = database_url, per_tenant, keepalive, poll
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()
        self.pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPoller] = weakref.WeakKeyDictionary()

    def total(self) -> int:
        with self.lock:
            return sum(self.open.values())

    def admit(self, tenant_id: str) -> _Ticket:
        """A stream slot of the tenant, or QuotaExceeded (429) when it has its limit open."""
        with self.lock:
            count = self.open.get(tenant_id, 0)
            if count >= self.per_tenant:
                raise QuotaExceeded(
                    f"this tenant has {count} event streams open on this API process; close one, or poll "
                    "GET …/events?after=", "event_streams_per_tenant", retry_after=5,
                )  # fmt: skip
            self.open[tenant_id] = count + 1
        return _Ticket(self, tenant_id)

    def _release(self, tenant_id: str) -> None:
        with self.lock:
            self.open[tenant_id] -= 1
            if not self.open[tenant_id]:
                del self.open[tenant_id]

    def _poller(self) -> _LoopPoller:
        loop = asyncio.get_running_loop()
        poller = self.pollers.get(loop)
        if poller is None:
            poller = self.pollers[loop] = _LoopPoller(self.database_url, self.poll)
        return poller

    async def events(self, job_id: str, after: int | None) -> AsyncIterator[str]:
        """The job's events as SSE, then `end` once it has ended and every event was sent."""
        cursor = after if after is not None else 0
        watch = _Watch(job_id, cursor)
        poller = self._poller()
        try:
            while True:
                watch.woken.clear()
                status, events = await to_thread.run_sync(self._read, job_id, cursor)
                for event in events:
                    cursor = event.id
                    yield f"id: {event.id}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"
                if events:
                    continue  # there may be another page
                if status in TERMINAL or status is None:
                    yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                    return
                watch.after = cursor
                poller.add(watch)
                while True:  # quiet: only the poller's wake-up reads the database again, never a keep-alive
                    try:
                        await asyncio.wait_for(watch.woken.wait(), self.keepalive)
                        break
                    except TimeoutError:
                        yield ": keep-alive\n\n"
        finally:
            poller.watches.discard(watch)

    def _read(self, job_id: str, after: int | None) -> tuple[str | None, list[JobEventPublic]]:
        """The status first, then the events: the events that led to a terminal status are sent first."""
        with session_scope(self.database_url) as session:
            status = job_status(session, job_id)
            events, _ = list_events(session, job_id, after or None, limit=100)
            return status, [JobEventPublic.of(event) for event in events]


class _Ticket:
    def __init__(self, hub: StreamHub, tenant_id: str) -> None:
        self.hub, self.tenant_id, self.held = hub, tenant_id, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.hub._release(self.tenant_id)


class EventStreamResponse(StreamingResponse):
    """Releases the tenant's stream slot however the response ends (done, disconnected, cancelled)."""

    def __init__(self, content: AsyncIterator[str], ticket: _Ticket) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"cache-control": "no-store", "x-accel-buffering": "no"}
        )
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.release()
