"""Typed service errors, translated once at the edge (HTTP problem+json, the job's error field)."""

from __future__ import annotations


class ServiceError(Exception):
    code = "service_error"


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    """The request cannot apply to the object's current state (e.g. cancelling a finished job)."""

    code = "conflict"


class IdempotencyMismatch(ServiceError):
    """The same Idempotency-Key came with a different request body."""

    code = "idempotency_key_reused"


class LeaseLost(ServiceError):
    """This worker no longer holds the job (its lease expired and another worker claimed it)."""

    code = "lease_lost"


class InvalidRequest(ServiceError):
    """A field of the request is wrong; `param` names it (`models[1].model`)."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Unavailable(ServiceError):
    """A dependency (object store, database, broker) is down for now; retry later (503 with Retry-After)."""

    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 10) -> None:
        super().__init__(message)
        self.retry_after = retry_after
