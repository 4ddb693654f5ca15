"""One submit as few database round trips as it can be: the API key, the replay lookup and the quota
count in one statement, then the job, its first event and its send claim in one more (PostgreSQL:
data-modifying WITHs, in autocommit, on the driver's cursor — service/driver_sql.py), in Core statements.

The key is verified by that first statement, not by a request dependency of its own (a query and a
thread hop fewer per submit): every submit reads the key's row as the database has it now, so a key
revoked or a tenant disabled a moment ago answers 401, exactly as on every other route. The API's
validation-error handler verifies the key before answering 422 (api/problems.py), so a request with a
bad key and a bad body still answers 401.

The checks and their order are `find_replay`, `check_queue_quota`, `submit_job` and `dispatch`'s
(service/jobs.py, service/dispatch.py), which the other paths (retry, triggers, schedules, the worker)
still use: an Idempotency-Key replay first (422 for another body; a replay is answered even when the
queue is full), then the tenant's queue quota (429), then the slow submit-time checks with no
transaction open, then the insert. The send is claimed by compare-and-set in the insert's own
statement (`insert_and_claim`), so concurrent submits still send each job once, and it is published
after the commit; a broker that refuses puts it back to waiting for the reaper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import BindParameter, ColumnElement, ScalarSelect, Table, bindparam, case, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.auth import KEY_AND_TENANT, Principal, key_digest, key_lookup, principal_of_row
from service.clock import db_now
from service.dispatch import CLAIM_WINDOW, claim_window, free_slots, send_claimed, waiting_where
from service.driver_sql import DriverStatement
from service.errors import IdempotencyMismatch
from service.ids import new_id
from service.jobspec import JobSpec
from service.limits import QuotaExceeded
from service.models import JobEvent, MergeJob, utcnow
from service.queue import Dispatcher
from service.settings import Settings

JOBS, EVENTS = cast(Table, MergeJob.__table__), cast(Table, JobEvent.__table__)
INSERT_JOB, INSERT_EVENT = insert(JOBS), insert(EVENTS)


@dataclass(frozen=True)
class Submitter:
    """Who submits, as the database has them now, and what their submit meets: the job an earlier
    request with the same Idempotency-Key created, and whether the tenant's queue is at its quota."""

    principal: Principal
    earlier_id: str | None
    at_quota: bool


def statements_commit_alone(session: Session) -> None:
    """PostgreSQL: the submit's statements run in autocommit, each its own transaction, so no BEGIN and
    no COMMIT round trip (docs/benchmarks.md, "The submit cut, third pass"). Nothing needs them together:
    at READ COMMITTED each statement already reads its own snapshot, and the job, its first event and
    the send claim are one statement (`insert_and_claim`, atomic by itself). Called before the session's
    first statement, and again by `accept_job` after its slow checks (their rollback returns the
    connection, and the pool resets it to transactions); SQLite keeps its transaction (its insert is two
    statements)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        session.info[AUTOCOMMIT] = True


AUTOCOMMIT = "statements_commit_alone"


def identify_submitter(session: Session, presented_key: str, idempotency_key: str | None, quota: int) -> Submitter:
    """The submit's first statement: its key verified (Unauthorized as `authenticate`), the replay and the
    tenant's queue at its `quota` or not, in one round trip."""
    lookup, digest = key_lookup(presented_key), key_digest(presented_key)
    bound = {"lookup": lookup, "digest": digest, "key": idempotency_key, "quota": quota}
    found = SUBMITTER_ON_DRIVER.rows(session, bound)
    row = found[0] if found else None
    principal = principal_of_row(row, presented_key)  # Unauthorized when there is no row
    assert row is not None
    return Submitter(principal, row.earlier_id, row.at_quota is not None)


