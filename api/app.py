"""The FastAPI application factory: settings and the dispatcher are injected, never built at import."""

from __future__ import annotations

from fastapi import FastAPI

from api import problems
from api.limits import BodySizeLimit
from api.routers import dashboard, health, jobs, keys, schedules, webhooks
from fda_core import __version__
from service.queue import CeleryDispatcher, Dispatcher
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="fda-merge", version=__version__, description="Merge fine-tuned checkpoints, FDA included.")
    app.state.settings = settings
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings.broker_url)
    app.add_middleware(BodySizeLimit)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(schedules.router)
    app.include_router(webhooks.router)
    app.include_router(keys.router)
    app.include_router(dashboard.router)
    return app
