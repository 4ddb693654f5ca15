"""Thin tasks: re-read settings, call one service function."""

from __future__ import annotations

from service.execute import execute_job
from service.queue import MERGE_TASK, CeleryDispatcher
from service.reaper import fire_schedules, reap_and_requeue
from service.settings import get_settings
from service.webhook_sender import deliver_due
from worker.app import app


@app.task(name=MERGE_TASK, Request="worker.requests:MergeRequest")
def merge(job_id: str) -> str:
    settings = get_settings()
    return execute_job(job_id, settings, dispatcher=CeleryDispatcher(settings.broker_url))


@app.task(name="fdamerge.reap")
def reap() -> list[str]:
    settings = get_settings()
    return reap_and_requeue(settings, CeleryDispatcher(settings.broker_url))


@app.task(name="fdamerge.schedules")
def schedules_tick() -> list[str]:
    settings = get_settings()
    return fire_schedules(settings, CeleryDispatcher(settings.broker_url))


@app.task(name="fdamerge.webhooks")
def webhooks_tick() -> int:
    return deliver_due(get_settings())