def accept_job(
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    tenant_id: str,
    spec: JobSpec,
    idempotency_key: str | None,
    slow_checks: Callable[[], None] | None = None,
    submitter: Submitter | None = None,
) -> tuple[MergeJob, bool]:
    """Returns (job, created): a new queued job (committed, and sent if it fits its tenant's window), or
    the job this Idempotency-Key created. `slow_checks` (preflight) runs with no transaction open.
    `submitter`: the replay and quota as `identify_submitter` read them in this transaction (else read here)."""
    digest, limit = spec.digest(), settings.limits.queued_jobs_per_tenant
    if submitter is None:
        earlier_id, full = replay_and_queued(session, tenant_id, idempotency_key, limit)
    else:
        earlier_id, full = submitter.earlier_id, submitter.at_quota
    if earlier_id is not None:
        return _replay(session, settings, dispatcher, tenant_id, earlier_id, digest), False
    limit = settings.limits.queued_jobs_per_tenant
    if full:
        raise QuotaExceeded(f"this tenant has {limit} queued jobs; wait for some to start", "queued_jobs_per_tenant")
    if slow_checks is not None:
        session.rollback()  # no transaction stays open during the slow part
        slow_checks()
        if session.info.get(AUTOCOMMIT):
            statements_commit_alone(session)
    job = _new_job(tenant_id, spec, digest, idempotency_key, settings.max_attempts)
    try:
        claimed = insert_and_claim(session, job, settings.limits.running_jobs_per_tenant)
        if not session.info.get(AUTOCOMMIT):  # in autocommit it is committed already: nothing to send
            session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        if idempotency_key is None:
            raise
        earlier_id, _ = replay_and_queued(session, tenant_id, idempotency_key, limit)
        if earlier_id is None:
            raise
        return _replay(session, settings, dispatcher, tenant_id, earlier_id, digest), False
    send_claimed(settings, dispatcher, claimed)
    return job, True


def replay_and_queued(session: Session, tenant_id: str, key: str | None, quota: int) -> tuple[str | None, bool]:
    """(the job an earlier request with this key created, whether the tenant has `quota` queued jobs
    already) in one round trip."""
    if key is None:
        return None, session.scalar(AT_QUOTA, {"tenant_id": tenant_id, "quota": quota}) is not None
    found, full = session.execute(REPLAY_AND_QUEUED, {"tenant_id": tenant_id, "key": key, "quota": quota}).one()
    return found, full is not None


_TENANT: BindParameter[str] = bindparam("tenant_id")


def at_quota(tenant: ColumnElement[str]) -> ScalarSelect[int]:
    """1 when the tenant has at least `quota` (a parameter) queued jobs, else NULL: the `quota`-th queued
    row, so the check reads at most that many rows however long the queue (a count scanned all of them).
    A scalar subquery, so `tenant` may be an outer query's column (a derived table would not correlate)."""
    queued = select(literal(1)).where(JOBS.c.tenant_id == tenant, JOBS.c.status == "queued")
    return queued.offset(bindparam("quota") - 1).limit(1).scalar_subquery()


_AT_QUOTA = at_quota(_TENANT)
AT_QUOTA = select(_AT_QUOTA)
REPLAY_AND_QUEUED = select(
    select(JOBS.c.id).where(JOBS.c.tenant_id == _TENANT, JOBS.c.idempotency_key == bindparam("key")).scalar_subquery(),
    _AT_QUOTA,
)  # statements built once: constructing an expression costs more than running it


def _submitter_statement():
    """KEY_AND_TENANT with the replay and the at-quota check of the key's own tenant (correlated: no tenant
    id is taken from the request), read only when the presented key's digest is the row's: a key that
    merely shares a (public) lookup prefix learns nothing of the tenant's jobs, not even by timing. A None
    Idempotency-Key matches no job (`= NULL` is never true)."""
    columns = KEY_AND_TENANT.selected_columns
    tenant, genuine = columns.tenant_id, columns.sha256 == bindparam("digest")
    earlier = select(JOBS.c.id).where(JOBS.c.tenant_id == tenant, JOBS.c.idempotency_key == bindparam("key"))
    return KEY_AND_TENANT.add_columns(
        case((genuine, earlier.scalar_subquery())).label("earlier_id"),
        case((genuine, at_quota(tenant))).label("at_quota"),
    )


SUBMITTER = _submitter_statement()
SUBMITTER_ON_DRIVER = DriverStatement(SUBMITTER)  # service/driver_sql.py: the submit's hot statements


def _replay(
    session: Session, settings: Settings, dispatcher: Dispatcher, tenant_id: str, job_id: str, digest: str
) -> MergeJob:
    job = session.get_one(MergeJob, job_id)
    if job.request_sha256 != digest:
        raise IdempotencyMismatch(f"Idempotency-Key was used for a different request (job {job.id})")
    claimed = (
        claim_window(session, tenant_id, settings.limits.running_jobs_per_tenant) if job.enqueued_at is None else []
    )
    session.commit()
    send_claimed(settings, dispatcher, claimed)
    return job


