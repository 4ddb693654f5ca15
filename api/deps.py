"""Dependencies declared once, so route signatures read like prose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import anyio
from anyio import to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.streams import StreamHub
from service.accept import AUTOCOMMIT
from service.auth import Principal, Unauthorized, authenticate, key_lookup
from service.db import session_factory
from service.limits import Busy
from service.preflight import PreflightGate
from service.queue import Dispatcher
from service.settings import Settings

bearer = HTTPBearer(auto_error=False, description="An API key: fdamerge keys create prints one", bearerFormat="fdm_…")


# The attribute reads below are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread
# pool, a thread hop (~0.5 ms of CPU on a loaded 2-core machine) per dependency per request.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SESSION_WAIT_SECONDS = 10.0


@asynccontextmanager
async def database_slot(request: Request) -> AsyncIterator[None]:
    """One of the `db_pool_size` turns at the database this API process allows at a time. A request waits
    for its turn here, on the event loop, never in a worker thread: requests holding a connection between
    their dependency and their endpoint used to wait for a thread while every thread waited for a
    connection (100 concurrent reads: 80 answered 500 after the pool's 30 s). Past SESSION_WAIT_SECONDS:
    Busy (503)."""
    state = request.app.state
    if getattr(state, "session_gate", None) is None:
        state.session_gate = asyncio.Semaphore(state.settings.db_pool_size)
    if state.session_gate.locked():  # wait, with a deadline (a timer: not armed when a turn is free)
        with anyio.move_on_after(SESSION_WAIT_SECONDS) as waited:
            await state.session_gate.acquire()
        if waited.cancelled_caught:
            raise Busy("every database connection of this API process is in use; retry shortly")
    else:
        await state.session_gate.acquire()  # a free turn: taken at once, nothing awaited
    try:
        yield
    finally:
        state.session_gate.release()


@asynccontextmanager
async def request_session(request: Request) -> AsyncIterator[Session]:
    """A session in one of the process's database turns (`database_slot`), closed on the way out."""
    async with database_slot(request):
        session = session_factory(request.app.state.settings.database_url)()
        try:
            yield session
        finally:
            if session.in_transaction() and not session.info.get(AUTOCOMMIT):  # a rollback to send: in a thread
                await to_thread.run_sync(session.close)
            else:  # nothing open (a submit commits its own, or ran in autocommit): no I/O, no thread needed
                session.close()


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session (`request_session`)."""
    async with request_session(request) as session:
        yield session


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def get_stream_hub(request: Request) -> StreamHub:
    return request.app.state.stream_hub


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]  # closed before the response streams
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
StreamHubDep = Annotated[StreamHub, Depends(get_stream_hub)]


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _presented(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("send 'Authorization: Bearer <API key>' (fdamerge keys create prints one)")
    return credentials.credentials.strip()


def get_principal(session: SessionDep, credentials: CredentialsDep) -> Principal:
    return authenticate(session, _presented(credentials))


async def get_presented_key(request: Request, credentials: CredentialsDep) -> str:
    """The bearer key, shape-checked only: the submit verifies it in its first statement (service/accept.py),
    a query and a thread hop fewer than `get_principal`. Kept on the request so that a 422 for its body is
    answered only after the key is verified (api/problems.py): a bad key still answers 401 first."""
    presented = _presented(credentials)
    key_lookup(presented)
    request.state.unverified_key = presented
    return presented


PrincipalDep = Annotated[Principal, Depends(get_principal)]


@dataclass(frozen=True)
class SubmitContext:
    """What a submit needs from its request and its app, resolved as one dependency: FastAPI solves each
    dependency of a route separately (its own signature walk, cache lookup and call), which was ~13 % of the
    API's CPU per submit with the five the submit route declared (docs/benchmarks.md, issue 12)."""

    presented_key: str  # shape-checked only; verified by the submit's first statement
    session: Session
    settings: Settings
    dispatcher: Dispatcher
    gate: PreflightGate


async def get_submit_context(request: Request, credentials: CredentialsDep) -> AsyncIterator[SubmitContext]:
    presented = await get_presented_key(request, credentials)  # 401 for a missing key before any database turn
    state = request.app.state
    async with request_session(request) as session:
        yield SubmitContext(presented, session, state.settings, state.dispatcher, state.preflight_gate)


SubmitContextDep = Annotated[SubmitContext, Depends(get_submit_context, scope="function")]
