"""Running one merge job on a worker: claim, merge through fda_core, upload, record — exactly once.

The merge is built in a local scratch folder (fda_core validates every input's header before any
tensor is downloaded), uploaded under the attempt's own prefix, and only then is the job marked
succeeded with its artifacts. Outputs are deleted only once the database says this attempt cannot be
the one the job points at: a finish whose reply was lost is checked, never assumed failed, and when
the database cannot be reached at all the attempt's leftover row leaves the decision to the reaper.

Infrastructure faults (database, broker, object store) are retried with backoff inside the attempt
(service.retry); one that outlasts the window hands the job back to the queue as `infrastructure_error`
rather than blaming the tenant. Running out of GPU memory retries with smaller FDA chunks before
failing as `out_of_memory`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fda_core.checkpoints.sources import LocalAccess, local_access
from fda_core.config import MergeConfig
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
from service import checkpoint_cache, shutdown
from service.db import session_scope
from service.errors import LeaseLost, ServiceError
from service.jobs import (
    attempt_prefix,
    cancelled_by_worker,
    claim_job,
    fail_job,
    finish_job,
    forget_leftover,
    hand_back,
    heartbeat,
    output_base,
    published,
    record_progress,
)
from service.jobspec import JobSpec
from service.observability import logging_job
from service.preflight import input_limits
from service.queue import Dispatcher
from service.retry import InfrastructureError, is_transient, retrying
from service.s3_checkpoints import InputChanged, transfer_stop
from service.scratch import scratch_folder
from service.settings import Settings
from service.sources import register_s3
from service.storage import Storage, put_tree, storage_of
from service.submission import InputNotAllowed, recheck

ERROR_CODES: list[tuple[type[Exception], str]] = [
    (InputChanged, "input_changed"),
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
CLAIM_RETRY_SECONDS = 60.0  # then the message is acked; the reaper re-sends the still-queued job


def worker_name() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class OutOfMemory(Exception):
    code = "out_of_memory"


class Heartbeat(threading.Thread):
    """Renews the lease every lease/4 seconds; notices cancel requests and a lost lease.

    The lease counts as lost when another worker owns the job, or when no renewal has succeeded for a
    whole lease — a database outage, or a renewal that hangs: `expired()` is read by the merge itself,
    so a heartbeat stuck in a call is noticed too. `renewed` is taken *before* each renewal is sent,
    so it never runs ahead of the lease the database granted.
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
        sent = time.monotonic()
        try:
            with session_scope(self.settings.database_url) as session:
                lease = self.settings.lease_seconds
                if heartbeat(session, self.job_id, worker_id=self.worker_id, lease_seconds=lease):
                    self.cancel.set()
            self.renewed = sent
        except LeaseLost:
            self.lost.set()
        except Exception:
            log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
            if self.expired():
                self.lost.set()

    def expired(self) -> bool:
        return time.monotonic() - self.renewed > self.settings.lease_seconds


