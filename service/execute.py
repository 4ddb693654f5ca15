"""Running one merge job on a worker: claim, merge through fda_core, upload, record — exactly once.

The merge is built in a local scratch folder (fda_core validates every input's header before any
tensor is downloaded), uploaded under the job's output prefix, and only then is the job marked
succeeded with its artifacts. Any failure or cancel deletes what was uploaded.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fda_core.checkpoints.sources import LocalAccess, local_access
from fda_core.errors import (
    CheckpointError,
    ConfigError,
    FdaMergeError,
    IncompatibleModelsError,
    InputLimitError,
    MergeCancelled,
    NonFiniteError,
    PickleCheckpointError,
)
from fda_core.merge.progress import MergeProgress
from fda_core.merge.run import MergeOptions, MergeResult, run_merge
from service import checkpoint_cache
from service.db import session_scope
from service.errors import LeaseLost, ServiceError
from service.jobs import (
    attempt_prefix,
    cancelled_by_worker,
    claim_job,
    fail_job,
    finish_job,
    heartbeat,
    output_base,
    record_progress,
)
from service.jobspec import JobSpec
from service.observability import logging_job
from service.preflight import input_limits
from service.queue import Dispatcher
from service.settings import Settings
from service.sources import register_s3
from service.storage import Storage, make_storage, put_tree
from service.submission import InputNotAllowed, recheck

ERROR_CODES: list[tuple[type[Exception], str]] = [
    (PickleCheckpointError, "pickle_checkpoint"),
    (InputLimitError, "limit_exceeded"),
    (NonFiniteError, "non_finite"),
    (IncompatibleModelsError, "incompatible_models"),
    (CheckpointError, "checkpoint_error"),
    (ConfigError, "invalid_config"),
    (FdaMergeError, "merge_error"),
]
log = logging.getLogger(__name__)
KINDS = {"anchors": "anchors", "README.md": "card", "merge_provenance.json": "provenance"}


def worker_name() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class Heartbeat(threading.Thread):
    """Renews the lease every lease/4 seconds; notices cancel requests and a lost lease.

    The lease counts as lost when another worker owns the job, or when no renewal has succeeded
    for a whole lease (a database outage): by then the reaper may have handed the job on.
    """

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.cancel, self.lost, self.stopped = threading.Event(), threading.Event(), threading.Event()
        self.renewed = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.lease_seconds / 4):
            self.beat()

    def beat(self) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                lease = self.settings.lease_seconds
                if heartbeat(session, self.job_id, worker_id=self.worker_id, lease_seconds=lease):
                    self.cancel.set()
            self.renewed = time.monotonic()
        except LeaseLost:
            self.lost.set()
        except Exception:
            log.exception("heartbeat of job %s failed", self.job_id)
            if time.monotonic() - self.renewed > self.settings.lease_seconds:
                self.lost.set()


class ProgressReporter:
    """fda_core progress → job stage, progress and events; at most one event per interval or phase change."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str, interval: float = 1.0) -> None:
        self.settings, self.job_id, self.worker_id, self.interval = settings, job_id, worker_id, interval
        self.last_phase: str | None = None
        self.last_time = 0.0

    def __call__(self, progress: MergeProgress) -> None:
        now = time.monotonic()
        if progress.phase == self.last_phase and now - self.last_time < self.interval:
            return
        self.last_phase, self.last_time = progress.phase, now
        fraction = progress.done / progress.total if progress.total else 0.0
        data = {k: v for k, v in vars(progress).items() if v is not None}
        with session_scope(self.settings.database_url) as session:
            record_progress(
                session, self.job_id, worker_id=self.worker_id, stage=progress.phase, progress=fraction,
                message=_describe(progress), data=data,
            )  # fmt: skip


def _describe(progress: MergeProgress) -> str:
    if progress.message:
        return progress.message
    where = f" layer {progress.layer}" if progress.layer is not None else ""
    return f"{progress.phase}{where}: {progress.done}/{progress.total}"


def execute_job(
    job_id: str, settings: Settings, worker_id: str | None = None, dispatcher: Dispatcher | None = None
) -> str:
    """Run the job if this worker can claim it; returns the job's status as this worker left it.
    With a dispatcher, the tenant's next waiting job is sent when this attempt ends (service.dispatch)."""
    worker_id = worker_id or worker_name()
    with session_scope(settings.database_url) as session:
        job = claim_job(session, job_id, worker_id=worker_id, lease_seconds=settings.lease_seconds)
        if job is None:
            return "not_claimed"  # running elsewhere, finished, or cancelled: a duplicate delivery
        base, attempt, tenant = output_base(job), job.attempt, job.tenant_id
        sealed = _sealed(session, settings, job)
    for counter in checkpoint_cache.stats:  # this job's own cache figures, even in a reused process
        checkpoint_cache.stats[counter] = 0
    with logging_job(job_id, tenant, attempt):
        log.info("claimed by %s", worker_id)
        if isinstance(sealed, ServiceError):
            outcome = _Refusal(settings, job_id, worker_id).end(sealed)
        else:
            outcome = _execute_claimed(settings, job_id, worker_id, sealed, base, attempt)
        log.info("attempt ended: %s", outcome)
    if dispatcher is not None:
        from service.dispatch import dispatch

        dispatch(settings, dispatcher, tenant)
    return outcome


