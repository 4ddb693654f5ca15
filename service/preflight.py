"""Checks at submit time that fda_core would otherwise make minutes later on a worker — bounded.

Every input's listing and safetensors header are read (ranged GETs for S3, no tensor data), the
models are checked against each other (names, shapes, dtypes) and FDA's blocks are checked on the
meta device against the checkpoint (no model is built, nothing runs): a missing object, a pickle, a
shape mismatch or a config.json that does not describe its checkpoint answers 422 at submit, naming
the input. The work is bounded by the limits (header bytes, tensors and files per input, input
bytes, models per job) and by a gate: at most `concurrent_preflights` run at once per API process,
one per tenant, so one tenant's submits cannot take every slot; a request that waits too long for
a slot answers 503 with Retry-After.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fda_core.checkpoints.layout import InputLimits
from fda_core.checkpoints.sources import local_access
from fda_core.errors import FdaMergeError, InputLimitError
from fda_core.merge.plan import build_plan
from service.errors import InvalidRequest, Unavailable
from service.jobspec import JobSpec
from service.limits import Busy, LimitExceeded, Limits
from service.retry import InfrastructureError
from service.settings import Settings
from service.sources import register_s3
from service.submission import InputPolicy

PLAN_SHARD_BYTES = 5 << 30
WAIT_SECONDS = 10.0
RETRY_SECONDS = 5.0  # a submit rides out a short S3 blip, then answers 503 (never blames the tenant's input)


def input_limits(limits: Limits) -> InputLimits:
    return InputLimits(
        header_bytes=limits.header_bytes, tensors=limits.tensors_per_input, input_bytes=limits.input_bytes_per_job
    )


def preflight(spec: JobSpec, settings: Settings, policy: InputPolicy) -> None:
    register_s3(settings, RETRY_SECONDS)
    config = spec.merge_config()
    try:
        with local_access(policy.local_access()):
            build_plan(config, PLAN_SHARD_BYTES, limits=input_limits(settings.limits), check_only=True)
    except InfrastructureError as exc:
        raise Unavailable(f"the object store is not answering; retry shortly ({exc})") from None
    except InputLimitError as exc:
        raise LimitExceeded(str(exc), _input_named(spec, str(exc)), "input_size") from None
    except FdaMergeError as exc:
        raise InvalidRequest(str(exc), _input_named(spec, str(exc))) from None
    except OSError as exc:  # the message names no path the tenant did not give
        raise InvalidRequest(f"an input could not be read ({exc.strerror or type(exc).__name__})", None) from None


def _input_named(spec: JobSpec, message: str) -> str | None:
    """The request field of the input the message blames: an expert before the base (a mismatch names
    both, and the base is the reference), the longest URI first (…/a-2 before …/a); a plan error that
    names a config field (`layers: …`, `models[1].calibration: …`, `tokens: …`) blames that field."""
    if message.startswith("layers:"):
        return "layers"
    if message.startswith("tokens:"):
        return "parameters.tokens"
    field = re.match(r"models\[\d+\]\.calibration(?=:)", message)
    if field:
        return field.group(0)
    experts = sorted(((f"models[{i}].model", m.model) for i, m in enumerate(spec.models)), key=lambda p: -len(p[1]))
    base = [("base_model", spec.base_model)] if spec.base_model else []
    return next((param for param, uri in [*experts, *base] if uri in message), None)


class PreflightGate:
    """At most `total` checks at once, and `per_tenant` of them for any one tenant."""

    def __init__(self, total: int, per_tenant: int = 1) -> None:
        self.total, self.per_tenant = total, per_tenant
        self.running: dict[str, int] = {}
        self.changed = threading.Condition()

    @contextmanager
    def slot(self, tenant_id: str, wait: float = WAIT_SECONDS) -> Iterator[None]:
        deadline = time.monotonic() + wait
        with self.changed:
            while sum(self.running.values()) >= self.total or self.running.get(tenant_id, 0) >= self.per_tenant:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy("every submit-time check slot is taken (this tenant's included); retry shortly")
                self.changed.wait(left)
            self.running[tenant_id] = self.running.get(tenant_id, 0) + 1
        try:
            yield
        finally:
            with self.changed:
                self.running[tenant_id] -= 1
                if not self.running[tenant_id]:
                    del self.running[tenant_id]
                self.changed.notify_all()
