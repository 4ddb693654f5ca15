"""`fdamerge api | worker | beat | up`: the service's processes, configured by FDA_* variables.

`up` is the embedded stack for a laptop: SQLite, ./var/storage and the filesystem broker, one
worker with the periodic reaper, the API in the foreground; it prints the URL and a first key.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

WORKER = ["-A", "worker.app", "worker", "--loglevel", "INFO"]


def add_parsers(commands) -> None:
    api = commands.add_parser("api", help="serve the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(run=run_api)
    worker = commands.add_parser("worker", help="a merge worker: one job at a time, a fresh process per job")
    worker.set_defaults(run=run_worker)
    beat = commands.add_parser("beat", help="periodic tasks (the lease reaper) and their small worker")
    beat.set_defaults(run=run_beat)
    up = commands.add_parser("up", help="API + worker + reaper on SQLite, ./var storage, embedded broker")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--allow", action="append", default=[], metavar="FOLDER",
        help="repeatable: a local folder the first key may merge from (default: the current folder)",
    )  # fmt: skip
    up.add_argument("--no-demo", action="store_true", help="do not build the tiny demo checkpoints in var/demo")
    up.set_defaults(run=run_up)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from service.observability import configure_json_logging

    configure_json_logging()
    uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port, log_config=None)
    return 0


def worker_command() -> list[str]:
    return [sys.executable, "-m", "celery", *WORKER, "-Q", "merge", "-c", "1", "--prefetch-multiplier", "1",
            "--max-tasks-per-child", "1", "-n", "merge@%h"]  # fmt: skip


def beat_command(schedule: str = "var/celerybeat-schedule") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        *WORKER,
        "-B",
        "-s",
        schedule,
        "-Q",
        "control,webhooks",  # the reaper and scheduler, and webhook sending, two at a time
        "-c",
        "2",
        "-n",
        "control@%h",
    ]


def run_worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, worker_command())
    return 0  # not reached


def run_beat(args: argparse.Namespace) -> int:
    os.makedirs("var", exist_ok=True)
    os.execv(sys.executable, beat_command())
    return 0


def run_up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from service.auth import create_api_key, ensure_tenant
    from service.db import session_scope
    from service.errors import ServiceError
    from service.migrate import upgrade
    from service.settings import VAR, get_settings
    from service.submission import allowlist_entry

    demo = (VAR / "demo" / "models").resolve()
    os.environ.setdefault("FDA_LOCAL_INPUTS", "true")  # a laptop merges local folders (workers inherit this)
    os.environ.setdefault("FDA_EXAMPLE_MODELS", str(demo))  # the dashboard's example merges the demo models
    get_settings.cache_clear()
    settings = get_settings()
    try:
        allowed = [allowlist_entry(str(Path(folder).resolve())) for folder in args.allow or [os.getcwd()]]
    except ServiceError as exc:
        print(f"fdamerge: {exc}", file=sys.stderr)
        return 2
    if not args.no_demo and not (demo / "base").is_dir():
        from cli.demo import build

        build(demo)  # three tiny Llama checkpoints: the dashboard's example job runs on them
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:  # local folders named here (and the demo), any bucket
        tenant = ensure_tenant(session, "local", [*allowed, allowlist_entry(str(demo)), "s3://"])
        key = create_api_key(session, tenant, ["jobs:read", "jobs:write", "schedules:write", "admin"])
    workers = Supervisor([worker_command(), beat_command()])
    url = f"http://{args.host}:{args.port}"
    print(f"inputs allowed from: {', '.join(tenant.allowed_prefixes)}", flush=True)
    print(f"fda-merge is up: {url} (API docs at {url}/docs)\nAPI key (shown once): {key}", flush=True)
    try:
        return run_api(args)
    finally:
        workers.stop()


class Supervisor(threading.Thread):
    """Starts the embedded workers and restarts any that exits (a crashed worker loses no job: leases)."""

    def __init__(self, commands: list[list[str]], poll: float = 2.0) -> None:
        super().__init__(daemon=True, name="supervisor")
        self.commands, self.poll = commands, poll
        self.processes = [subprocess.Popen(command) for command in commands]
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopping.wait(self.poll):
            for index, process in enumerate(self.processes):
                if process.poll() is not None and not self.stopping.is_set():
                    print(f"fdamerge up: worker exited ({process.returncode}); restarting it", flush=True)
                    self.processes[index] = subprocess.Popen(self.commands[index])

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        stop_all(self.processes)


def stop_all(processes: list[subprocess.Popen], grace: float = 20.0) -> None:
    """Warm shutdown first (a running job is finished or handed back by its lease), then kill."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