def _sealed(session, settings: Settings, job) -> tuple[JobSpec, LocalAccess] | ServiceError:
    """The job's spec, validated again, and what it may read — checked against the tenant as it is
    now (its allowlist may have narrowed, the tenant may be disabled) — or why it may not run."""
    from pydantic import ValidationError

    from service.errors import InvalidRequest

    try:
        spec = JobSpec.of_job(job)
        return spec, recheck(session, settings, job.tenant_id, spec).local_access()
    except ServiceError as exc:
        return exc
    except ValidationError as exc:
        return InvalidRequest(f"the stored job no longer validates: {exc.errors()[0]['msg']}", None)


class _Refusal:
    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id

    def end(self, reason: ServiceError) -> str:
        code = "input_not_allowed" if isinstance(reason, InputNotAllowed) else reason.code
        try:
            with session_scope(self.settings.database_url) as session:
                fail_job(
                    session, self.job_id, worker_id=self.worker_id, code=code, message=str(reason),
                    param=getattr(reason, "param", None),
                )  # fmt: skip
        except LeaseLost:
            return "lease_lost"
        return "failed"


def _execute_claimed(
    settings: Settings, job_id: str, worker_id: str, sealed: tuple[JobSpec, LocalAccess], base: str, attempt: int
) -> str:
    register_s3(settings)
    storage = make_storage(settings.storage_url, settings.s3_endpoint_url, settings.s3_region)
    scratch = Path(settings.cache_dir) / "jobs" / f"{job_id}-{attempt}"
    beat = Heartbeat(settings, job_id, worker_id)
    beat.beat()  # a cancel requested before this worker started is seen before any work
    beat.start()
    try:
        for earlier in range(1, attempt):  # leftovers of attempts whose workers died: they can never publish
            storage.delete_prefix(attempt_prefix(base, earlier))
        attempt_run = _Attempt(settings, job_id, worker_id, storage, attempt_prefix(base, attempt), beat)
        spec, access = sealed
        with local_access(access):
            return attempt_run.run(spec, scratch)
    finally:
        beat.stopped.set()
        beat.join()
        shutil.rmtree(scratch, ignore_errors=True)


class _Attempt:
    """One attempt writes only under its own prefix, so deleting that prefix is always safe; the
    attempt that wins finish_job (the lease owner) is the one the job points at."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str, storage: Storage, prefix: str, beat) -> None:
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.storage, self.prefix, self.beat = storage, prefix, beat

    def should_stop(self) -> bool:
        return self.beat.cancel.is_set() or self.beat.lost.is_set()

    def run(self, spec: JobSpec, scratch: Path) -> str:
        try:
            result, stored = self._merge_and_upload(spec, scratch)
            with session_scope(self.settings.database_url) as session:
                finish_job(
                    session, self.job_id, worker_id=self.worker_id,
                    result=_result(result, self.storage.uri(self.prefix), sum(obj.size for obj in stored)),
                    artifacts=[_artifact(obj) for obj in stored],
                    metrics={**result.metrics, "seconds": result.seconds},
                )  # fmt: skip
            return "succeeded"
        except BaseException as exc:
            self.storage.delete_prefix(self.prefix)
            return self._record_failure(exc)

    def _merge_and_upload(self, spec: JobSpec, scratch: Path) -> tuple[MergeResult, list]:
        options = MergeOptions(
            device=self.settings.device, overwrite=True, anchor_cache=Path(self.settings.cache_dir) / "anchors",
            limits=input_limits(self.settings.limits),
        )  # fmt: skip
        reporter = ProgressReporter(self.settings, self.job_id, self.worker_id)
        scratch.mkdir(parents=True, exist_ok=True)
        result = run_merge(spec.merge_config(), scratch / "out", options, reporter, self.should_stop)
        if self.should_stop():
            raise MergeCancelled("cancelled after the merge, before upload")
        return result, put_tree(self.storage, scratch / "out", self.prefix)

    def _record_failure(self, exc: BaseException) -> str:
        if isinstance(exc, LeaseLost) or self.beat.lost.is_set():
            return "lease_lost"  # another worker owns the job now; this attempt's files are gone
        if isinstance(exc, MergeCancelled):
            return self._end("cancelled")
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt / SystemExit: the worker is going away; the reaper hands the job on
        if isinstance(exc, FdaMergeError):
            return self._end("failed", next(code for kind, code in ERROR_CODES if isinstance(exc, kind)), str(exc))
        log.exception("job %s failed unexpectedly", self.job_id)  # operators get the traceback; the tenant, a reference
        return self._end("failed", "internal_error", f"internal error (reference {self.job_id}); it has been logged")

    def _end(self, status: str, code: str = "", message: str = "") -> str:
        try:
            with session_scope(self.settings.database_url) as session:
                if status == "cancelled":
                    cancelled_by_worker(session, self.job_id, worker_id=self.worker_id)
                else:
                    fail_job(session, self.job_id, worker_id=self.worker_id, code=code, message=message)
        except LeaseLost:
            return "lease_lost"
        return status


def _result(result: MergeResult, output_uri: str, uploaded: int) -> dict[str, Any]:
    return {
        "output": output_uri,
        "method": result.method,
        "tensors": result.tensors,
        "parameters": result.parameters,
        "seconds": result.seconds,
        "checkpoint_cache": dict(checkpoint_cache.stats),  # S3 inputs: objects reused vs downloaded, bytes in
        "bytes_uploaded": uploaded,
    }


def _artifact(obj) -> dict[str, Any]:
    top = obj.path.split("/", 1)[0]
    kind = KINDS.get(top, "model" if obj.path.endswith((".safetensors", ".json")) else "file")
    return {"kind": kind, "path": obj.path, "uri": obj.uri, "size": obj.size, "sha256": obj.sha256}
