"""Event streams on a real server (uvicorn on loopback): many streams on a quiet job hold no thread, a
closed connection frees its slot at once, and one tenant's streams past its cap answer 429."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.limits import Limits
from service.migrate import upgrade
from service.queue import RecordingDispatcher
from service.settings import Settings
from tests.integration.test_api_jobs import BODY
from tests.support.services import free_port

STREAMS = 60  # more than the server's 40 worker threads: each used to hold one until its job ended


@dataclass
class Server:
    url: str
    port: int
    key: str
    app: object

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def submit(self) -> str:
        return httpx.post(f"{self.url}/v1/merge-jobs", json=BODY, headers=self.headers()).json()["id"]

    def open_stream(self, job_id: str, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
        """A raw connection reading the job's event stream; returns it with what it has read so far (at
        least the status line and headers)."""
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        connection.sendall(
            f"GET /v1/merge-jobs/{job_id}/events?stream=true HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {self.key}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = connection.recv(4096)
            assert chunk, f"the server closed the stream: {head!r}"
            head += chunk
        return connection, head

    def open_streams(self) -> int:
        return self.app.state.stream_hub.total()  # type: ignore[attr-defined]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    with session_scope(url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", ["s3://models/acme"]))
    settings = Settings(
        database_url=url, preflight=False, stream_keepalive_seconds=0.3,
        limits=Limits(event_streams_per_tenant=STREAMS),
    )  # fmt: skip
    app = create_app(settings, RecordingDispatcher())
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield Server(f"http://127.0.0.1:{port}", port, key, app)
    uv.should_exit = True
    thread.join(timeout=15)


def timed_get(url: str, **kwargs) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.get(url, timeout=5, **kwargs)
    return response.status_code, time.perf_counter() - started


def test_many_streams_on_a_queued_job_leave_healthz_and_reads_fast(server: Server) -> None:
    job_id = server.submit()
    streams = [server.open_stream(job_id) for _ in range(STREAMS)]
    try:
        assert all(head.startswith(b"HTTP/1.1 200") for _, head in streams)
        assert server.open_streams() == STREAMS
        for path in ("/healthz", f"/v1/merge-jobs/{job_id}", f"/v1/merge-jobs/{job_id}/events"):
            code, seconds = timed_get(server.url + path, headers=server.headers())
            assert code == 200 and seconds < 2.0, (path, code, seconds)  # was: a timeout past 40 streams
    finally:
        for connection, _ in streams:
            connection.close()
    deadline = time.monotonic() + 5
    while server.open_streams():  # every closed connection gave its slot back
        assert time.monotonic() < deadline, f"{server.open_streams()} streams still counted after their clients left"
        time.sleep(0.05)


def test_a_quiet_stream_sends_keep_alives(server: Server) -> None:
    connection, head = server.open_stream(server.submit())
    try:
        deadline = time.monotonic() + 5
        while b": keep-alive" not in head:
            assert time.monotonic() < deadline, head
            head += connection.recv(4096)
    finally:
        connection.close()


def test_streams_past_the_tenants_cap_answer_429_until_one_disconnects(server: Server) -> None:
    server.app.state.stream_hub.per_tenant = 3  # type: ignore[attr-defined]
    job_id = server.submit()
    streams = [server.open_stream(job_id) for _ in range(3)]
    try:
        refused = httpx.get(
            f"{server.url}/v1/merge-jobs/{job_id}/events", params={"stream": "true"}, headers=server.headers()
        )
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
        assert refused.json()["code"] == "quota_exceeded" and "event streams" in refused.json()["detail"]
        streams.pop(0)[0].close()  # a client goes away without a word: its slot comes back
        deadline = time.monotonic() + 5
        while server.open_streams() != 2:
            assert time.monotonic() < deadline, "a disconnected stream kept its slot"
            time.sleep(0.05)
        streams.append(server.open_stream(job_id))
        assert streams[-1][1].startswith(b"HTTP/1.1 200")
    finally:
        for connection, _ in streams:
            connection.close()


def test_quiet_streams_cost_the_database_one_poll_per_tick_not_a_read_per_keep_alive(server: Server) -> None:
    from sqlalchemy import Engine, event

    job_id = server.submit()
    streams = [server.open_stream(job_id) for _ in range(20)]
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    try:
        time.sleep(0.5)  # every stream has read its job once and waits
        event.listen(Engine, "before_cursor_execute", seen)
        time.sleep(1.5)  # five keep-alives per stream (0.3 s), three poller ticks (0.5 s)
        event.remove(Engine, "before_cursor_execute", seen)
        assert b": keep-alive" in streams[0][0].recv(65536)
    finally:
        for connection, _ in streams:
            connection.close()
    assert len(statements) <= 12, len(statements)  # was: 2 reads per stream per keep-alive (~200 here)
