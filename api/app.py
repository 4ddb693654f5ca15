"""The FastAPI application factory: settings and the dispatcher are injected, never built at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from api import openapi, problems
from api.headers import SecurityHeaders
from api.limits import BodySizeLimit
from api.routers import dashboard, docs, health, jobs, keys, schedules, tenant, webhooks
from api.streams import StreamHub
from fda_core import __version__
from service.preflight import PreflightGate
from service.queue import CeleryDispatcher, Dispatcher
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """A server (uvicorn) starts only on the schema its code needs (service.migrate.check_schema)."""
        from service.migrate import check_schema

        await to_thread.run_sync(check_schema, settings.database_url)
        yield

    app = FastAPI(
        title="fda-merge", version=__version__, description="Merge fine-tuned checkpoints, FDA included.",
        docs_url=None, redoc_url=None,  # our own pages (api/routers/docs.py): assets served here, no CDN
        lifespan=lifespan,
    )  # fmt: skip
    app.state.settings = settings
    app.state.stream_hub = StreamHub(
        settings.database_url, settings.limits.event_streams_per_tenant, settings.stream_keepalive_seconds
    )
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings.broker_url)
    app.state.preflight_gate = PreflightGate(settings.limits.concurrent_preflights)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(problems.CatchAll)  # inside the headers: a 500 gets them too
    app.add_middleware(SecurityHeaders)
    problems.install(app)
    openapi.install(app)
    for module in (health, jobs, schedules, webhooks, keys, tenant, dashboard, docs):
        app.include_router(module.router)
    return app
