"""Job submission under load on the production stack: real PostgreSQL, Redis and `fdamerge api` (uvicorn).

N concurrent clients POST merge jobs for D seconds (keep-alive connections, each request with its
own Idempotency-Key). Reports requests/s, latency percentiles, status codes, and checks that every
accepted job is in the database and was enqueued on Redis exactly once. Submit-time preflight
(reading every input's header from S3) is off: this measures the API, database and queue path.

Run:  .venv/bin/python bench/api_load.py [--clients 50] [--seconds 30] [--api-workers 1]
(needs PostgreSQL and Redis binaries: bash scripts/setup.sh test installs them)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from service.auth import create_api_key, ensure_tenant  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from tests.support.services import free_port, start_postgres, start_redis  # noqa: E402

BODY = {
    "method": "task_arithmetic",
    "base_model": "s3://models/acme/base",
    "models": [{"model": "s3://models/acme/a"}, {"model": "s3://models/acme/b"}],
    "parameters": {"lambda": 0.5},
}


async def client(url: str, key: str, stop_at: float, latencies: list[float], codes: dict, accepted: list[str]):
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            response = await http.post("/v1/merge-jobs", json=BODY, headers={"Idempotency-Key": uuid.uuid4().hex})
            latencies.append(time.perf_counter() - started)
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            if response.status_code == 202:
                accepted.append(response.json()["id"])


async def load(url: str, key: str, clients: int, seconds: float) -> tuple[list[float], dict, list[str], float]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    accepted: list[str] = []
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(*(client(url, key, stop_at, latencies, codes, accepted) for _ in range(clients)))
    return latencies, codes, accepted, time.monotonic() - started


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the API did not come up")


def count_in_database(url: str, ids: list[str]) -> int:
    from sqlalchemy import func, select

    from service.models import MergeJob

    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).select_from(MergeJob).where(MergeJob.id.in_(ids))) or 0)


def queued_messages(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).llen("merge"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--api-workers", type=int, default=1)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="fda-load-"))
    os.chmod(directory, 0o755)
    postgres = start_postgres(directory / "pg")
    redis_server = start_redis(directory)
    api = None
    try:
        database = postgres.create_database("load")
        upgrade(database)
        with session_scope(database) as session:
            key = create_api_key(session, ensure_tenant(session, "acme", ["s3://models/acme"]))
        port = free_port()
        env = {
            **os.environ, "FDA_DATABASE_URL": database, "FDA_BROKER_URL": redis_server.url, "FDA_PREFLIGHT": "false",
            # one tenant submitting thousands of jobs: lift its queue quota and fair-dispatch window so every
            # accepted job is sent at once, as before they existed (this measures the API, database and queue path)
            "FDA_LIMIT_QUEUED_JOBS_PER_TENANT": "100000000", "FDA_LIMIT_RUNNING_JOBS_PER_TENANT": "100000000",
        }  # fmt: skip
        command = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
                   "--workers", str(args.api_workers), "--log-level", "warning"]  # fmt: skip
        api = subprocess.Popen(command, cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        latencies, codes, accepted, elapsed = asyncio.run(load(url, key, args.clients, args.seconds))
        report(
            args,
            latencies,
            codes,
            accepted,
            elapsed,
            count_in_database(database, accepted),
            queued_messages(redis_server.url),
        )
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        redis_server.stop()
        postgres.stop()


def report(args, latencies, codes, accepted, elapsed, in_database: int, enqueued: int) -> None:
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"\ncommand: python bench/api_load.py --clients {args.clients} --seconds {args.seconds:g} --api-workers {args.api_workers}"
    )
    print(
        "| clients | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms | status codes | accepted in DB | enqueued |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    status = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
    print(
        f"| {args.clients} | {len(latencies)} | {len(latencies) / elapsed:.0f} | {cuts[49] * 1e3:.0f} | {cuts[89] * 1e3:.0f} "
        f"| {cuts[98] * 1e3:.0f} | {max(latencies) * 1e3:.0f} | {status} | {in_database}/{len(accepted)} | {enqueued} |"
    )
    if in_database != len(accepted) or enqueued != len(accepted):
        raise SystemExit("an accepted job is missing from the database or the queue")


if __name__ == "__main__":
    main()
