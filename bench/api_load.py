"""Job submission under load on the production stack: real PostgreSQL, Redis and `fdamerge api` (uvicorn).

N concurrent clients POST merge jobs for D seconds (keep-alive connections, each request with its
own Idempotency-Key). Reports requests/s, latency percentiles, status codes, and checks that every
accepted job is in the database and was enqueued on Redis exactly once. Submit-time preflight
(reading every input's header from S3) is off: this measures the API, database and queue path.
Also measured over the same window: CPU per accepted submit of the API processes, PostgreSQL and
Redis (from /proc), and the latency of /healthz, GET of one job and a list page from one probe
client; with --streams N, N event streams held open on a queued job throughout.

Run:  .venv/bin/python bench/api_load.py [--clients 50] [--seconds 30] [--api-workers 1] [--streams 500] [--tenants 1]
(--tenants N: the clients submit for N tenants, round-robin; one tenant, the default, queues everything
in one tenant's queue, which a shared service's per-tenant quotas would not allow)
(needs PostgreSQL and Redis binaries: bash scripts/setup.sh test installs them)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
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
            try:
                response = await http.post("/v1/merge-jobs", json=BODY, headers={"Idempotency-Key": uuid.uuid4().hex})
            except httpx.TimeoutException:
                latencies.append(time.perf_counter() - started)
                codes["timeout"] = codes.get("timeout", 0) + 1
                continue
            latencies.append(time.perf_counter() - started)
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            if response.status_code == 202:
                accepted.append(response.json()["id"])


async def probe(url: str, key: str, job_id: str, stop_at: float, probes: dict[str, list[float]]) -> None:
    """One client reading while the others submit: /healthz, one job, a list page, every 100 ms."""
    paths = {"healthz": "/healthz", "get": f"/v1/merge-jobs/{job_id}", "list": "/v1/merge-jobs?limit=20"}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        while time.monotonic() < stop_at:
            for name, path in paths.items():
                started = time.perf_counter()
                response = await http.get(path)
                probes.setdefault(name, []).append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.status_code)
            await asyncio.sleep(0.1)


async def open_stream(port: int, key: str, job_id: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/merge-jobs/{job_id}/events?stream=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
        .encode()
    )  # fmt: skip
    status = await asyncio.wait_for(reader.readline(), 60)
    if not status.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"an event stream was refused: {status!r}")
    asyncio.get_running_loop().create_task(_drain(reader))  # keep reading keep-alives
    return writer


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def load(
    url: str, keys: list[str], clients: int, seconds: float, streams: int, cpu: Callable[[], dict[str, float]]
) -> tuple[list[float], dict, list[str], float, dict[str, list[float]], dict[str, float]]:
    key = keys[0]  # the probe's and the streams' tenant
    latencies: list[float] = []
    codes: dict[int, int] = {}
    accepted: list[str] = []
    probes: dict[str, list[float]] = {}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        watched = (await http.post("/v1/merge-jobs", json=BODY)).json()["id"]  # queued: nobody runs it
    port = int(url.rsplit(":", 1)[1])
    writers = [await open_stream(port, key, watched) for _ in range(streams)]
    before = cpu()
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(
        probe(url, key, watched, stop_at, probes),
        *(client(url, keys[i % len(keys)], stop_at, latencies, codes, accepted) for i in range(clients)),
    )
    elapsed = time.monotonic() - started
    after = cpu()
    for writer in writers:
        writer.close()
    used = {name: after[name] - before[name] for name in after}
    return latencies, codes, accepted, elapsed, probes, used


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of a process, with its reaped children's, and its live children's (recursively)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    total = ticks / os.sysconf("SC_CLK_TCK")
    if children:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += cpu_seconds(int(child))
    return total


def cpu_reader(api_pid: int, postgres_dir: Path, redis_pidfile: Path) -> Callable[[], dict[str, float]]:
    postmaster = int((postgres_dir / "data" / "postmaster.pid").read_text().split()[0])
    redis_pid = int(redis_pidfile.read_text().strip())
    return lambda: {
        "api": cpu_seconds(api_pid), "postgres": cpu_seconds(postmaster), "redis": cpu_seconds(redis_pid, False),
    }  # fmt: skip


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
    parser.add_argument("--streams", type=int, default=0, help="event streams held open on a queued job meanwhile")
    parser.add_argument("--tenants", type=int, default=1, help="tenants the clients submit for, round-robin")
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
            names = ["acme", *(f"acme-{i}" for i in range(1, args.tenants))]
            keys = [create_api_key(session, ensure_tenant(session, name, ["s3://models/acme"])) for name in names]
        port = free_port()
        env = {
            **os.environ, "FDA_DATABASE_URL": database, "FDA_BROKER_URL": redis_server.url, "FDA_PREFLIGHT": "false",
            # one tenant submitting thousands of jobs: lift its queue quota and fair-dispatch window so every
            # accepted job is sent at once, as before they existed (this measures the API, database and queue path)
            "FDA_LIMIT_QUEUED_JOBS_PER_TENANT": "100000000", "FDA_LIMIT_RUNNING_JOBS_PER_TENANT": "100000000",
            "FDA_LIMIT_EVENT_STREAMS_PER_TENANT": str(max(100, args.streams)),
        }  # fmt: skip
        command = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
                   "--workers", str(args.api_workers), "--log-level", "warning"]  # fmt: skip
        api = subprocess.Popen(command, cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        cpu = cpu_reader(api.pid, directory / "pg", redis_server.pidfile)
        latencies, codes, accepted, elapsed, probes, used = asyncio.run(
            load(url, keys, args.clients, args.seconds, args.streams, cpu)
        )
        # the watched job is on the queue too
        in_database, enqueued = count_in_database(database, accepted), queued_messages(redis_server.url) - 1
        report(args, latencies, codes, accepted, elapsed, in_database, enqueued, probes, used)
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


def report(args, latencies, codes, accepted, elapsed, in_database: int, enqueued: int, probes, used) -> None:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"\ncommand: python bench/api_load.py --clients {args.clients} --seconds {args.seconds:g} "
        f"--api-workers {args.api_workers} --streams {args.streams} --tenants {args.tenants}"
    )
    print(
        "| clients | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms | status codes | accepted in DB | enqueued |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    status = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=str))
    print(
        f"| {args.clients} | {len(latencies)} | {len(latencies) / elapsed:.0f} | {cuts[49] * 1e3:.0f} | {cuts[89] * 1e3:.0f} "
        f"| {cuts[98] * 1e3:.0f} | {max(latencies) * 1e3:.0f} | {status} | {in_database}/{len(accepted)} | {enqueued} |"
    )
    submits = max(1, codes.get(202, 0))
    per = {name: seconds * 1e3 / submits for name, seconds in used.items()}
    print("\n| CPU ms per accepted submit: API | PostgreSQL | Redis | total |")
    print("|---|---|---|---|")
    print(f"| {per['api']:.2f} | {per['postgres']:.2f} | {per['redis']:.2f} | {sum(per.values()):.2f} |")
    print(f"\n| reads under load ({args.streams} event streams open) | requests | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, seconds in probes.items():
        quantiles = statistics.quantiles(seconds, n=100, method="inclusive")
        print(
            f"| {name} | {len(seconds)} | {quantiles[49] * 1e3:.1f} | {quantiles[98] * 1e3:.1f} | {max(seconds) * 1e3:.1f} |"
        )
    if in_database != len(accepted) or enqueued != len(accepted):
        raise SystemExit("an accepted job is missing from the database or the queue")


if __name__ == "__main__":
    main()
