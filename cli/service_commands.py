"""`fdamerge api | worker | beat | webhooks | up | healthcheck`: the service's processes, configured by FDA_*.

Every role checks at start that the database has the schema its code needs (`fdamerge migrate` is
the only command that changes it). `up` is the embedded stack for a laptop: SQLite, ./var/storage
and the filesystem broker, one merge worker, the periodic tasks and the webhook sender, the API in
the foreground; it prints the URL and a first key, and on SIGTERM or Ctrl+C stops every process it
started (each in its own process group, which also dies if `up` itself is killed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
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
    control = worker.add_mutually_exclusive_group()
    control.add_argument(
        "--drain", action="store_true",
        help="control running merge workers instead: they finish their current job and take no more",
    )  # fmt: skip
    control.add_argument("--resume", action="store_true", help="drained workers take jobs again")
    worker.add_argument("--name", action="append", default=[], help="with --drain/--resume: only this worker")
    worker.add_argument("--no-wait", action="store_true", help="with --drain: do not wait for current jobs to end")
    worker.set_defaults(run=run_worker)
    beat = commands.add_parser("beat", help="periodic tasks (lease reaper, scheduler) and their small worker")
    beat.set_defaults(run=run_beat)
    webhooks = commands.add_parser("webhooks", help="the webhook sender's worker (its own slots)")
    webhooks.set_defaults(run=run_webhooks)
    up = commands.add_parser("up", help="API + worker + periodic tasks on SQLite, ./var storage, embedded broker")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--allow", action="append", default=[], metavar="FOLDER",
        help="repeatable: a local folder the first key may merge from (default: the current folder)",
    )  # fmt: skip
    up.add_argument("--no-demo", action="store_true", help="do not build the tiny demo checkpoints in var/demo")
    up.set_defaults(run=run_up)
    health = commands.add_parser("healthcheck", help="exit 0 if every fda-merge role running here is alive")
    health.set_defaults(run=run_healthcheck)


def schema_ok(database_url: str | None = None) -> bool:
    """Prints why not and returns False when the database is not at this code's schema."""
    from service.migrate import SchemaMismatch, check_schema
    from service.settings import get_settings

    try:
        check_schema(database_url or get_settings().database_url)
    except SchemaMismatch as exc:
        print(f"fdamerge: {exc}", file=sys.stderr)
        return False
    return True


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from service import health
    from service.observability import configure_json_logging

    if not schema_ok():
        return 2
    configure_json_logging()
    health.keep_fresh("api", port=args.port)
    uvicorn.run(
        "api.app:create_app", factory=True, host=args.host, port=args.port, log_config=None,
        timeout_graceful_shutdown=10,  # open event streams end; they do not hold a restart
    )  # fmt: skip
    return 0


def worker_command() -> list[str]:
    return [sys.executable, "-m", "celery", *WORKER, "-Q", "merge", "-c", "1", "--prefetch-multiplier", "1",
            "--max-tasks-per-child", "1", "-n", "merge@%h"]  # fmt: skip


def beat_command(schedule: str = "var/celerybeat-schedule") -> list[str]:
    """Beat and the reaper's and scheduler's worker: two slots, nothing slow shares them."""
    return [sys.executable, "-m", "celery", *WORKER, "-B", "-s", schedule, "-Q", "control", "-c", "2",
            "-n", "control@%h"]  # fmt: skip


def webhooks_command() -> list[str]:
    return [sys.executable, "-m", "celery", *WORKER, "-Q", "webhooks", "-c", "2", "-n", "webhooks@%h"]


def run_worker(args: argparse.Namespace) -> int:
    if args.drain or args.resume:
        return _control_workers(args)
    if not schema_ok():
        return 2
    os.execv(sys.executable, worker_command())
    return 0  # not reached


