"""The webhook sender against receivers on loopback: a receiver that trickles its answer is cut off at
the delivery's total deadline, two senders running at once never send one delivery twice, and no
database transaction is open while a request is on the wire."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import Engine, event, select, text

from service import webhook_sender
from service.db import session_scope
from service.models import WebhookDelivery, WebhookEndpoint
from service.settings import Settings
from service.webhook_sender import deliver_due

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def add_deliveries(database_url: str, url: str, count: int) -> list[str]:
    ids = [f"msg_{i:04d}" for i in range(count)]
    with session_scope(database_url) as session:
        session.add(WebhookEndpoint(id="we_1", tenant_id="tn_a", url=url, secret=SECRET))
        session.flush()
        session.add_all(
            WebhookDelivery(id=i, endpoint_id="we_1", event="merge_job.succeeded", payload={"n": i}) for i in ids
        )
    return ids


def deliveries(database_url: str) -> list[WebhookDelivery]:
    with session_scope(database_url) as session:
        found = list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))
        session.expunge_all()
        return found


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the sender opens up to 16 connections at once
    daemon_threads = True


class Receiver:
    """Answers 200 after `on_request(webhook_id)`; counts the ids it received."""

    def __init__(self, on_request=lambda webhook_id: None) -> None:
        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.received[self.headers["webhook-id"]] += 1
                    on_request(self.headers["webhook-id"])  # one at a time: a look sees the sender only
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"

    def close(self) -> None:
        self.server.shutdown()


class Trickler:
    """Reads the request, then sends a status line one byte every 0.2 s for up to a minute: each read
    gets a byte long before any per-read timeout."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n" * 20:
                if self.stop.wait(0.2):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return  # the sender gave up: what we want

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, webhooks_allow_loopback=True)


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_total_deadline(database_url: str, monkeypatch) -> None:
    monkeypatch.setattr(webhook_sender, "DEADLINE_SECONDS", 1.0)
    trickler = Trickler()
    try:
        add_deliveries(database_url, trickler.url, 2)
        started = time.monotonic()
        assert deliver_due(settings(database_url)) == 2
        elapsed = time.monotonic() - started
    finally:
        trickler.close()
    assert elapsed < 4.0, f"a pass took {elapsed:.1f} s against a 1 s deadline"  # was: ~7 s per delivery, in turn
    for delivery in deliveries(database_url):
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, None)
        assert "deadline" in (delivery.last_error or ""), delivery.last_error


def test_two_senders_at_once_never_send_a_delivery_twice(database_url: str, receiver: Receiver) -> None:
    ids = add_deliveries(database_url, receiver.url, 20)
    both_read = threading.Barrier(2, timeout=10)
    waited: set[int] = set()

    def after_execute(conn, cursor, statement, parameters, context, executemany) -> None:
        # each sender's first read of the due deliveries waits for the other's: both saw every delivery due
        due = (
            statement.startswith("SELECT") and "FROM webhook_deliveries" in statement and "next_attempt_at" in statement
        )
        if due and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_read.wait()

    event.listen(Engine, "after_cursor_execute", after_execute)
    counts: list[int] = []
    try:
        senders = [threading.Thread(target=lambda: counts.append(deliver_due(settings(database_url)))) for _ in "ab"]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=60)
    finally:
        event.remove(Engine, "after_cursor_execute", after_execute)
    assert len(waited) == 2 and sum(counts) == len(ids), counts
    assert [d.last_error for d in deliveries(database_url) if d.last_error] == []
    assert receiver.received == Counter({i: 1 for i in ids})  # every one once, none twice
    assert {(d.status, d.attempts) for d in deliveries(database_url)} == {("succeeded", 1)}


def test_no_transaction_is_open_while_a_delivery_is_sent(postgres_server) -> None:
    from service.migrate import upgrade
    from service.models import Tenant

    url = postgres_server.create_database("webhook_no_transaction")
    upgrade(url)
    with session_scope(url) as session:
        session.add(Tenant(id="tn_a", name="a"))
    seen: list[tuple[int, int]] = []

    def look(webhook_id: str) -> None:  # while the sender waits for this answer
        with session_scope(url) as session:
            open_transactions = session.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            ))  # fmt: skip
            locked = session.scalar(text(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'webhook_deliveries' AND l.pid <> pg_backend_pid()"
            ))  # fmt: skip
        seen.append((int(open_transactions or 0), int(locked or 0)))

    receiver = Receiver(look)
    try:
        add_deliveries(url, receiver.url, 3)
        assert deliver_due(settings(url)) == 3
    finally:
        receiver.close()
    assert seen == [(0, 0)] * 3  # was: the sender's SELECT … FOR UPDATE held its transaction and row locks
