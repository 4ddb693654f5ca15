"""Transient infrastructure errors: which they are, and riding them out with backoff.

A database restart, a broker blip or an S3 endpoint that answers 503 for a minute is nobody's
mistake: the attempt retries with exponential backoff and jitter for up to
FDA_TRANSIENT_RETRY_SECONDS, and only then gives up — as an infrastructure error
(`infrastructure_error`, the job handed back to the queue while attempts remain), never as the
tenant's checkpoint or config.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

S3_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "503", "500",
    "502", "504", "Throttling", "ThrottlingException",
}  # fmt: skip


class InfrastructureError(Exception):
    """A dependency (database, broker, object store) stayed unavailable for the whole retry window."""

    code = "infrastructure_error"


def is_transient(exc: BaseException) -> bool:
    """A fault of the infrastructure that may clear by itself (connection refused or reset, timeouts,
    5xx and throttling from S3, a database that restarts, a serialization failure)."""
    import urllib3.exceptions
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    network = (
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
        urllib3.exceptions.HTTPError,
    )
    if isinstance(exc, (InfrastructureError, OperationalError, InterfaceError, *network)):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return str(error.get("Code")) in S3_TRANSIENT_CODES or status >= 500
    try:
        import kombu.exceptions
        import redis.exceptions

        if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return True
        if isinstance(exc, kombu.exceptions.OperationalError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, ConnectionRefusedError | ConnectionResetError | TimeoutError | BrokenPipeError)


def delays(window: float, first: float = 0.5, cap: float = 15.0) -> list[float]:
    """Sleeps of an exponential backoff with ±25 % jitter that add up to about `window` seconds."""
    out, total, step = [], 0.0, first
    while total < window:
        pause = min(step, cap, window - total) * random.uniform(0.75, 1.25)
        out.append(pause)
        total += pause
        step *= 2
    return out


def retrying(action: Callable[[], T], what: str, window: float, stop: Callable[[], bool] | None = None) -> T:
    """`action()`, retried on transient errors for up to `window` seconds; then InfrastructureError.
    Anything else is raised at once. `stop()` (cancel, lease lost) ends the waiting early, re-raising
    the error."""
    pauses = delays(window)
    for pause in [*pauses, None]:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc) or isinstance(exc, InfrastructureError):
                raise
            if pause is None:
                raise InfrastructureError(f"{what}: still failing after {window:g} s ({_short(exc)})") from exc
            log.warning("%s failed (%s); retrying in %.1f s", what, _short(exc), pause)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline:
                if stop is not None and stop():
                    raise  # the caller sees its own stop reason (cancel, lease lost) first
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
