"""The API under hostile submits: its peak RSS and /healthz latency while each hostile case of issue #11
arrives in a loop, against the same with ordinary submits.

One `uvicorn api.app:create_app` process (SQLite, local inputs on, as `fdamerge up` runs it), submit-time
preflight on. For --seconds per phase, --clients loops POST merge jobs (ordinary: a valid TIES merge of
tiny local checkpoints, so every header is read; hostile: the cases below, round robin) while a prober
GETs /healthz every 50 ms and the API's RSS is sampled every 20 ms. Each body is sent once before the
clock starts (imports happen then). The phases run in separate API processes, so neither inherits the
other's heap.

Run:  .venv/bin/python bench/api_hostile.py [--seconds 20] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from service.auth import create_api_key, ensure_tenant  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from tests.support import hostile  # noqa: E402
from tests.support.services import free_port  # noqa: E402
from tests.support.tiny_models import make_family  # noqa: E402


def hostile_cases(inputs: Path, base: Path, experts: list[Path]) -> dict[str, str]:
    """name → raw JSON body (raw, so NaN and 1e309 go over the wire as a client could send them)."""
    ok = [str(e) for e in experts]

    def fda(folder: Path, **parameters) -> str:
        return json.dumps(hostile.fda_body(folder, experts, **parameters))

    def with_expert(folder: Path) -> str:
        return json.dumps(hostile.ta_body(str(base), [ok[0], str(folder)]))

    inflated = hostile.copy_with_config(
        base, inputs / "inflated", hidden_size=8192, intermediate_size=28672, vocab_size=128_000, num_attention_heads=64
    )
    deep = hostile.copy_with_config(base, inputs / "deep", num_hidden_layers=300_000)
    nested = hostile.copy_with_config(base, inputs / "nested")
    (nested / "config.json").write_text(hostile.nested_json())
    fifo = inputs / "fifo.safetensors"
    if not fifo.exists():
        os.mkfifo(fifo)
    cases = {
        "config.json 167 B → 8k hidden (FDA)": fda(inflated),
        "config.json 300,000 layers (FDA)": fda(deep),
        "config.json nested 100k deep (FDA)": fda(nested),
        "parameters.tokens 1e9 (FDA)": fda(base, tokens=1_000_000_000),
        "parameters.anchors 1e9 (FDA)": fda(base, anchors=1_000_000_000),
        "wudi steps 2^63": json.dumps(hostile.ta_body(str(base), ok, method="wudi", parameters={"steps": 2**63})),
        "33,820 models": json.dumps(hostile.ta_body("/m", ["/m"] * 33_820)),
        "weight NaN, 1e309": json.dumps(hostile.ta_body(str(base), ok)).replace(
            '"models": [{"model"', '"models": [{"weight": NaN, "model"', 1
        ),
        "input /dev/zero": with_expert(Path("/dev/zero")),
        "input a FIFO": with_expert(fifo),
    }
    for name in hostile.HEADERS:
        folder = hostile.folder_with(inputs, f"h-{name}", hostile.HEADERS[name](), b"\0" * 4)
        cases[f"header: {name}"] = with_expert(folder)
    million = hostile.folder_with(inputs, "million", hostile.zero_size_tensors_header(1_000_000))
    cases["header: 1,000,000 zero-size tensors"] = with_expert(million)
    return cases


def ordinary_body(base: Path, experts: list[Path]) -> str:
    return json.dumps({**hostile.ta_body(str(base), [str(e) for e in experts]), "method": "ties"})


async def submitter(url: str, key: str, bodies: list[tuple[str, str]], stop_at: float, codes: Counter) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        index = 0
        while time.monotonic() < stop_at:
            name, body = bodies[index % len(bodies)]
            index += 1
            try:
                response = await http.post("/v1/merge-jobs", content=body.encode())
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1
                continue
            codes[response.status_code] += 1
            if response.status_code >= 500:
                print(f"  {name}: {response.status_code} {response.text[:200]}", file=sys.stderr)
            if response.status_code == 202:  # keep the tenant under its queue quota: cancel what was accepted
                await http.post(f"/v1/merge-jobs/{response.json()['id']}/cancel")


async def prober(url: str, stop_at: float, latencies: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await http.get("/healthz")
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)


def sample_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], process.memory_info().rss)
        except psutil.Error:
            return
        time.sleep(0.02)


def start_api(directory: Path, database: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ, "FDA_DATABASE_URL": database, "FDA_LOCAL_INPUTS": "true", "OMP_NUM_THREADS": "1",
        "FDA_STORAGE_URL": str(directory / "storage"), "FDA_CACHE_DIR": str(directory / "cache"),
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    api = subprocess.Popen(command, cwd=directory, env=env)  # the embedded broker writes under ./var
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return api, url
        except httpx.HTTPError:
            time.sleep(0.2)
    api.kill()
    raise SystemExit("the API did not come up")


def phase(directory: Path, database: str, key: str, bodies: list[tuple[str, str]], args) -> dict:
    api, url = start_api(directory, database)
    try:
        warm = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        for _, body in bodies:  # imports (transformers' model classes, torch's meta device) happen once, here
            warm.post("/v1/merge-jobs", content=body.encode(), headers={"Content-Type": "application/json"})
        idle = psutil.Process(api.pid).memory_info().rss
        peak, stop = [idle], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(api.pid, stop, peak), daemon=True)
        sampler.start()
        codes: Counter = Counter()
        latencies: list[float] = []

        async def run() -> None:
            stop_at = time.monotonic() + args.seconds
            loops = [submitter(url, key, bodies, stop_at, codes) for _ in range(args.clients)]
            await asyncio.gather(prober(url, stop_at, latencies), *loops)

        asyncio.run(run())
        stop.set()
        sampler.join()
        alive = api.poll() is None and httpx.get(f"{url}/healthz").status_code == 200
        return {"idle": idle, "peak": peak[0], "codes": codes, "latencies": latencies, "alive": alive}
    finally:
        api.terminate()
        api.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="fda-hostile-"))
    models = directory / "models"
    base, experts = make_family(models, "llama")
    inputs = directory / "inputs"
    inputs.mkdir()
    database = f"sqlite:///{directory / 'api.db'}"
    upgrade(database)
    with session_scope(database) as session:
        key = create_api_key(session, ensure_tenant(session, "acme", [str(models.resolve()), str(inputs.resolve())]))
    hostile_bodies = list(hostile_cases(inputs, base, experts).items())
    results = {
        "ordinary": phase(directory, database, key, [("ordinary", ordinary_body(base, experts))], args),
        f"hostile ({len(hostile_bodies)} cases, round robin)": phase(directory, database, key, hostile_bodies, args),
    }
    print(f"\ncommand: python bench/api_hostile.py --seconds {args.seconds:g} --clients {args.clients}")
    print(
        "| submits | requests | status codes | API RSS idle → peak (MiB) | /healthz p50 ms | p99 ms | max ms | API up after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        cuts = statistics.quantiles(result["latencies"], n=100)
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(result["codes"].items(), key=str))
        print(
            f"| {name} | {sum(result['codes'].values())} | {codes} | {result['idle'] / 2**20:.0f} → "
            f"{result['peak'] / 2**20:.0f} | {cuts[49] * 1e3:.1f} | {cuts[98] * 1e3:.1f} "
            f"| {max(result['latencies']) * 1e3:.0f} | {'yes' if result['alive'] else 'NO'} |"
        )
    print("\nhostile cases: " + "; ".join(name for name, _ in hostile_bodies))


if __name__ == "__main__":
    main()
