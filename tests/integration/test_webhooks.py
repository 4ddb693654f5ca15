"""Webhooks: signed deliveries to a receiver on loopback, retried after a 5xx, never again after a 2xx;
addresses that are not public refused; signatures verify with the secret shown once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update

from fdamerge_client.webhooks import verify
from service.db import session_scope
from service.errors import InvalidRequest
from service.jobs import claim_job, finish_job
from service.models import WebhookDelivery, utcnow
from service.reaper import deliver_webhooks
from service.settings import Settings
from service.webhooks import check_url, sign
from tests.integration.test_api_jobs import Stack


class Receiver:
    """An HTTP server on loopback that answers with the codes it is given, in order, and records requests."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.requests = list(codes), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/fda"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    stack = Stack(tmp_path)
    stack.client.app.state.settings = stack.client.app.state.settings.model_copy(
        update={"webhooks_allow_loopback": True}
    )
    return stack


def settings_of(stack: Stack) -> Settings:
    return Settings(database_url=stack.url, webhooks_allow_loopback=True)


def make_due_now(stack: Stack) -> None:
    with session_scope(stack.url) as session:
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))


def test_a_succeeded_job_is_delivered_signed_and_retried_after_a_500(stack: Stack) -> None:
    receiver = Receiver([500, 200])
    try:
        created = stack.client.post(
            "/v1/webhook-endpoints", json={"url": receiver.url, "events": ["merge_job.succeeded"]},
            headers=stack.headers(),
        ).json()  # fmt: skip
        secret = created["secret"]
        assert secret.startswith("whsec_")
        listed = stack.client.get(f"/v1/webhook-endpoints/{created['id']}", headers=stack.headers()).json()
        assert listed["secret"] is None  # shown once
        job_id = stack.submit().json()["id"]
        with session_scope(stack.url) as session:
            claim_job(session, job_id, worker_id="w1", lease_seconds=60)  # running: not subscribed
            finish_job(session, job_id, worker_id="w1", result={"output": "x"}, artifacts=[], metrics={})
        assert deliver_webhooks(settings_of(stack)) == 1  # the 500
        assert deliver_webhooks(settings_of(stack)) == 0  # backing off
        make_due_now(stack)
        assert deliver_webhooks(settings_of(stack)) == 1  # the 200
        make_due_now(stack)
        assert deliver_webhooks(settings_of(stack)) == 0  # delivered: never again
        assert len(receiver.requests) == 2
        headers, body = receiver.requests[-1]
        assert verify(secret, headers, body)
        assert not verify(secret, headers, body.replace(b"succeeded", b"failed"))
        assert headers["webhook-id"] == receiver.requests[0][0]["webhook-id"]  # the same message, retried
        payload = json.loads(body)
        assert (payload["type"], payload["data"]["id"], payload["data"]["status"]) == (
            "merge_job.succeeded",
            job_id,
            "succeeded",
        )
        deliveries = stack.client.get(f"/v1/webhook-endpoints/{created['id']}/deliveries", headers=stack.headers())
        [delivery] = deliveries.json()["data"]
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 2, 200)
    finally:
        receiver.close()


def test_another_tenant_hears_nothing(stack: Stack) -> None:
    receiver = Receiver([])
    try:
        stack.client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=stack.headers(stack.other))
        job_id = stack.submit().json()["id"]
        stack.client.post(f"/v1/merge-jobs/{job_id}/cancel", headers=stack.headers())
        assert deliver_webhooks(settings_of(stack)) == 0 and receiver.requests == []
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("url", "allow_loopback"),
    [
        ("http://example.com/hook", False),  # not https
        ("https://127.0.0.1/hook", False),  # loopback without the development switch
        ("https://10.1.2.3/hook", False),  # private
        ("https://169.254.169.254/latest/meta-data", False),  # link-local metadata service
        ("https://[::1]/hook", False),
        ("https://[64:ff9b::a9fe:a9fe]/x", False),  # NAT64 of the metadata address
        ("https://[::ffff:10.0.0.1]/x", False),  # IPv4-mapped private
        ("https://[2002:0a00:0001::1]/x", False),  # 6to4 of 10.0.0.1
        ("https://[fec0::1]/x", False),  # site-local
        ("http://10.1.2.3/hook", True),  # the switch admits loopback only
        ("ftp://example.com/x", True),
    ],
)
def test_addresses_that_are_not_public_are_refused(url: str, allow_loopback: bool) -> None:
    with pytest.raises(InvalidRequest):
        check_url(url, allow_loopback)


def test_creating_an_endpoint_checks_its_url_and_events(stack: Stack) -> None:
    stack.client.app.state.settings = stack.client.app.state.settings.model_copy(
        update={"webhooks_allow_loopback": False}
    )
    refused = stack.client.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/x"}, headers=stack.headers())
    assert refused.status_code == 422 and refused.json()["param"] == "url"
    unknown = stack.client.post(
        "/v1/webhook-endpoints", json={"url": "https://127.0.0.1/x", "events": ["job.done"]}, headers=stack.headers()
    )
    assert unknown.status_code == 422 and unknown.json()["param"].startswith("events")


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    secret, message_id, timestamp = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    assert sign(secret, message_id, timestamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "Webhook-Id": message_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": "v1,bad v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert verify(secret, headers, body, now=timestamp + 10)
    assert not verify(secret, headers, body, now=timestamp + 3600)  # a replay, too late
