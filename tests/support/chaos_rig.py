"""Pieces of bench/chaos.py's rig: worker processes that reach PostgreSQL and SeaweedFS through fault
proxies (tests/support/faults.py), the service's other
roles as real processes, and webhook receivers on loopback — a prompt one and one that trickles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.e2e.test_production_stack import ROOT, Stack
from tests.integration.test_webhook_sender import Trickler as SlowReceiver
from tests.support.services import S3Server, _wait_for_s3


class ChaosStack(Stack):
    """The e2e stack whose worker processes get `proxied` (their database and S3 through fault proxies)
    and `extra` (set for the next process started) on top of the stack's environment."""

    def __init__(self, *args, proxied: dict[str, str]) -> None:
        super().__init__(*args)
        self.proxied = proxied
        self.extra: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.proxied, **self.extra}

    def start_role(self, arguments: list[str], name: str) -> subprocess.Popen:
        """`celery -A worker.app worker ARGUMENTS`: the beat and webhooks roles as `fdamerge beat|webhooks` run them."""
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", *arguments, "--loglevel", "INFO"]
        log = open(self.tmp / f"{name}.log", "wb")
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(process)  # stopped with the workers
        return process


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def restart_seaweedfs(server: S3Server, down: float) -> None:
    """Stop the S3 server (SIGTERM), wait `down` seconds, start it again on the same ports and data."""
    server.stop()
    time.sleep(down)
    server.process = subprocess.Popen(
        server.process.args, stdout=open(server.log, "ab"), stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    wait_for_s3(server)


def wait_for_s3(server: S3Server) -> None:
    _wait_for_s3(server)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class Receiver:
    """A prompt webhook receiver: answers 200 and notes (event type, job id, arrival time)."""

    def __init__(self) -> None:
        import json

        self.arrivals: list[tuple[str, str, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.arrivals.append((body["type"], body["data"]["id"], time.time()))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Trickler(SlowReceiver):
    """A receiver that reads the request, then answers one byte per second for as long as the sender
    listens; notes how long each connection was held."""

    def __init__(self) -> None:
        self.held: list[float] = []
        super().__init__()

    def _trickle(self, connection: socket.socket) -> None:
        opened = time.monotonic()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                if self.stop.wait(1.0):
                    break
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break  # the sender gave up
        self.held.append(time.monotonic() - opened)
