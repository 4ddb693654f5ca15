"""The embedded broker never shows a reader a half-written message (kombu's own transport does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import filesystem

import service.broker
from service.broker import AtomicFilesystemTransport


@pytest.mark.parametrize(
    ("transport", "module", "exposed"),
    [(AtomicFilesystemTransport, service.broker, False), (filesystem.Transport, filesystem, True)],
)
def test_a_message_file_is_visible_only_once_complete(tmp_path: Path, monkeypatch, transport, module, exposed) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    visible_while_writing: list[str] = []
    real_dumps = module.dumps

    def dumps(payload):  # runs while the message is being written: what could a reader take now?
        visible_while_writing.extend(n for n in os.listdir(folder) if n.endswith(".jobs.msg"))
        return real_dumps(payload)

    monkeypatch.setattr(module, "dumps", dumps)
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "processed_folder": str(tmp_path)}
    with Connection(transport=transport, transport_options=options) as connection:
        queue = connection.SimpleQueue("jobs")
        queue.put({"job": "mj_1"})
        assert bool(visible_while_writing) is exposed
        assert queue.get(timeout=2).payload == {"job": "mj_1"}
        queue.close()
