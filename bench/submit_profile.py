"""Where one job submission spends its CPU, stage by stage, on real PostgreSQL and Redis.

The API app runs in this process (Starlette's TestClient: the same middleware, routing, validation
and handler thread as under uvicorn, without the socket); submits are sent one at a time, so each
stage's time is one submit's. Each stage is a service function the handler calls, wrapped to add up
its thread CPU and wall time (nested stages are inclusive: `accept_job` contains the statements, the
commit and `enqueue`). The process's and PostgreSQL's and Redis's CPU per submit come from /proc.

Run:  .venv/bin/python bench/submit_profile.py [--submits 300] [--preflight]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy.orm import Session  # noqa: E402

from bench.api_load import BODY, cpu_seconds  # noqa: E402
from service.auth import create_api_key, ensure_tenant  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from tests.support.services import start_postgres, start_redis  # noqa: E402

SPENT: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # stage: [cpu s, wall s, calls]


def timed(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent = SPENT[name]
            spent[0] += time.thread_time() - cpu
            spent[1] += time.perf_counter() - wall
            spent[2] += 1

    return wrapper


def instrument() -> None:
    import api.deps
    import api.routers.jobs as route
    import service.accept as accept
    from service.queue import CeleryDispatcher

    if hasattr(route, "identify_submitter"):  # the key verified in the submit's first statement
        route.identify_submitter = timed(
            "identify_submitter (key + tenant + Idempotency-Key + quota: 1 query)", route.identify_submitter
        )
    else:  # before: a dependency of its own (and replay_and_queued below)
        api.deps.authenticate = timed("authenticate (key + tenant: 1 query)", api.deps.authenticate)
    if hasattr(route, "statements_commit_alone"):  # PostgreSQL: autocommit (the pool checkout happens here)
        route.statements_commit_alone = timed(
            "statements_commit_alone (pool checkout, autocommit)", route.statements_commit_alone
        )
    for name in ("policy_of", "check_submission"):
        setattr(route, name, timed(name, getattr(route, name)))
    route.accept_job = timed("accept_job (one transaction, then the send)", route.accept_job)
    accept.replay_and_queued = timed("  replay_and_queued (Idempotency-Key + quota: 1 query)", accept.replay_and_queued)
    accept.insert_new = timed("  insert_new (job + event: 1 INSERT … WITH on PostgreSQL)", accept.insert_new)
    accept.claim_window = timed("  claim_window (send claim: 1 UPDATE … RETURNING)", accept.claim_window)
    if hasattr(accept, "insert_and_claim"):
        accept.insert_and_claim = timed(
            "  insert_and_claim (job + event + send claim: 1 statement)", accept.insert_and_claim
        )
    Session.commit = timed("  commit", Session.commit)  # type: ignore[method-assign]
    CeleryDispatcher.enqueue = timed("  enqueue (LPUSH of the Celery message)", CeleryDispatcher.enqueue)
    route.preflight = timed("  preflight (inputs' listings and headers; --preflight)", route.preflight)
    route.MergeJobPublic.of = timed("MergeJobPublic.of", route.MergeJobPublic.of)  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument(
        "--preflight", action="store_true", help="submit-time checks on: a TA job over tiny local Llama checkpoints"
    )
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.schemas import MergeJobCreate
    from service.limits import Limits
    from service.queue import CeleryDispatcher
    from service.settings import Settings

    directory = Path(tempfile.mkdtemp(prefix="fda-profile-"))
    directory.chmod(0o755)  # the postgres user reaches its data folder inside
    postgres, redis_server = start_postgres(directory / "pg"), start_redis(directory)
    try:
        database = postgres.create_database("profile")
        upgrade(database)
        with session_scope(database) as session:
            key = create_api_key(session, ensure_tenant(session, "acme", ["s3://models/acme", str(directory)]))
        body = BODY
        if args.preflight:  # every input's listing and safetensors header read, as a submit does in production
            from tests.support.tiny_models import make_family

            base, experts = make_family(directory / "models", "llama")
            body = {**BODY, "base_model": str(base), "models": [{"model": str(e)} for e in experts]}
        limits = Limits(queued_jobs_per_tenant=10**8, running_jobs_per_tenant=10**8)
        settings = Settings(
            database_url=database, broker_url=redis_server.url, preflight=args.preflight, local_inputs=args.preflight,
            cache_dir=directory / "cache", limits=limits,
        )  # fmt: skip
        instrument()
        # one event loop for the whole run: without `with`, TestClient starts a loop thread per request (~3 ms)
        with TestClient(create_app(settings, CeleryDispatcher(redis_server.url))) as client:
            headers = {"Authorization": f"Bearer {key}"}

            def submit() -> None:
                response = client.post(
                    "/v1/merge-jobs", json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
                )
                assert response.status_code == 202, response.text

            for _ in range(30):  # warm: imports, connection pools, Celery's producer
                submit()
            SPENT.clear()
            postmaster = int((directory / "pg" / "data" / "postmaster.pid").read_text().split()[0])
            redis_pid = int(redis_server.pidfile.read_text().strip())
            main_thread = Path(f"/proc/self/task/{threading.get_native_id()}/stat")

            def snapshot() -> tuple[float, ...]:
                client = thread_seconds(main_thread)  # the TestClient's calls; the app runs in other threads
                return (
                    time.process_time(),
                    client,
                    cpu_seconds(postmaster),
                    cpu_seconds(redis_pid, False),
                    time.perf_counter(),
                )

            before = snapshot()
            for _ in range(args.submits):
                submit()
            after = snapshot()
            started = time.perf_counter()
            for _ in range(args.submits):
                MergeJobCreate.model_validate(BODY)
            validation = (time.perf_counter() - started) / args.submits
            report(args, before, after, validation)
    finally:
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


def thread_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reference_loop_ms() -> float:
    """CPU ms of a fixed pure-Python workload (JSON, hashing, dicts: a submit's kind of work), the median of
    five: this VM's speed moves 2× between hours, so a submit's CPU is quoted with this beside it."""
    import hashlib
    import json
    import statistics

    def once() -> float:
        started = time.thread_time()
        for i in range(2000):
            text = json.dumps({**BODY, "seed": i})
            hashlib.sha256(text.encode()).hexdigest()
            json.loads(text)
        return (time.thread_time() - started) * 1e3

    return statistics.median(once() for _ in range(5))


def report(args, before, after, validation: float) -> None:
    submits = args.submits
    process, client, postgres, redis, wall = (b - a for a, b in zip(before, after))
    print(f"\ncommand: python bench/submit_profile.py --submits {submits}{' --preflight' if args.preflight else ''}")
    print("| stage (handler thread; nested stages inclusive) | calls per submit | CPU ms | wall ms |")
    print("|---|---|---|---|")
    print(f"| request body validation (MergeJobCreate, measured apart) | 1 | {validation * 1e3:.2f} | |")
    for name, (cpu, spent_wall, calls) in SPENT.items():
        print(f"| {name} | {calls / submits:g} | {cpu * 1e3 / submits:.2f} | {spent_wall * 1e3 / submits:.2f} |")
    server = process - client
    print("\n| CPU ms per submit | this process | of which the API (all but the client's thread) | PostgreSQL | Redis "
          "| API + PostgreSQL + Redis | wall ms | reference loop ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {process * 1e3 / submits:.2f} | {server * 1e3 / submits:.2f} | {postgres * 1e3 / submits:.2f} "
        f"| {redis * 1e3 / submits:.2f} | {(server + postgres + redis) * 1e3 / submits:.2f} | {wall * 1e3 / submits:.2f} "
        f"| {reference_loop_ms():.1f} |"
    )


if __name__ == "__main__":
    main()
