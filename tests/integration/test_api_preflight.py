"""Submit-time checks against a real S3 store: bad inputs answer 422 naming the input, before any download."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.auth import create_api_key, ensure_tenant
from service.db import session_scope
from service.migrate import upgrade
from service.queue import RecordingDispatcher
from service.s3 import make_s3_client
from service.settings import Settings
from tests.integration.test_s3_inputs import upload_folder
from tests.support.tiny_models import save_expert

pytestmark = pytest.mark.s3


@pytest.fixture
def api(s3_server, llama, tmp_path: Path):
    bucket = f"models-{uuid.uuid4().hex[:6]}"
    client = make_s3_client(s3_server.endpoint_url)
    client.create_bucket(Bucket=bucket)
    base, experts = llama
    uris = {p.name: upload_folder(s3_server.endpoint_url, bucket, p, f"acme/{p.name}") for p in [base, *experts]}
    uris["gpt2"] = upload_folder(
        s3_server.endpoint_url, bucket, save_expert("gpt2", tmp_path / "gpt2", seed=1), "acme/gpt2"
    )
    client.put_object(Bucket=bucket, Key="acme/pickled/pytorch_model.bin", Body=b"\x80\x04 not a model")
    uris["pickled"] = f"s3://{bucket}/acme/pickled"
    uris["missing"] = f"s3://{bucket}/acme/nothing-here"
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}", s3_endpoint_url=s3_server.endpoint_url,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", [f"s3://{bucket}/acme"]))
    dispatcher = RecordingDispatcher()
    return TestClient(create_app(settings, dispatcher)), key, uris, dispatcher, tmp_path / "cache"


def body(uris: dict, base: str, experts: list[str], method: str = "ties") -> dict:
    return {"method": method, "base_model": uris[base], "models": [{"model": uris[e]} for e in experts]}


@pytest.mark.parametrize(
    ("expert", "words"),
    [("missing", "nothing-here"), ("pickled", "pickle"), ("gpt2", "gpt2")],
)
def test_a_bad_input_answers_422_at_submit_naming_it(api, expert: str, words: str) -> None:
    client, key, uris, dispatcher, cache = api
    answer = client.post(
        "/v1/merge-jobs", json=body(uris, "llama-base", ["llama-expert0", expert]),
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["param"] == "models[1].model" and words in problem["detail"]
    assert dispatcher.enqueued == []
    assert not list(cache.rglob("*.safetensors"))  # nothing was downloaded to find out


def test_good_inputs_pass_preflight_without_downloading_tensors(api) -> None:
    client, key, uris, dispatcher, cache = api
    answer = client.post(
        "/v1/merge-jobs", json=body(uris, "llama-base", ["llama-expert0", "llama-expert1"], "fda"),
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    assert len(dispatcher.enqueued) == 1 and not list(cache.rglob("*.safetensors"))


def test_a_layer_count_the_base_does_not_have_answers_422_naming_layers(api) -> None:
    client, key, uris, dispatcher, _ = api
    answer = client.post(
        "/v1/merge-jobs", json={**body(uris, "llama-base", ["llama-expert0", "llama-expert1"]), "layers": 99},
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert answer.status_code == 422, answer.text
    assert answer.json()["param"] == "layers" and "covers 99 layers" in answer.json()["detail"]
    assert dispatcher.enqueued == []


def test_calibration_files_are_allowlisted_and_validated_at_submit(api, s3_server) -> None:
    client, key, uris, dispatcher, _ = api
    bucket = uris["missing"].split("/")[2]
    s3 = make_s3_client(s3_server.endpoint_url)
    s3.put_object(Bucket=bucket, Key="acme/calib/good.jsonl", Body=b'{"text": "a b c d e f g"}\n')
    s3.put_object(Bucket=bucket, Key="acme/calib/bad.jsonl", Body=b'{"text": 3}\n')
    headers = {"Authorization": f"Bearer {key}"}

    def submit(calibration: str):
        request = body(uris, "llama-base", ["llama-expert0", "llama-expert1"], "fda")
        request["models"][1]["calibration"] = calibration
        return client.post("/v1/merge-jobs", json=request, headers=headers)

    elsewhere = submit("s3://other-bucket/calib.jsonl")
    assert elsewhere.status_code == 422 and elsewhere.json()["param"] == "models[1].calibration"
    bad = submit(f"s3://{bucket}/acme/calib/bad.jsonl")
    assert bad.status_code == 422, bad.text
    assert bad.json()["param"] == "models[1].calibration" and "line 1" in bad.json()["detail"]
    assert dispatcher.enqueued == []
    good = submit(f"s3://{bucket}/acme/calib/good.jsonl")
    assert good.status_code == 202, good.text