class ProgressReporter:
    """fda_core progress → job stage, progress and events; at most one event per interval or phase change.

    Written by a thread of its own, so the merge never waits on the database (a hung connection stalls
    the writer, not the merge, whose lease check then stops it): reports that pile up meanwhile
    collapse into the newest. Best effort: a failed write (a database blip) skips that report; a lost
    lease is passed to `on_lost`."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str, interval: float = 1.0, on_lost=None) -> None:
        self.settings, self.job_id, self.worker_id, self.interval = settings, job_id, worker_id, interval
        self.on_lost = on_lost or (lambda: None)
        self.last_phase: str | None = None
        self.last_time = 0.0
        self.pending: list[MergeProgress] = []
        self.changed = threading.Condition()
        self.closed = False
        self.writer = threading.Thread(target=self._write_loop, daemon=True, name=f"progress-{job_id}")
        self.writer.start()

    def __call__(self, progress: MergeProgress) -> None:
        now = time.monotonic()
        if progress.phase == self.last_phase and now - self.last_time < self.interval:
            return
        self.last_phase, self.last_time = progress.phase, now
        with self.changed:
            if self.pending and self.pending[-1].phase == progress.phase:
                self.pending[-1] = progress  # the newest report of a phase replaces one not yet written
            else:
                self.pending.append(progress)
            self.changed.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending (for up to `timeout`), then stop the writer."""
        with self.changed:
            self.closed = True
            self.changed.notify()
        self.writer.join(timeout)

    def _write_loop(self) -> None:
        while True:
            with self.changed:
                while not self.pending and not self.closed:
                    self.changed.wait()
                if not self.pending:
                    return
                progress = self.pending.pop(0)
            self._write(progress)

    def _write(self, progress: MergeProgress) -> None:
        fraction = progress.done / progress.total if progress.total else 0.0
        data = {k: v for k, v in vars(progress).items() if v is not None}
        try:
            with session_scope(self.settings.database_url) as session:
                record_progress(
                    session, self.job_id, worker_id=self.worker_id, stage=progress.phase, progress=fraction,
                    message=_describe(progress), data=data,
                )  # fmt: skip
        except LeaseLost:
            self.on_lost()
        except Exception as exc:
            log.warning("progress of job %s not recorded (%s); the merge goes on", self.job_id, exc)


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
    claimed = _claim(settings, job_id, worker_id)
    if claimed is None:
        return "not_claimed"  # running elsewhere, finished, or cancelled: a duplicate delivery
    base, attempt, tenant, sealed = claimed
    for counter in checkpoint_cache.stats:  # this job's own cache figures, even in a reused process
        checkpoint_cache.stats[counter] = 0
    with logging_job(job_id, tenant, attempt):
        log.info("claimed by %s", worker_id)
        if isinstance(sealed, ServiceError):
            outcome = _Refusal(settings, job_id, worker_id).end(sealed)
        else:
            shutdown.running.set()
            try:
                outcome = _execute_claimed(settings, job_id, worker_id, sealed, base, attempt)
            finally:
                shutdown.running.clear()
        log.info("attempt ended: %s", outcome)
    if dispatcher is not None:
        from service.dispatch import dispatch

        try:
            dispatch(settings, dispatcher, tenant)
        except Exception:
            log.warning("could not send tenant %s's next job; the reaper will", tenant, exc_info=True)
    return outcome


def _claim(settings: Settings, job_id: str, worker_id: str):
    """The claim, riding out a short database outage (a failed claim would leave the job queued until
    the reaper re-sends it). Returns (output base, attempt, tenant, sealed spec or refusal) or None."""

    def claim():
        with session_scope(settings.database_url) as session:
            job = claim_job(session, job_id, worker_id=worker_id, lease_seconds=settings.lease_seconds)
            if job is None:
                return None
            return output_base(job), job.attempt, job.tenant_id, _sealed(session, settings, job)

    return retrying(claim, f"claiming job {job_id}", min(CLAIM_RETRY_SECONDS, settings.transient_retry_seconds))


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

        def fail() -> None:
            with session_scope(self.settings.database_url) as session:
                fail_job(
                    session, self.job_id, worker_id=self.worker_id, code=code, message=str(reason),
                    param=getattr(reason, "param", None),
                )  # fmt: skip

        try:
            retrying(fail, f"failing job {self.job_id}", self.settings.transient_retry_seconds)
        except LeaseLost:
            return "lease_lost"
        return "failed"


def _execute_claimed(
    settings: Settings, job_id: str, worker_id: str, sealed: tuple[JobSpec, LocalAccess], base: str, attempt: int
) -> str:
    from service.reaper import clean_leftovers

    register_s3(settings)
    storage = storage_of(settings)
    beat = Heartbeat(settings, job_id, worker_id)
    beat.beat()  # a cancel requested before this worker started is seen before any work
    beat.start()
    try:
        try:  # earlier attempts of this job whose workers died can never publish: their files go first
            clean_leftovers(settings, job_id, storage)
        except Exception:
            log.warning("earlier attempts' leftovers of job %s not deleted yet; the reaper will", job_id, exc_info=True)
        checkpoint_cache.sweep_partials(Path(settings.cache_dir))
        attempt_run = _Attempt(settings, job_id, worker_id, storage, attempt_prefix(base, attempt), attempt, beat)
        spec, access = sealed
        with (
            scratch_folder(Path(settings.cache_dir), f"{job_id}-{attempt}") as scratch,
            local_access(access),
            transfer_stop(attempt_run.should_stop),
        ):
            return attempt_run.run(spec, scratch)
    finally:
        beat.stopped.set()
        beat.join(timeout=settings.lease_seconds)


