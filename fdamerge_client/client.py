"""The client: one method per API verb, cursor pages followed for you, problems raised as ApiError."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from fdamerge_client.models import Artifact, Event, Job


class ApiError(Exception):
    """The server answered with a problem document (RFC 9457)."""

    def __init__(self, status: int, code: str, detail: str, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.param = status, code, detail, param


class Unreachable(Exception):
    """No answer from the server (connection refused, timeout)."""


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        """`http`: an httpx.Client of your own (proxies, certificates, a test client); the key is added to it."""
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.http.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.http.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise _problem(response)
        return response.json()

    def submit(
        self,
        config: dict[str, Any],
        *,
        output: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a merge config (method, base_model, models, parameters, dtype, seed). A key is sent
        always, so retrying this call after a timeout never creates a second job."""
        body = {**config, **({"output": output} if output else {}), **({"metadata": metadata} if metadata else {})}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Job.of(self._retrying(lambda: self._call("POST", "/v1/merge-jobs", json=body, headers=headers)))

    def get(self, job_id: str) -> Job:
        return Job.of(self._call("GET", f"/v1/merge-jobs/{job_id}"))

    def jobs(
        self, *, status: list[str] | None = None, metadata: dict[str, str] | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """Every matching job, newest first, following the cursor."""
        params: dict[str, Any] = {
            "limit": page_size,
            "status": status or [],
            "metadata": [f"{k}:{v}" for k, v in (metadata or {}).items()],
        }
        while True:
            page = self._call("GET", "/v1/merge-jobs", params=params)
            yield from (Job.of(body) for body in page["data"])
            if not page["has_more"]:
                return
            params["after"] = page["next_cursor"]

    def cancel(self, job_id: str) -> Job:
        return Job.of(self._call("POST", f"/v1/merge-jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> Job:
        return Job.of(self._call("POST", f"/v1/merge-jobs/{job_id}/retry"))

    def events(self, job_id: str, after: int | None = None) -> Iterator[Event]:
        """The job's events so far, oldest first."""
        while True:
            params = {"limit": 100, **({"after": after} if after is not None else {})}
            page = self._call("GET", f"/v1/merge-jobs/{job_id}/events", params=params)
            for body in page["data"]:
                yield Event.of(body)
            if not page["has_more"]:
                return
            after = int(page["next_cursor"])

    def metrics(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/merge-jobs/{job_id}/metrics")["metrics"]

    def artifacts(self, job_id: str) -> list[Artifact]:
        return [Artifact.of(body) for body in self._call("GET", f"/v1/merge-jobs/{job_id}/artifacts")["data"]]

    def download(self, artifact: Artifact, target: Path) -> Path:
        """Stream the artifact to `target` (following a presigned redirect), checking its sha256."""
        digest = hashlib.sha256()
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", artifact.download, follow_redirects=True) as response, open(target, "wb") as out:
            if response.status_code >= 400:
                response.read()
                raise _problem(response)
            for chunk in response.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != artifact.sha256:
            target.unlink()
            raise ApiError(502, "checksum_mismatch", f"{artifact.path}: downloaded bytes do not match its sha256")
        return target

    def create_schedule(
        self,
        name: str,
        cron: str,
        template: dict[str, Any],
        *,
        timezone: str = "UTC",
        overlap: str = "skip",
        paused: bool = False,
    ) -> dict[str, Any]:
        """A cron schedule (read in `timezone`) whose runs submit `template` (a merge-job body)."""
        body = {
            "name": name,
            "cron": cron,
            "timezone": timezone,
            "template": template,
            "overlap": overlap,
            "paused": paused,
        }
        return self._call("POST", "/v1/schedules", json=body)

    def schedules(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/schedules")["data"]

    def schedule(self, schedule_id: str) -> dict[str, Any]:
        """With its recent runs."""
        return self._call("GET", f"/v1/schedules/{schedule_id}")

    def update_schedule(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        """cron, timezone, template, overlap or paused."""
        return self._call("PATCH", f"/v1/schedules/{schedule_id}", json=changes)

    def delete_schedule(self, schedule_id: str) -> None:
        response = self.http.delete(f"/v1/schedules/{schedule_id}")
        if response.status_code >= 400:
            raise _problem(response)

    def trigger(self, schedule_id: str) -> Job:
        """Run the schedule's template now."""
        return Job.of(self._call("POST", f"/v1/schedules/{schedule_id}/trigger"))

    def stream_events(self, job_id: str, after: int | None = None) -> Iterator[Event]:
        """Events as they happen (server-sent events), until the job ends."""
        params: dict[str, str | int] = {"stream": "true", **({"after": after} if after is not None else {})}
        timeout = httpx.Timeout(10.0, read=None)  # connecting is bounded; a quiet job may not speak for hours
        try:
            with self.http.stream("GET", f"/v1/merge-jobs/{job_id}/events", params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _problem(response)
                kind = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind != "end":
                        yield Event.of(json.loads(line[6:]))
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.http.base_url}: {exc}") from None

    def create_key(self, scopes: list[str] | None = None) -> dict[str, Any]:
        """A new key for your tenant (admin scope); the plaintext is in `key`, shown this once."""
        return self._call("POST", "/v1/api-keys", json={"scopes": scopes} if scopes else {})

    def keys(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/api-keys")["data"]

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/api-keys/{key_id}")

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 2.0) -> Job:
        """Poll until the job ends (or `timeout` seconds pass: TimeoutError); transient outages are ridden out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self._retrying(lambda: self.get(job_id))
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll)

    @staticmethod
    def _retrying(call, attempts: int = 5, pause: float = 2.0):
        """Unreachable servers, gateway errors and 409 (an idempotent request still in flight) are retried."""
        for attempt in range(attempts):
            try:
                return call()
            except (Unreachable, ApiError) as exc:
                transient = isinstance(exc, Unreachable) or exc.status in (409, 502, 503, 504)
                if not transient or attempt == attempts - 1:
                    raise
                time.sleep(pause)


def _problem(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        return ApiError(response.status_code, body.get("code", "error"), body.get("detail", ""), body.get("param"))
    except ValueError:
        return ApiError(response.status_code, "error", response.text[:500])
