"""`fdamerge submit` and `fdamerge jobs …`: the HTTP client for platforms and people.

The server is --server (or FDA_SERVER_URL, default http://127.0.0.1:8000); the key comes from
FDA_API_KEY. Output is JSON, so scripts can pipe it; errors print the server's problem detail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


def add_parsers(commands) -> None:
    submit = commands.add_parser("submit", help="submit a merge config (ours or mergekit's) to the service")
    submit.add_argument("config", type=Path)
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 1 unless succeeded")
    submit.add_argument("--output", help="output prefix under the service's storage")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--idempotency-key")
    _server_option(submit)
    submit.set_defaults(run=run_submit)
    jobs = commands.add_parser("jobs", help="list, inspect and cancel merge jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list", help="newest first")
    listing.add_argument("--status", action="append")
    listing.add_argument("--limit", type=int, default=20)
    _server_option(listing)
    listing.set_defaults(run=run_list)
    for name, runner in (("get", run_get), ("cancel", run_cancel), ("retry", run_retry), ("events", run_events)):
        command = jobs.add_parser(name)
        command.add_argument("job_id")
        _server_option(command)
        command.set_defaults(run=runner)


def _server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("FDA_SERVER_URL", "http://127.0.0.1:8000"))


class ClientError(Exception):
    pass


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    key = os.environ.get("FDA_API_KEY")
    if not key:
        raise ClientError("set FDA_API_KEY (fdamerge keys create, or the key fdamerge up printed)")
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    try:
        response = httpx.request(method, args.server.rstrip("/") + path, headers=headers, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach {args.server}: {exc}") from None
    if response.status_code >= 400:
        try:
            problem = response.json()
            raise ClientError(f"{response.status_code} {problem.get('code')}: {problem.get('detail')}")
        except ValueError:
            raise ClientError(f"{response.status_code}: {response.text[:500]}") from None
    return response.json()


class Unreachable(ClientError):
    pass


def _retrying(call, attempts: int = 5, pause: float = 2.0):
    """Connection failures are retried (the server restarting); answers, even errors, are not."""
    for attempt in range(attempts):
        try:
            return call()
        except Unreachable:
            if attempt == attempts - 1:
                raise
            time.sleep(pause)


def _print(document: Any) -> None:
    print(json.dumps(document, indent=2))


def _guarded(run):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except ClientError as exc:
            print(f"fdamerge: {exc}", file=sys.stderr)
            return 2

    return wrapper


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    from fda_core.config import load_config

    config = load_config(args.config)
    body = config.model_dump(mode="json", exclude_none=True)
    body["base_model"] = _absolute(body.get("base_model"))
    for model in body["models"]:
        model["model"] = _absolute(model["model"])
    if args.output:
        body["output"] = args.output
    if args.metadata:
        body["metadata"] = dict(item.split("=", 1) for item in args.metadata)
    return {k: v for k, v in body.items() if v is not None}


def _absolute(location: str | None) -> str | None:
    """Local paths become absolute: the server does not share our working directory."""
    if location is None or "://" in location:
        return location
    return str(Path(location).resolve())


@_guarded
def run_submit(args: argparse.Namespace) -> int:
    try:
        body = request_body(args)
    except Exception as exc:  # fda_core's ConfigError, a bad KEY=VALUE
        raise ClientError(str(exc)) from None
    headers = {"Idempotency-Key": args.idempotency_key or uuid.uuid4().hex}  # a retried submit never duplicates
    job = _retrying(lambda: _request(args, "POST", "/v1/merge-jobs", json=body, headers=headers))
    if not args.wait:
        _print(job)
        return 0
    print(f"{job['id']}: {job['status']}", file=sys.stderr)
    path = f"/v1/merge-jobs/{job['id']}"
    while job["status"] not in TERMINAL:
        time.sleep(1.0)
        job = _retrying(lambda: _request(args, "GET", path))
        print(f"{job['id']}: {job['status']} {job['stage'] or ''} {job['progress']:.0%}", file=sys.stderr)
    _print(job)
    return 0 if job["status"] == "succeeded" else 1


@_guarded
def run_list(args: argparse.Namespace) -> int:
    _print(_request(args, "GET", "/v1/merge-jobs", params={"status": args.status or [], "limit": args.limit}))
    return 0


@_guarded
def run_get(args: argparse.Namespace) -> int:
    _print(_request(args, "GET", f"/v1/merge-jobs/{args.job_id}"))
    return 0


@_guarded
def run_cancel(args: argparse.Namespace) -> int:
    _print(_request(args, "POST", f"/v1/merge-jobs/{args.job_id}/cancel"))
    return 0


@_guarded
def run_retry(args: argparse.Namespace) -> int:
    _print(_request(args, "POST", f"/v1/merge-jobs/{args.job_id}/retry"))
    return 0


@_guarded
def run_events(args: argparse.Namespace) -> int:
    after = None
    while True:
        page = _request(args, "GET", f"/v1/merge-jobs/{args.job_id}/events", params={"limit": 100, "after": after})
        for event in page["data"]:
            print(f"{event['at']}  {event['kind']:<8} {event['message']}")
        if not page["has_more"]:
            return 0
        after = page["next_cursor"]
