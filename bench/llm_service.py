"""bench/quality_llm.py's `--part service`: the SmolLM2 merge through the embedded service, as a newcomer runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from llm_bench import FDAMERGE, ROOT, LlmBench, load_model

PROMPTS = ("def read_config(path):\n", "Der Professor sagt:", "Q: 123 + 456 = ?\nA:", "Definition: a young dog\nWord:")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_up(workdir: Path, allow: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FDA_")}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(workdir / "up.log", "w")
    command = [FDAMERGE, "up", "--port", str(port), "--allow", str(allow), "--no-demo"]
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        keys = [
            line.split()[-1] for line in (workdir / "up.log").read_text().splitlines() if line.startswith("API key")
        ]
        with contextlib.suppress(httpx.HTTPError):
            if keys and httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process, keys[0]
        time.sleep(0.5)
    _stop(process)
    raise SystemExit(f"fdamerge up did not come up:\n{(workdir / 'up.log').read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([FDAMERGE, *args], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"fdamerge {args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def service_merge(bench: LlmBench, config: dict[str, Any]) -> tuple[Path, float, float, float]:
    """(downloaded folder, seconds from submit to downloaded, seconds of `fdamerge merge` of the same
    config (and the compare), max |Δ| between the two)."""
    from safetensors.torch import load_file

    workdir = Path(tempfile.mkdtemp(prefix="llm-service-", dir=bench.root))
    port = _free_port()
    process, key = _start_up(workdir, bench.root.parent, port)
    server = ["--server", f"http://127.0.0.1:{port}"]
    try:
        env = {**os.environ, "FDA_API_KEY": key, "PYTHONPATH": str(ROOT)}
        (workdir / "merge.yaml").write_text(json.dumps(config))
        started = time.perf_counter()
        job = _yaml(_cli(["submit", str(workdir / "merge.yaml"), "--wait", *server], env))
        _cli(["jobs", "download", job["id"], "--out", str(workdir / "merged"), *server], env)
        seconds = time.perf_counter() - started
    finally:
        _stop(process)
    reference, cli_started = workdir / "cli", time.perf_counter()
    _cli(["merge", str(workdir / "merge.yaml"), "--out", str(reference), "--quiet"], {**os.environ})
    ours, theirs = (
        load_file(str(workdir / "merged" / "model.safetensors")),
        load_file(str(reference / "model.safetensors")),
    )
    if set(ours) != set(theirs):
        raise SystemExit(f"the service wrote other tensors than the CLI: {sorted(set(ours) ^ set(theirs))[:5]}")
    difference = max(float((ours[n].float() - theirs[n].float()).abs().max()) for n in ours)
    return workdir / "merged", seconds, time.perf_counter() - cli_started, difference


MERGEKIT_METHODS = {  # mergekit-format: the same merges as the quality table's TA λ 0.5 and TIES density 0.5
    "task_arithmetic": ({"weight": 1.0}, {"lambda": 0.5}),
    "ties": ({"weight": 1.0, "density": 0.5}, {"lambda": 1.0, "normalize": True}),
}


def against_mergekit(bench: LlmBench, threads: int) -> list[tuple[str, str, float, float, float]]:
    """(method, tool, wall s, peak RSS GiB, max |Δ| ours vs mergekit) on the four full SmolLM2 experts."""
    from measure import run_measured
    from param_merge import max_abs_diff

    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    scratch = Path(tempfile.mkdtemp(prefix="llm-mergekit-", dir=bench.root))
    experts = [str(bench.expert(i, "full")) for i in range(len(bench.names))]
    for method, (per_model, shared) in MERGEKIT_METHODS.items():
        doc: dict[str, Any] = {"merge_method": method, "base_model": str(bench.base), "parameters": shared}
        doc["dtype"] = "float32"
        doc["models"] = [{"model": e, "parameters": per_model} for e in experts]
        config = scratch / f"{method}.yaml"
        config.write_text(json.dumps(doc))
        outs = {tool: scratch / f"{method}-{tool}" for tool in ("ours", "mergekit")}
        commands = {
            "ours": [FDAMERGE, "merge", str(config), "--out", str(outs["ours"]), "--quiet", "--threads", str(threads)],
            "mergekit": [str(Path(FDAMERGE).with_name("mergekit-yaml")), str(config), str(outs["mergekit"])]
            + ["--safe-serialization", "--quiet"],
        }
        figures = {tool: run_measured(command, env=env) for tool, command in commands.items()}
        for tool, (_, _, rc, tail) in figures.items():
            if rc != 0:
                raise SystemExit(f"{tool} {method} failed:\n{tail}")
        worst, _ = max_abs_diff(outs["ours"], outs["mergekit"])
        rows += [(method, tool, figures[tool][0], figures[tool][1], worst) for tool in commands]
    return rows


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def generate_samples(folder: Path, threads: int) -> list[tuple[str, str]]:
    from transformers import AutoTokenizer

    model, tok = load_model(folder, threads).eval(), AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if "lm_head.weight" in _names(folder) or not model.config.tie_word_embeddings:
        raise SystemExit("the merge untied SmolLM2's embeddings")
    samples = []
    with torch.no_grad():
        for prompt in PROMPTS:
            inputs = tok(prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=tok.eos_token_id)
            samples.append((prompt, str(tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))))
    return samples


def _names(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return set(handle.keys())
