"""docs/integration.md's Python blocks, run in order against a live `fdamerge up` (as a user would paste them)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.e2e.test_embedded_stack import start_up, stop_group
from tests.integration.test_webhooks import Receiver
from tests.support.services import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "integration.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_python_example_in_the_integration_doc_runs(llama, tmp_path: Path, monkeypatch) -> None:
    base, experts = llama
    models = tmp_path / "models"
    models.mkdir()
    for name, folder in (("base", base), ("expert-a", experts[0]), ("expert-b", experts[1])):
        (models / name).symlink_to(folder)
    monkeypatch.setenv("FDA_WEBHOOKS_ALLOW_LOOPBACK", "true")
    port = free_port()
    process, key = start_up(tmp_path, port, allow=[base.parent])  # the symlinks resolve there
    receiver = Receiver([])
    try:
        monkeypatch.setenv("FDA_SERVER_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("FDA_API_KEY", key)
        monkeypatch.setenv("MODELS", str(models))
        monkeypatch.setenv("RECEIVER_URL", receiver.url)
        monkeypatch.chdir(tmp_path)
        namespace: dict = {}
        blocks = python_blocks()
        assert len(blocks) >= 5
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 (our own documentation)
        assert (tmp_path / "merged" / "model.safetensors").exists()
        deadline = time.monotonic() + 60  # the scheduled run succeeded after the endpoint existed
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.5)
        headers, body = receiver.requests[0]
        assert namespace["handle"](headers, body) == 204  # the doc's receiver accepts the signed delivery
        assert namespace["handle"](headers, body + b" ") == 400
    finally:
        receiver.close()
        stop_group(process)
