"""Dependencies declared once, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.streams import StreamHub
from service.auth import Principal, Unauthorized, authenticate
from service.db import session_factory
from service.preflight import PreflightGate
from service.queue import Dispatcher
from service.settings import Settings

bearer = HTTPBearer(auto_error=False, description="An API key: fdamerge keys create prints one", bearerFormat="fdm_…")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_preflight_gate(request: Request) -> PreflightGate:
    return request.app.state.preflight_gate


def get_stream_hub(request: Request) -> StreamHub:
    return request.app.state.stream_hub


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]  # closed before the response streams
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
PreflightGateDep = Annotated[PreflightGate, Depends(get_preflight_gate)]
StreamHubDep = Annotated[StreamHub, Depends(get_stream_hub)]


def get_principal(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("send 'Authorization: Bearer <API key>' (fdamerge keys create prints one)")
    return authenticate(session, credentials.credentials.strip())


PrincipalDep = Annotated[Principal, Depends(get_principal)]
