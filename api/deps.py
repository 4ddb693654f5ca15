"""Dependencies declared once, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.auth import Principal, Unauthorized, authenticate
from service.db import session_factory
from service.queue import Dispatcher
from service.settings import Settings


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


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]  # closed before the response streams
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def get_principal(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send 'Authorization: Bearer <API key>' (fdamerge keys create prints one)")
    return authenticate(session, key.strip())


PrincipalDep = Annotated[Principal, Depends(get_principal)]
