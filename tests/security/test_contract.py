"""The honest contract: OpenAPI as the API behaves, problem+json everywhere, docs without a CDN,
page headers, the connection kept after a 500, the remaining 500s and traps, secrets out of logs."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from api.routers.docs import SERVED
from tests.security.conftest import Service, assert_problem
from tests.support.hostile import ta_body
from tests.support.services import free_port


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_openapi_declares_the_bearer_scheme_and_problem_responses(service: Service) -> None:
    document = service.client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, method, operation in operations(document):
        responses = operation["responses"]
        for status, answer in responses.items():
            if status.startswith(("4", "5")):
                assert list(answer["content"]) == ["application/problem+json"], (path, method, status)
        if path.startswith("/v1/"):
            assert operation.get("security"), (path, method)
            assert {"401", "403", "500"} <= set(responses), (path, method)
        if "{" in path and path.startswith("/v1/") and not path.startswith("/v1/tenant"):
            assert "404" in responses, (path, method)
        if "requestBody" in operation:
            assert {"413", "422"} <= set(responses), (path, method)


def test_openapi_lists_the_closed_sets(service: Service) -> None:
    document = service.client.get("/openapi.json").json()
    text = str(document)
    for value in ("fda", "ties", "succeeded", "cancelling", "metrics:read", "merge_job.failed", "provenance"):
        assert f"'{value}'" in text, value
    listing = document["paths"]["/v1/merge-jobs"]["get"]["parameters"]
    status = next(p for p in listing if p["name"] == "status")
    assert "enum" in str(status["schema"])


def test_the_docs_pages_load_their_assets_from_the_api_itself(service: Service) -> None:
    for page in ("/docs", "/redoc"):
        html = service.client.get(page)
        assert html.status_code == 200 and "<script>" not in html.text  # no inline script: the CSP forbids it
        sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert sources and all(s.startswith("/docs/assets/") for s in sources), sources  # was: a CDN
        for source in sources:
            asset = service.client.get(source)
            assert asset.status_code == 200 and len(asset.content) > 100, source
    assert set(SERVED) >= {"swagger-ui-bundle.js", "redoc.standalone.js", "swagger-ui.css"}


def test_pages_send_csp_and_frame_headers(service: Service) -> None:
    for page in ("/dashboard", "/dashboard/app.js", "/docs"):
        headers = service.client.get(page).headers
        assert headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in headers["content-security-policy"]
        assert (
            "'unsafe-eval'" not in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
        )
    dashboard = service.client.get("/dashboard").headers["content-security-policy"]
    assert "script-src 'self'" in dashboard and "unsafe-inline" not in dashboard
    assert service.client.get("/v1/merge-jobs", headers=service.headers()).headers["cache-control"] == "no-store"


def test_a_500_is_a_problem_and_keeps_the_connection_open(service: Service) -> None:
    """The real app on a real server: two requests pipelined on one socket, the first failing inside a
    route (was: the connection dropped after every 500)."""
    from api.app import create_app

    app = create_app(service.settings, service.dispatcher)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail /srv/x")

    @app.get("/fine")
    def fine() -> dict:
        return {"ok": True}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            first = _response(sock)
            sock.sendall(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
            second = _response(sock)
        assert first.startswith(b"HTTP/1.1 500") and b"application/problem+json" in first
        assert b"secret detail" not in first and b"reference" in first
        assert second.startswith(b"HTTP/1.1 200") and b'{"ok":true}' in second
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_an_event_cursor_past_64_bits_is_a_422(service: Service, llama) -> None:
    base, experts = llama
    job_id = service.submit(ta_body(str(base), [str(e) for e in experts])).json()["id"]
    after = service.client.get(f"/v1/merge-jobs/{job_id}/events", params={"after": 2**70}, headers=service.headers())
    assert_problem(after, 422, "invalid_request")


@pytest.mark.parametrize("url", ["https://example.com:99999/hook", "https://[::1/x", "http://%zz/"])
def test_a_webhook_url_with_an_impossible_port_or_host_is_a_422(service: Service, url: str) -> None:
    made = service.client.post("/v1/webhook-endpoints", json={"url": url}, headers=service.headers())
    assert assert_problem(made, 422)["param"] == "url"


def test_an_empty_idempotency_key_is_refused_not_stored(service: Service, llama) -> None:
    base, experts = llama
    body = ta_body(str(base), [str(e) for e in experts])
    assert_problem(service.submit(body, **{"Idempotency-Key": ""}), 422)
    first, second = service.submit(body), service.submit(body)
    assert first.json()["id"] != second.json()["id"]  # no phantom replay of an empty key


@pytest.mark.parametrize("output", ["x" * 256, "a/../b", "/abs", "a//b", "ünï/côdé", "a\\b", "a b"])
def test_unsafe_output_names_are_refused_at_submit(service: Service, llama, output: str) -> None:
    base, experts = llama
    problem = assert_problem(service.submit({**ta_body(str(base), [str(e) for e in experts]), "output": output}), 422)
    assert problem["param"] == "output" and service.settings.storage_url not in problem["detail"]
    assert not Path(service.settings.storage_url).exists()  # no empty folder left behind


def test_webhook_secrets_never_reach_the_logs(service: Service, caplog) -> None:
    """SQLAlchemy puts parameters into exception text, which log.exception writes out."""
    from sqlalchemy.exc import IntegrityError

    from service.db import session_scope
    from service.models import WebhookEndpoint

    secret = "whsec_" + "S3CR3T" * 6
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(IntegrityError) as failure,
        session_scope(service.settings.database_url) as session,
    ):
        session.add(WebhookEndpoint(id="we_1", tenant_id="tn_nobody", url="https://x", events=[], secret=secret))
    logging.getLogger("test").exception("insert failed", exc_info=failure.value)
    assert secret not in str(failure.value) and secret not in caplog.text