def _new_job(tenant_id: str, spec: JobSpec, digest: str, key: str | None, max_attempts: int) -> MergeJob:
    """The job as `insert_job` makes it, built here and inserted by one Core statement (no unit of work,
    nothing read back: every column is known before the INSERT)."""
    return MergeJob(
        id=new_id("mj"), tenant_id=tenant_id, status="queued", stage="queued", progress=0.0,
        config=spec.config_document(), output_prefix=spec.output, metadata_=dict(spec.metadata),
        idempotency_key=key, request_sha256=digest, attempt=0, max_attempts=max_attempts, cancel_requested=False,
        created_at=utcnow(),
    )  # fmt: skip


def insert_new(session: Session, job: MergeJob) -> None:
    """The job's row and its first event (`queued`, at the job's created_at), nothing read back: one
    statement on PostgreSQL (the event's INSERT selects from the job's), two on SQLite."""
    row = _row(job)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(INSERT_JOB_AND_EVENT, {f"new_{name}": value for name, value in row.items()})
        return
    session.execute(INSERT_JOB, row)
    session.execute(
        INSERT_EVENT,
        {"job_id": job.id, "at": job.created_at, "kind": "status", "attempt": 0, "message": "queued", "data": {}},
    )


def insert_and_claim(session: Session, job: MergeJob, window: int) -> list[str]:
    """`insert_new` then `claim_window`: the ids whose send this submit won, oldest first. On PostgreSQL one
    statement (`_insert_and_claim`); elsewhere the two, in the session's transaction."""
    if session.get_bind().dialect.name != "postgresql":
        insert_new(session, job)
        return claim_window(session, job.tenant_id, window)
    row = {f"new_{name}": value for name, value in _row(job).items()}
    won = INSERT_AND_CLAIM_ON_DRIVER.rows(session, {**row, "for_tenant": job.tenant_id, "window": window})
    return [job_id for job_id, _ in sorted(won, key=lambda found: (found[1], found[0]))]


def _row(job: MergeJob) -> dict[str, object]:
    return {**{name: getattr(job, name) for name in ROW}, "metadata": job.metadata_}


ROW = (
    "id", "tenant_id", "status", "stage", "progress", "config", "output_prefix", "idempotency_key", "request_sha256",
    "attempt", "max_attempts", "cancel_requested", "created_at",
)  # fmt: skip


def _job_values() -> dict[str, BindParameter]:
    """Every column of the new job a parameter `new_<column>`."""
    return {name: bindparam(f"new_{name}", type_=JOBS.c[name].type) for name in [*ROW, "metadata"]}


def _first_event(job):
    """The job's first event (`queued`, at its created_at), inserted from the job's INSERT … RETURNING."""
    event = select(
        job.c.id, job.c.created_at, literal("status"), literal(0), literal("queued"), literal({}, EVENTS.c.data.type)
    )
    return insert(EVENTS).from_select(["job_id", "at", "kind", "attempt", "message", "data"], event)


def _insert_job_and_event():
    """INSERT the job RETURNING its id and time, and its event from that, in one statement (a
    data-modifying WITH: PostgreSQL)."""
    job = insert(JOBS).values(_job_values()).returning(JOBS.c.id, JOBS.c.created_at).cte("new_job")
    return _first_event(job)


INSERT_JOB_AND_EVENT = _insert_job_and_event()


def _insert_and_claim():
    """The job, its event and the tenant's send claim in one statement (data-modifying WITHs: PostgreSQL).
    Its parts read one snapshot, from before the statement, so the claim's UPDATE cannot see the new job:
    it claims the older waiting jobs that fit (`claim_window`'s UPDATE), and the new job is inserted sent
    (`enqueued_at` now) exactly when it would have been claimed after them — when the window has a slot
    left beyond every older waiting job. Oldest first, as `claim_window`; only this statement can send the
    new job (no one else sees it before it commits)."""
    tenant, window = bindparam("for_tenant"), bindparam("window")
    older = select(literal(1)).where(*waiting_where(tenant)).limit(window).subquery()
    fits = free_slots(tenant, window) - select(func.count()).select_from(older).scalar_subquery() > 0
    job = (
        insert(JOBS)
        .values({**_job_values(), "enqueued_at": case((fits, db_now()), else_=None)})
        .returning(JOBS.c.id, JOBS.c.created_at, JOBS.c.enqueued_at)
        .cte("new_job")
    )
    claimed = CLAIM_WINDOW.cte("claimed")
    sent_new = select(job.c.id, job.c.created_at).where(job.c.enqueued_at.is_not(None))
    return select(claimed.c.id, claimed.c.created_at).union_all(sent_new).add_cte(_first_event(job).cte("new_event"))


INSERT_AND_CLAIM = _insert_and_claim()
INSERT_AND_CLAIM_ON_DRIVER = DriverStatement(INSERT_AND_CLAIM)
