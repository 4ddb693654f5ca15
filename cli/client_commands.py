"""`fdamerge submit` and `fdamerge jobs …`: the HTTP client for platforms and people.

The server is --server (or FDA_SERVER_URL, default http://127.0.0.1:8000); the key comes from
FDA_API_KEY. Output is JSON, so scripts can pipe it; errors print the server's problem detail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    artifacts = jobs.add_parser("artifacts", help="a job's output files: path, kind, size, sha256")
    artifacts.add_argument("job_id")
    _server_option(artifacts)
    artifacts.set_defaults(run=run_artifacts)
    download = jobs.add_parser("download", help="download a job's output files (sha256 checked) into --out")
    download.add_argument("job_id")
    download.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    download.add_argument(
        "--path", action="append", default=[], help="repeatable: only these artifact paths (default: all)"
    )
    _server_option(download)
    download.set_defaults(run=run_download)


def add_schedule_parsers(commands) -> None:
    schedules = commands.add_parser("schedules", help="cron-driven merges").add_subparsers(
        dest="schedules_command", required=True
    )
    create = schedules.add_parser("create", help="NAME CRON CONFIG: runs CONFIG (a merge YAML) on a cron")
    create.add_argument("name")
    create.add_argument("cron", help="five fields, e.g. '0 2 * * *'")
    create.add_argument("config", type=Path)
    create.add_argument("--timezone", default="UTC")
    create.add_argument("--overlap", choices=("skip", "queue"), default="skip")
    create.add_argument("--output")
    _server_option(create)
    create.set_defaults(run=run_schedule_create)
    listing = schedules.add_parser("list")
    _server_option(listing)
    listing.set_defaults(run=run_schedule_list)
    for name in ("get", "pause", "resume", "trigger", "delete"):
        command = schedules.add_parser(name)
        command.add_argument("schedule_id")
        _server_option(command)
        command.set_defaults(run=run_schedule_action, action=name)


def _server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("FDA_SERVER_URL", "http://127.0.0.1:8000"))


def _client(args: argparse.Namespace):
    from fdamerge_client import Client

    key = os.environ.get("FDA_API_KEY")
    if not key:
        raise _Refused("set FDA_API_KEY (fdamerge keys create, or the key fdamerge up printed)")
    return Client(args.server, key)


class _Refused(Exception):
    pass


def _print(document: Any) -> None:
    print(json.dumps(document, indent=2))


def _guarded(run):
    def wrapper(args: argparse.Namespace) -> int:
        from fdamerge_client import ApiError, Unreachable

        try:
            return run(args)
        except (_Refused, ApiError, Unreachable) as exc:
            print(f"fdamerge: {exc}", file=sys.stderr)
            return 2

    return wrapper


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The YAML as a job body; relative local paths are relative to the YAML's folder (load_config),
    and sent absolute: the server does not share our working directory."""
    from fda_core.config import load_config
    from fda_core.errors import FdaMergeError

    try:
        config = load_config(args.config)
    except FdaMergeError as exc:
        raise _Refused(str(exc)) from None
    body = config.model_dump(mode="json", exclude_none=True)
    body["base_model"] = _absolute(body.get("base_model"))
    for model in body["models"]:
        model["model"] = _absolute(model["model"])
        if model.get("calibration"):
            model["calibration"] = _absolute(model["calibration"])
    return {k: v for k, v in body.items() if v is not None}


def _absolute(location: str | None) -> str | None:
    if location is None or "://" in location:
        return location
    return str(Path(location).expanduser().absolute())


def metadata_pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise _Refused(f"--metadata: expected KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


@_guarded
def run_submit(args: argparse.Namespace) -> int:
    body = request_body(args)
    metadata = metadata_pairs(args.metadata)
    client = _client(args)
    job = client.submit(body, output=args.output, metadata=metadata, idempotency_key=args.idempotency_key)
    if args.wait:
        print(f"{job.id}: {job.status}", file=sys.stderr)
        job = client.wait(job.id, poll=1.0)
    _print(job.raw)
    return 0 if not args.wait or job.status == "succeeded" else 1


@_guarded
def run_list(args: argparse.Namespace) -> int:
    jobs = _client(args).jobs(status=args.status, page_size=min(args.limit, 100))
    _print([job.raw for job, _ in zip(jobs, range(args.limit))])
    return 0


@_guarded
def run_get(args: argparse.Namespace) -> int:
    _print(_client(args).get(args.job_id).raw)
    return 0


@_guarded
def run_cancel(args: argparse.Namespace) -> int:
    _print(_client(args).cancel(args.job_id).raw)
    return 0


@_guarded
def run_retry(args: argparse.Namespace) -> int:
    _print(_client(args).retry(args.job_id).raw)
    return 0


@_guarded
def run_events(args: argparse.Namespace) -> int:
    for event in _client(args).events(args.job_id):
        print(f"{event.at}  {event.kind:<8} {event.message}")
    return 0


@_guarded
def run_artifacts(args: argparse.Namespace) -> int:
    _print([vars(artifact) for artifact in _client(args).artifacts(args.job_id)])
    return 0


@_guarded
def run_download(args: argparse.Namespace) -> int:
    client = _client(args)
    artifacts = client.artifacts(args.job_id)
    wanted = set(args.path) or {a.path for a in artifacts}
    missing = sorted(wanted - {a.path for a in artifacts})
    if missing:
        raise _Refused(f"job {args.job_id} has no artifact {missing[0]!r} (fdamerge jobs artifacts lists them)")
    out = args.out.resolve()
    for artifact in artifacts:
        if artifact.path not in wanted:
            continue
        target = (out / artifact.path).resolve()
        if not target.is_relative_to(out):  # a path the server sent must stay inside --out
            raise _Refused(f"artifact path {artifact.path!r} leaves {out}; refusing to write it")
        client.download(artifact, target)
        print(f"{artifact.path}  {artifact.size} bytes  sha256 {artifact.sha256[:16]}… ok", file=sys.stderr)
    print(str(out))
    return 0


@_guarded
def run_schedule_create(args: argparse.Namespace) -> int:
    template = request_body(args)
    if args.output:
        template["output"] = args.output
    _print(_client(args).create_schedule(args.name, args.cron, template, timezone=args.timezone, overlap=args.overlap))
    return 0


@_guarded
def run_schedule_list(args: argparse.Namespace) -> int:
    _print(_client(args).schedules())
    return 0


@_guarded
def run_schedule_action(args: argparse.Namespace) -> int:
    client, schedule_id = _client(args), args.schedule_id
    actions = {
        "get": lambda: client.schedule(schedule_id),
        "pause": lambda: client.update_schedule(schedule_id, paused=True),
        "resume": lambda: client.update_schedule(schedule_id, paused=False),
        "trigger": lambda: client.trigger(schedule_id).raw,
        "delete": lambda: client.delete_schedule(schedule_id) or {"deleted": schedule_id},
    }
    _print(actions[args.action]())
    return 0