def _control_workers(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.workers import drain, resume

    broker = get_settings().broker_url
    names = args.name or None
    if args.resume:
        return resume(broker, names, print)
    return drain(broker, names, wait=not args.no_wait, out=print)


def run_beat(args: argparse.Namespace) -> int:
    if not schema_ok():
        return 2
    os.makedirs("var", exist_ok=True)
    os.execv(sys.executable, beat_command())
    return 0


def run_webhooks(args: argparse.Namespace) -> int:
    if not schema_ok():
        return 2
    os.execv(sys.executable, webhooks_command())
    return 0


def run_healthcheck(args: argparse.Namespace) -> int:
    from service.health import check

    healthy, lines = check()
    print("\n".join(lines))
    return 0 if healthy else 1


def run_up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from service.auth import create_api_key, ensure_tenant
    from service.db import session_scope
    from service.errors import ServiceError
    from service.settings import VAR, get_settings
    from service.submission import allowlist_entry

    demo = (VAR / "demo" / "models").resolve()
    os.environ.setdefault("FDA_LOCAL_INPUTS", "true")  # a laptop merges local folders (workers inherit this)
    os.environ.setdefault("FDA_EXAMPLE_MODELS", str(demo))  # the dashboard's example merges the demo models
    os.environ.setdefault("FDA_HEALTH_DIR", str((VAR / "health").resolve()))
    get_settings.cache_clear()
    settings = get_settings()
    try:
        allowed = [allowlist_entry(str(Path(folder).resolve())) for folder in args.allow or [os.getcwd()]]
    except ServiceError as exc:
        print(f"fdamerge: {exc}", file=sys.stderr)
        return 2
    if not _embedded_schema(settings.database_url):
        return 2
    if not args.no_demo and not (demo / "base").is_dir():
        from cli.demo import build

        build(demo)  # three tiny Llama checkpoints: the dashboard's example job runs on them
    with session_scope(settings.database_url) as session:  # local folders named here (and the demo), any bucket
        tenant = ensure_tenant(session, "local", [*allowed, allowlist_entry(str(demo)), "s3://"])
        key = create_api_key(session, tenant, ["jobs:read", "jobs:write", "schedules:write", "admin"])
    _stop_on_signals()
    workers = Supervisor([worker_command(), beat_command(), webhooks_command()], settings.shutdown_grace_seconds)
    url = f"http://{args.host}:{args.port}"
    print(f"inputs allowed from: {', '.join(tenant.allowed_prefixes)}", flush=True)
    print(f"fda-merge is up: {url} (API docs at {url}/docs)\nAPI key (shown once): {key}", flush=True)
    try:
        return run_api(args)
    finally:
        workers.stop()


def _embedded_schema(database_url: str) -> bool:
    """A database that does not exist yet is created at the newest schema (that is not changing one);
    an existing one must already be at it: `fdamerge migrate` upgrades it, explicitly."""
    from service.migrate import current_revision, upgrade

    if current_revision(database_url) is None and _empty(database_url):
        print("creating the job database (new)", flush=True)
        upgrade(database_url)
    return schema_ok(database_url)


def _empty(database_url: str) -> bool:
    from sqlalchemy import inspect

    from service.db import make_engine

    engine = make_engine(database_url, pooled=False)
    try:
        with engine.connect() as connection:
            return not inspect(connection).get_table_names()
    finally:
        engine.dispose()


def _stop_on_signals() -> None:
    """SIGTERM, SIGINT and SIGHUP end `up` through its `finally` (uvicorn handles them while it serves,
    then raises the signal again on its way out, which lands here)."""

    def stop(signum, frame) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child, between fork and exec)
    """Linux: the child gets SIGTERM if `up` dies, even by SIGKILL (no orphaned workers running jobs)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor(threading.Thread):
    """Starts the embedded workers, each in its own process group, and restarts any that exits (a
    crashed worker loses no job: leases)."""

    def __init__(self, commands: list[list[str]], grace: float = 30.0, poll: float = 2.0) -> None:
        super().__init__(daemon=True, name="supervisor")
        self.commands, self.poll, self.grace = commands, poll, grace
        self.processes = [self._spawn(command) for command in commands]
        self.stopping = threading.Event()
        self.start()

    @staticmethod
    def _spawn(command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(command, process_group=0, preexec_fn=_die_with_parent)

    def run(self) -> None:
        while not self.stopping.wait(self.poll):
            for index, process in enumerate(self.processes):
                if process.poll() is not None and not self.stopping.is_set():
                    print(f"fdamerge up: worker exited ({process.returncode}); restarting it", flush=True)
                    self.processes[index] = self._spawn(self.commands[index])

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        stop_all(self.processes, self.grace + 15)


def stop_all(processes: list[subprocess.Popen], grace: float = 45.0) -> None:
    """SIGTERM to each process group (a worker and its pool processes): a warm shutdown, whose running
    job is handed back after the workers' grace; whatever is left after `grace` is killed."""
    import time

    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        _signal_group(process, signal.SIGKILL)  # stragglers of the group (pool processes)
        process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
