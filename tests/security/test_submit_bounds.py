"""Submit does bounded work only: each hostile request from issue #11 answers 4xx, fast, without
the API process allocating what the request asks for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from service.limits import Limits
from tests.security.conftest import Service, assert_problem, make_service
from tests.support.hostile import (
    HEADERS,
    REASONS,
    copy_with_config,
    fda_body,
    folder_with,
    nested_json,
    ta_body,
    zero_size_tensors_header,
)


def rss() -> int:
    return psutil.Process().memory_info().rss


class PeakRss:
    """The process's peak RSS while inside, above what it was on entry (sampled every 2 ms: freed memory
    goes back to the system before the request returns, so an after-the-fact reading misses it)."""

    def __enter__(self) -> PeakRss:
        self.start, self.peak, self.done = rss(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss() - self.start)

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.parametrize(
    "changes",
    [
        # ~200M values: +800 MB were the skeleton built (the 167-byte config cost +1 GB)
        {"hidden_size": 2048, "intermediate_size": 8192, "vocab_size": 64_000, "num_attention_heads": 16},
        {"num_hidden_layers": 300_000},
        {"num_attention_heads": 0},
        {"max_position_embeddings": 4},  # tokens beyond the model's positions
    ],
    ids=["inflated", "300k-layers", "zero-heads", "positions"],
)
def test_a_config_json_that_does_not_describe_its_checkpoint_is_refused_without_building_it(
    service: Service, llama, changes: dict
) -> None:
    base, experts = llama
    lying = copy_with_config(base, service.inputs / "lying-base", **changes)
    started = time.monotonic()
    with PeakRss() as memory:
        problem = assert_problem(service.submit(fda_body(lying, experts, tokens=16)), 422)
    assert time.monotonic() - started < 10 and memory.peak < 200 << 20  # was +1 GB, 43 s
    assert problem["param"] == "parameters.tokens" or (
        problem["param"] == "base_model" and "lying-base" in problem["detail"]
    )
    assert service.dispatcher.enqueued == []


@pytest.mark.parametrize(
    ("parameters", "param", "limit"),
    [
        ({"tokens": 1_000_000_000}, "parameters.tokens", "fda_tokens"),
        ({"anchors": 1_000_000_000}, "parameters.anchors", "fda_anchors"),
        ({"anchors": 4000, "tokens": 4000, "construction_steps": 1000}, "parameters", "fda_budget"),
    ],
)
def test_fda_budgets_beyond_the_limits_answer_422_naming_the_limit(
    service: Service, llama, parameters: dict, param: str, limit: str
) -> None:
    base, experts = llama
    started = time.monotonic()
    with PeakRss() as memory:
        problem = assert_problem(service.submit(fda_body(base, experts, **parameters)), 422, "limit_exceeded")
    assert (problem["param"], problem["limit"]) == (param, limit) and limit in problem["detail"]
    assert time.monotonic() - started < 5 and memory.peak < 100 << 20  # was a 40 s hang, a 500 and 8.3 GB held


def test_too_many_models_and_unbounded_optimizer_steps_are_refused(service: Service, llama) -> None:
    base, experts = llama
    started = time.monotonic()
    many = ta_body("/m", ["/m"] * 33_820)  # refused by the schema's bound, before any per-model work
    assert assert_problem(service.submit(many), 422)["param"] == "models" and time.monotonic() - started < 3
    some = ta_body("/m", ["/m"] * 65)  # (the limit is checked before any input is looked at)
    assert assert_problem(service.submit(some), 422, "limit_exceeded")["limit"] == "models_per_job"
    wudi = ta_body(str(base), [str(e) for e in experts], method="wudi", parameters={"steps": 2**63})
    assert assert_problem(service.submit(wudi), 422)["param"].startswith("parameters")
    wudi["parameters"] = {"steps": 1_000_000}
    assert assert_problem(service.submit(wudi), 422, "limit_exceeded")["limit"] == "optimizer_steps"


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_a_malformed_header_answers_422_naming_the_input_quickly(service: Service, llama, case: str) -> None:
    base, experts = llama
    bad = folder_with(service.inputs, case, HEADERS[case](), b"\0" * 4)
    started = time.monotonic()
    problem = assert_problem(service.submit(ta_body(str(base), [str(experts[0]), str(bad)])), 422)
    assert problem["param"] == "models[1].model" and case in problem["detail"] and REASONS[case] in problem["detail"]
    assert time.monotonic() - started < 3  # a 0.8 MB header froze the API for 11.5 s


def test_a_million_zero_size_tensors_are_refused_by_the_header_and_tensor_limits(tmp_path: Path, llama) -> None:
    base, experts = llama
    service = make_service(tmp_path, base.parent.resolve(), limits=Limits(tensors_per_input=10_000))
    many = folder_with(service.inputs, "many", zero_size_tensors_header(50_000))
    problem = assert_problem(service.submit(ta_body(str(base), [str(experts[0]), str(many)])), 422, "limit_exceeded")
    assert problem["param"] == "models[1].model" and "at most 10000" in problem["detail"]
    huge = folder_with(service.inputs, "huge", zero_size_tensors_header(1_000_000))  # 56 MB: over 16 MiB
    started = time.monotonic()
    assert assert_problem(service.submit(ta_body(str(base), [str(experts[0]), str(huge)])), 422, "limit_exceeded")
    assert time.monotonic() - started < 2  # refused from its 8-byte length, before the header is read


@pytest.mark.parametrize("side_file", ["config.json", "model.safetensors.index.json"])
def test_nested_or_huge_integer_side_files_answer_422_not_500(service: Service, llama, side_file: str) -> None:
    base, experts = llama
    for name, text in (("nested", nested_json()), ("bigint", '{"a": ' + "9" * 5000 + "}")):
        folder = copy_with_config(base, service.inputs / f"{name}-{side_file}")
        (folder / side_file).write_text(text)
        body = fda_body(folder, experts) if side_file == "config.json" else ta_body(str(base), [str(folder)])
        problem = assert_problem(service.submit(body), 422)
        assert side_file in problem["detail"]


def test_a_nested_list_parameter_answers_422_not_500(service: Service, llama) -> None:
    base, experts = llama
    for value in ([[1, 2], [3]], [[[[[[1]]]]]], {"value": [[0.5]]}, [{"filter": "x", "value": [[1]]}]):
        body = ta_body(str(base), [str(e) for e in experts], parameters={"lambda": value})
        assert service.submit(body).status_code == 422


def test_a_tenants_queue_is_bounded_with_429_and_retry_after(tmp_path: Path, llama) -> None:
    base, experts = llama
    service = make_service(tmp_path, base.parent.resolve(), preflight=False, limits=Limits(queued_jobs_per_tenant=3))
    body = ta_body(str(base), [str(e) for e in experts])
    assert [service.submit(body).status_code for _ in range(3)] == [202] * 3
    refused = service.submit(body)
    assert_problem(refused, 429, "quota_exceeded")
    assert refused.headers["retry-after"] and refused.json()["limit"] == "queued_jobs_per_tenant"
    assert service.submit(body, who="globex").status_code != 429  # another tenant's quota is its own


def test_webhook_endpoints_per_tenant_are_limited(tmp_path: Path, llama) -> None:
    base, _ = llama
    service = make_service(
        tmp_path, base.parent.resolve(), webhooks_allow_loopback=True, limits=Limits(webhook_endpoints_per_tenant=2)
    )
    made = [
        service.client.post(
            "/v1/webhook-endpoints", json={"url": f"http://127.0.0.1:9/{i}"}, headers=service.headers()
        ).status_code
        for i in range(3)
    ]
    assert made == [201, 201, 422]  # 200 endpoints were accepted


def test_one_tenants_backlog_does_not_hold_another_tenants_job_behind_it(tmp_path: Path, llama) -> None:
    """Fair dispatch: a tenant has at most running_jobs_per_tenant jobs on the shared queue; the rest
    wait in the database, so another tenant's job is the next message, not the 51st."""
    base, experts = llama
    service = make_service(tmp_path, base.parent.resolve(), preflight=False)
    body = ta_body(str(base), [str(e) for e in experts])
    flood = [service.submit(body).json()["id"] for _ in range(50)]
    globex_base = folder_with(
        tmp_path / "globex-inputs", "m", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
    )
    other = service.submit(ta_body(str(globex_base), [str(globex_base)]), who="globex").json()["id"]
    assert service.dispatcher.enqueued == [*flood[:2], other]
    from service.dispatch import dispatch_all

    assert dispatch_all(service.settings, service.dispatcher) == []  # the flood waits for its own jobs to end


@pytest.mark.parametrize("preset", [["llm"], {"name": "llm"}, None])
def test_a_preset_that_is_not_a_name_answers_422_naming_it(service: Service, llama, preset) -> None:
    base, experts = llama
    problem = assert_problem(service.submit(fda_body(base, experts, preset=preset)), 422)  # a list was a 500
    assert problem["param"] == "parameters.preset"
