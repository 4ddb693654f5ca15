"""Running one merge job on a worker: claim, merge through fda_core, upload, record — exactly once.

The merge is built in a local scratch folder (fda_core validates every input's header before any
tensor is downloaded), uploaded under the job's output prefix, and only then is the job marked
succeeded with its artifacts. Any failure or cancel deletes what was uploaded.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fda_core.config import parse_config
from fda_core.errors import (
    CheckpointError,
    ConfigError,
    FdaMergeError,
    IncompatibleModelsError,
    MergeCancelled,
    PickleCheckpointError,
)
from fda_core.merge.progress import MergeProgress
from fda_core.merge.run import MergeOptions, MergeResult, run_merge
from service.db import session_scope
from service.errors import LeaseLost
from service.jobs import cancelled_by_worker, claim_job, fail_job, finish_job, heartbeat, record_progress
from service.settings import Settings
from service.sources import register_s3
from service.storage import Storage, make_storage, put_tree

ERROR_CODES: list[tuple[type[Exception], str]] = [
    (PickleCheckpointError, "pickle_checkpoint"),
    (IncompatibleModelsError, "incompatible_models"),
    (CheckpointError, "checkpoint_error"),
    (ConfigError, "invalid_config"),
    (FdaMergeError, "merge_error"),
]
KINDS = {"anchors": "anchors", "README.md": "card", "merge_provenance.json": "provenance"}


def worker_name() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class Heartbeat(threading.Thread):
    """Renews the lease every lease/4 seconds; notices cancel requests and a lost lease."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.cancel, self.lost, self.stopped = threading.Event(), threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.lease_seconds / 4):
            self.beat()

    def beat(self) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                if heartbeat(session, self.job_id, worker_id=self.worker_id, lease_seconds=self.settings.lease_seconds):
                    self.cancel.set()
        except LeaseLost:
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
    where = f" layer {progress.layer}" if progress.layer is not None else ""
    return f"{progress.phase}{where}: {progress.done}/{progress.total}"


def execute_job(job_id: str, settings: Settings, worker_id: str | None = None) -> str:
    """Run the job if this worker can claim it; returns the job's status as this worker left it."""
    worker_id = worker_id or worker_name()
    with session_scope(settings.database_url) as session:
        job = claim_job(session, job_id, worker_id=worker_id, lease_seconds=settings.lease_seconds)
        if job is None:
            return "not_claimed"  # running elsewhere, finished, or cancelled: a duplicate delivery
        config, prefix, attempt = job.config, job.output_prefix or job.id, job.attempt
    register_s3(settings)
    storage = make_storage(settings.storage_url, settings.s3_endpoint_url, settings.s3_region)
    scratch = Path(settings.cache_dir) / "jobs" / f"{job_id}-{attempt}"
    beat = Heartbeat(settings, job_id, worker_id)
    beat.beat()  # a cancel requested before this worker started is seen before any work
    beat.start()
    try:
        storage.delete_prefix(prefix)  # leftovers of an attempt whose worker died mid-upload
        return _run(settings, job_id, worker_id, config, prefix, scratch, storage, beat)
    finally:
        beat.stopped.set()
        beat.join()
        shutil.rmtree(scratch, ignore_errors=True)


def _run(settings, job_id, worker_id, config, prefix, scratch, storage: Storage, beat: Heartbeat) -> str:
    def should_cancel() -> bool:
        return beat.cancel.is_set() or beat.lost.is_set()

    try:
        options = MergeOptions(
            device=settings.device, overwrite=True, anchor_cache=Path(settings.cache_dir) / "anchors"
        )
        reporter = ProgressReporter(settings, job_id, worker_id)
        scratch.mkdir(parents=True, exist_ok=True)
        result = run_merge(parse_config(config, "config"), scratch / "out", options, reporter, should_cancel)
        if should_cancel():
            raise MergeCancelled("cancelled after the merge, before upload")
        stored = put_tree(storage, scratch / "out", prefix)
    except MergeCancelled:
        if beat.lost.is_set():
            return "lease_lost"  # the prefix may already be another worker's: leave it alone
        storage.delete_prefix(prefix)
        return _ended_by_cancel(settings, job_id, worker_id)
    except FdaMergeError as exc:
        storage.delete_prefix(prefix)
        code = next(code for kind, code in ERROR_CODES if isinstance(exc, kind))
        with session_scope(settings.database_url) as session:
            fail_job(session, job_id, worker_id=worker_id, code=code, message=str(exc))
        return "failed"
    except BaseException:
        storage.delete_prefix(prefix)
        raise
    with session_scope(settings.database_url) as session:
        finish_job(
            session, job_id, worker_id=worker_id, result=_result(result, storage.uri(prefix)),
            artifacts=[_artifact(obj) for obj in stored], metrics={**result.metrics, "seconds": result.seconds},
        )  # fmt: skip
    return "succeeded"


def _ended_by_cancel(settings: Settings, job_id: str, worker_id: str) -> str:
    with session_scope(settings.database_url) as session:
        cancelled_by_worker(session, job_id, worker_id=worker_id)
    return "cancelled"


def _result(result: MergeResult, output_uri: str) -> dict[str, Any]:
    return {
        "output": output_uri,
        "method": result.method,
        "tensors": result.tensors,
        "parameters": result.parameters,
        "seconds": result.seconds,
    }


def _artifact(obj) -> dict[str, Any]:
    top = obj.path.split("/", 1)[0]
    kind = KINDS.get(top, "model" if obj.path.endswith((".safetensors", ".json")) else "file")
    return {"kind": kind, "path": obj.path, "uri": obj.uri, "size": obj.size, "sha256": obj.sha256}