class _Attempt:
    """One attempt writes only under its own prefix, so deleting that prefix is always safe; the
    attempt that wins finish_job (the lease owner) is the one the job points at."""

    def __init__(
        self, settings: Settings, job_id: str, worker_id: str, storage: Storage, prefix: str, attempt: int, beat
    ) -> None:
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.storage, self.prefix, self.attempt, self.beat = storage, prefix, attempt, beat

    def should_stop(self) -> bool:
        beat = self.beat
        if beat.expired():  # no renewal for a whole lease (or one hanging): the job may be another's now
            beat.lost.set()
        return beat.cancel.is_set() or beat.lost.is_set() or shutdown.release.is_set()

    def run(self, spec: JobSpec, scratch: Path) -> str:
        try:
            result, stored = self._merge_and_upload(spec, scratch)
        except BaseException as exc:
            self._discard()
            return self._record_failure(exc)
        return self._publish(result, stored)

    def _publish(self, result: MergeResult, stored: list) -> str:
        """finish_job, retried through a database outage; a finish that raised may still have committed
        (its reply lost), so the outcome is read back before anything is deleted."""
        output = self.storage.uri(self.prefix)
        values: dict[str, Any] = {
            "result": _result(result, output, sum(obj.size for obj in stored)),
            "artifacts": [_artifact(obj) for obj in stored],
            "metrics": {**result.metrics, "seconds": result.seconds},
        }

        def finish() -> None:
            try:
                with session_scope(self.settings.database_url) as session:
                    finish_job(session, self.job_id, worker_id=self.worker_id, **values)
            except LeaseLost:
                if not self._won(output):
                    raise
            except Exception as exc:
                if is_transient(exc) and self._won(output):
                    return  # the commit went through; only its reply was lost
                raise

        try:
            retrying(finish, f"finishing job {self.job_id}", self.settings.transient_retry_seconds)
        except LeaseLost:
            self._discard()
            return "lease_lost"
        except Exception:
            log.exception("job %s: the outcome of its finish is unknown; its files stay for the reaper", self.job_id)
            return "unknown"
        return "succeeded"

    def _won(self, output: str) -> bool:
        try:
            with session_scope(self.settings.database_url) as session:
                return published(session, self.job_id, output)
        except Exception as exc:
            if is_transient(exc):
                return False  # cannot tell yet: the retry will ask again
            raise

    def _discard(self) -> None:
        """This attempt's files can never be the job's output: delete them, then their leftover row.
        If either fails, the row stays and the reaper finishes the job."""
        try:
            self.storage.delete_prefix(self.prefix)
            with session_scope(self.settings.database_url) as session:
                forget_leftover(session, self.job_id, self.attempt)
        except Exception:
            log.warning("job %s: attempt %d's files left for the reaper", self.job_id, self.attempt, exc_info=True)

    def _merge_and_upload(self, spec: JobSpec, scratch: Path) -> tuple[MergeResult, list]:
        options = MergeOptions(
            device=self.settings.device, overwrite=True, anchor_cache=Path(self.settings.cache_dir) / "anchors",
            limits=input_limits(self.settings.limits),
        )  # fmt: skip
        reporter = ProgressReporter(self.settings, self.job_id, self.worker_id, on_lost=self.beat.lost.set)
        try:
            result = self._merge_within_memory(spec.merge_config(), scratch / "out", options, reporter)
            if self.should_stop():
                raise MergeCancelled("cancelled after the merge, before upload")

            def uploading(done: int, total: int, name: str) -> None:
                reporter(MergeProgress("upload", done, total, name))

            return result, put_tree(self.storage, scratch / "out", self.prefix, self.should_stop, uploading)
        finally:
            reporter.close()

    def _merge_within_memory(self, config: MergeConfig, out: Path, options: MergeOptions, reporter) -> MergeResult:
        """run_merge; out of GPU memory, again with FDA's second-order graph in smaller chunks (exact:
        the same anchors) after freeing the cache, up to FDA_OOM_RETRIES times; then OutOfMemory."""
        for retry in range(self.settings.oom_retries + 1):
            try:
                return run_merge(config, out, options, reporter, self.should_stop)
            except Exception as exc:
                if not _out_of_memory(exc):
                    raise
                _free_gpu_memory()
                if retry == self.settings.oom_retries:
                    raise OutOfMemory(_oom_message(self.settings.device, retry, exc)) from None
                config = _smaller(config)
                chunk = config.parameters.get("chunk_size")
                reporter(
                    MergeProgress(
                        "retry", retry + 1, self.settings.oom_retries,
                        message=f"out of GPU memory; retrying{f' with chunk_size {chunk}' if chunk else ''}",
                    )
                )  # fmt: skip
        raise AssertionError("unreachable")

    def _record_failure(self, exc: BaseException) -> str:
        if isinstance(exc, LeaseLost) or self.beat.lost.is_set():
            return "lease_lost"  # another worker owns the job now (or may); this attempt's files are gone
        if self.beat.cancel.is_set():
            return self._end("cancelled")
        if shutdown.release.is_set():  # before MergeCancelled: a shutdown stops the merge the same way
            return self._hand_back("the worker is shutting down", counts=False)
        if isinstance(exc, MergeCancelled):
            return self._end("cancelled")
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt / SystemExit: the worker is going away; the reaper hands the job on
        if isinstance(exc, InfrastructureError) or is_transient(exc):
            log.warning("job %s: infrastructure error: %s", self.job_id, exc)
            return self._hand_back(f"infrastructure error: {exc}"[:500], counts=True)
        if isinstance(exc, OutOfMemory):
            return self._end("failed", "out_of_memory", str(exc))
        if isinstance(exc, FdaMergeError):
            return self._end("failed", next(code for kind, code in ERROR_CODES if isinstance(exc, kind)), str(exc))
        log.exception("job %s failed unexpectedly", self.job_id)  # operators get the traceback; the tenant, a reference
        return self._end("failed", "internal_error", f"internal error (reference {self.job_id}); it has been logged")

    def _hand_back(self, reason: str, counts: bool) -> str:
        def give() -> str:
            with session_scope(self.settings.database_url) as session:
                return hand_back(session, self.job_id, worker_id=self.worker_id, reason=reason, counts=counts)

        try:
            return retrying(give, f"handing back job {self.job_id}", self.settings.transient_retry_seconds)
        except LeaseLost:
            return "lease_lost"
        except Exception:
            log.exception("job %s could not be handed back; its lease will expire and the reaper will", self.job_id)
            return "unknown"

    def _end(self, status: str, code: str = "", message: str = "") -> str:
        def end() -> None:
            with session_scope(self.settings.database_url) as session:
                if status == "cancelled":
                    cancelled_by_worker(session, self.job_id, worker_id=self.worker_id)
                else:
                    fail_job(session, self.job_id, worker_id=self.worker_id, code=code, message=message)

        try:
            retrying(end, f"ending job {self.job_id}", self.settings.transient_retry_seconds)
        except LeaseLost:
            return "lease_lost"
        except Exception:
            log.exception(
                "job %s could not be marked %s; its lease will expire and the reaper will", self.job_id, status
            )
            return "unknown"
        return status


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _smaller(config: MergeConfig) -> MergeConfig:
    """FDA: half the anchors per chunk of the second-order graph (chunking is exact); other methods: as is."""
    if config.method != "fda":
        return config
    from fda_core.fda.settings import FdaParams

    params = FdaParams.model_validate(config.parameters)
    chunk = max(1, (params.chunk_size or params.anchors) // 2)
    return MergeConfig.model_validate({**config.model_dump(), "parameters": {**config.parameters, "chunk_size": chunk}})


def _oom_message(device: str, retries: int, exc: BaseException) -> str:
    first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    tried = f" after {retries} retries with smaller FDA chunks" if retries else ""
    return (
        f"the merge ran out of memory on {device}{tried} ({first}); use a GPU with more memory, fewer FDA anchors "
        "or a smaller chunk_size, or run it on a CPU worker"
    )


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
