"""Benchmark parameter-space merges: `fdamerge merge` against mergekit 0.1.5's `mergekit-yaml`.

Builds (once) a Llama-style base model and two noisy "experts" from a LlamaConfig — ~60M parameters
in fp32 (`--size 60m`, the default) or ~1.1B in bf16 (`--size 1b`, TinyLlama-1.1B's shape) — writes
mergekit-format YAML configs for task_arithmetic and TIES, then runs both tools as whole processes,
alternating, and reports wall time and each child's own peak RSS (bench/measure.py).

Run:  .venv/bin/python bench/param_merge.py --repeats 3
      .venv/bin/python bench/param_merge.py --size 1b --repeats 1 --clean   # ~7 GB of checkpoints, deleted after
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors import safe_open  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache" / "param_merge"
BIN = Path(sys.executable).parent
FDAMERGE = BIN / "fdamerge"
MERGEKIT = BIN / "mergekit-yaml"
METHODS = ("task_arithmetic", "ties")
TOOLS = ("ours", "mergekit")
SEED = 1234
NOISE_STD = 0.01
N_EXPERTS = 2

SIZES = {
    "60m": dict(
        vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=2048, tie_word_embeddings=False, torch_dtype="float32",
    ),
    "1b": dict(  # TinyLlama-1.1B's shape: 1,100M parameters, grouped-query attention
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False, torch_dtype="bfloat16",
    ),
}  # fmt: skip
MODEL_CONFIG = SIZES["60m"]


def configure(size: str) -> None:
    """Point the module at one model size: its config and its own cache folder."""
    global CACHE, MODEL_CONFIG
    MODEL_CONFIG = SIZES[size]
    CACHE = REPO / "bench" / ".cache" / ("param_merge" if size == "60m" else f"param_merge_{size}")


def model_dirs() -> list[Path]:
    """Paths of the base model followed by the experts."""
    return [CACHE / "base"] + [CACHE / f"expert{i}" for i in range(1, N_EXPERTS + 1)]


def cache_is_valid() -> bool:
    """True when every model folder exists with weights and the config this script builds."""
    stamp = CACHE / "build.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != {"config": MODEL_CONFIG, "seed": SEED, "std": NOISE_STD}:
        return False
    return all((d / "config.json").exists() and any(d.glob("*.safetensors")) for d in model_dirs())


def build_models() -> None:
    """Build the base model in fp32 with a fixed seed, then save it and seeded noisy experts."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    torch.manual_seed(SEED)
    dtype = getattr(torch, str(MODEL_CONFIG["torch_dtype"]))
    model = LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG)).to(dtype)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dirs = model_dirs()
    model.save_pretrained(dirs[0], safe_serialization=True)
    for index, folder in enumerate(dirs[1:], start=1):
        generator = torch.Generator().manual_seed(SEED + index)
        with torch.no_grad():
            for name, param in model.state_dict().items():
                if param.is_floating_point():
                    noise = torch.randn(param.shape, generator=generator, dtype=param.dtype) * NOISE_STD
                    param.copy_(base_state[name] + noise)
        model.save_pretrained(folder, safe_serialization=True)
    (CACHE / "build.json").write_text(json.dumps({"config": MODEL_CONFIG, "seed": SEED, "std": NOISE_STD}))


def count_parameters(folder: Path) -> int:
    """Number of scalar parameters stored in a model folder's safetensors files."""
    total = 0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            names = handle.keys()  # safe_open handles are not iterable
            for key in names:
                total += _numel(handle.get_slice(key).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    """Product of a shape's dimensions."""
    n = 1
    for dim in shape:
        n *= dim
    return n


def folder_bytes(folder: Path) -> int:
    """Total size of the safetensors files in a folder."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def write_config(method: str) -> Path:
    """Write a mergekit-format YAML for `method` over the cached base and experts; return its path."""
    base, *experts = (str(d) for d in model_dirs())
    if method == "task_arithmetic":
        model_params, global_params = {"weight": 1.0}, {"lambda": 1.0}
    elif method == "ties":
        model_params, global_params = {"weight": 1.0, "density": 0.5}, {"lambda": 1.0, "normalize": True}
    else:
        raise ValueError(method)
    doc = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": e, "parameters": dict(model_params)} for e in experts],
        "parameters": global_params,
        "dtype": MODEL_CONFIG["torch_dtype"],
    }
    path = CACHE / f"{method}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def command_for(tool: str, config: Path, out: Path) -> list[str]:
    """The command line that runs `tool` on `config`, writing to `out`."""
    if tool == "ours":
        return [str(FDAMERGE), "merge", str(config), "--out", str(out), "--quiet"]
    # No tokenizer exists in these checkpoints; mergekit would otherwise try to reserialize one.
    return [str(MERGEKIT), str(config), str(out), "--no-copy-tokenizer", "--safe-serialization", "--quiet"]


def child_env(threads: int | None) -> dict[str, str]:
    """Environment shared by both tools: ours, plus HF_HUB_OFFLINE, plus OMP_NUM_THREADS if asked."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run `cmd` as a whole process; return (wall seconds, peak RSS GiB, exit status, tail of its output)."""
    return run_measured(cmd, env)


def max_abs_diff(a: Path, b: Path) -> tuple[float, str]:
    """Max |Δ| over all tensors of two safetensors model folders, plus a note on key mismatches."""
    tensors_a, tensors_b = load_tensors(a), load_tensors(b)
    note = ""
    if set(tensors_a) != set(tensors_b):
        only_a, only_b = sorted(set(tensors_a) - set(tensors_b)), sorted(set(tensors_b) - set(tensors_a))
        note = f" (keys only in ours: {only_a[:5]}, only in mergekit: {only_b[:5]})"
    if not tensors_a or not tensors_b:
        return float("nan"), f" (no safetensors output: ours {len(tensors_a)} tensors, mergekit {len(tensors_b)})"
    common = set(tensors_a) & set(tensors_b)
    note = f" ({len(common)} tensors compared)" + note
    worst = 0.0
    for key in common:
        ta, tb = tensors_a[key].float(), tensors_b[key].float()
        if ta.shape != tb.shape:
            note += f" (shape mismatch {key}: {tuple(ta.shape)} vs {tuple(tb.shape)})"
            continue
        worst = max(worst, (ta - tb).abs().max().item())
    return worst, note


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors from the safetensors files in a folder."""
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            names = handle.keys()  # safe_open handles are not iterable
            for key in names:
                out[key] = handle.get_tensor(key)
    return out


def bench_method(method: str, repeats: int, env: dict[str, str], scratch: Path) -> tuple[dict, str]:
    """Run both tools `repeats` times, alternating; return per-tool samples and the max |Δ| line."""
    config = write_config(method)
    samples: dict[str, list[tuple[float, float]]] = {tool: [] for tool in TOOLS}
    kept: dict[str, Path] = {}
    for rep in range(repeats):
        order = TOOLS if rep % 2 == 0 else TOOLS[::-1]
        for tool in order:
            out = scratch / f"{method}-{tool}-{rep}"
            wall, rss, code, tail = run_once(command_for(tool, config, out), env)
            print(
                f"  {method:16s} {tool:8s} run {rep + 1}/{repeats}: {wall:7.2f} s, {rss:5.2f} GiB, rc={code}",
                flush=True,
            )
            if code != 0:
                print(f"--- {tool} failed (rc={code}); output tail:\n{tail}\n---", flush=True)
                shutil.rmtree(out, ignore_errors=True)
                continue
            samples[tool].append((wall, rss))
            if tool not in kept:
                kept[tool] = out
            else:
                shutil.rmtree(out, ignore_errors=True)
    diff_line = compare_outputs(method, kept)
    for folder in kept.values():
        shutil.rmtree(folder, ignore_errors=True)
    return samples, diff_line


def compare_outputs(method: str, kept: dict[str, Path]) -> str:
    """Describe the max |Δ| between the first outputs of ours and mergekit."""
    if set(kept) != set(TOOLS):
        return f"{method}: max |Δ| ours vs mergekit: n/a (a tool produced no output)"
    worst, note = max_abs_diff(kept["ours"], kept["mergekit"])
    return f"{method}: max |Δ| ours vs mergekit over all tensors = {worst:.3e}{note}"


def summarize(samples: list[tuple[float, float]]) -> tuple[float, float, float, float] | None:
    """(median wall, min wall, max wall, median RSS) of a tool's samples, or None when empty."""
    if not samples:
        return None
    walls = [w for w, _ in samples]
    return statistics.median(walls), min(walls), max(walls), statistics.median(r for _, r in samples)


def table_rows(method: str, samples: dict) -> list[str]:
    """Markdown table rows for one method."""
    stats = {tool: summarize(samples[tool]) for tool in TOOLS}
    ours, theirs = stats["ours"], stats["mergekit"]
    rows = []
    for tool in TOOLS:
        s = stats[tool]
        if s is None:
            rows.append(f"| {method} | {tool} | failed | – | – | – | – |")
            continue
        wall_ratio = rss_ratio = "–"
        if tool == "ours" and ours and theirs:
            wall_ratio, rss_ratio = f"{ours[0] / theirs[0]:.2f}", f"{ours[3] / theirs[3]:.2f}"
        n = len(samples[tool])
        rows.append(
            f"| {method} | {tool} | {s[0]:.2f} (n={n}) | {s[1]:.2f}–{s[2]:.2f} | {s[3]:.2f} | {wall_ratio} | {rss_ratio} |"
        )
    return rows


def print_header(argv: list[str], n_params: int, disk: int) -> None:
    """Print the command line, machine description and model size."""
    import transformers

    print("command:", " ".join(shlex.quote(a) for a in [sys.executable, *argv]))
    print(
        f"machine: nproc={os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), "
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{platform.platform()}"
    )
    print(f"model: Llama-style {MODEL_CONFIG}")
    print(
        f"parameters: {n_params:,} per checkpoint; size on disk {disk / 2**20:.1f} MiB per checkpoint"
        f" ({MODEL_CONFIG['torch_dtype']})"
    )
    print(f"experts: {N_EXPERTS}, base + N(0, {NOISE_STD}^2) noise on every float parameter")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and method (default 3)")
    parser.add_argument("--size", choices=sorted(SIZES), default="60m", help="model size (default 60m, fp32; 1b: bf16)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the models even if cached")
    parser.add_argument("--threads", type=int, default=None, help="set OMP_NUM_THREADS for both tools")
    parser.add_argument("--clean", action="store_true", help="delete the built models afterwards (default: keep)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build or reuse the models, run the benchmark and print the report."""
    args = parse_args(argv)
    configure(args.size)
    if args.rebuild or not cache_is_valid():
        print("building models ...", flush=True)
        build_models()
    base = model_dirs()[0]
    print_header(sys.argv if argv is None else [__file__, *argv], count_parameters(base), folder_bytes(base))
    if args.threads:
        torch.set_num_threads(args.threads)
    env = child_env(args.threads)
    results: dict[str, tuple[dict, str]] = {}
    with tempfile.TemporaryDirectory(prefix="param_merge_", dir=CACHE) as scratch:
        for method in args.methods:
            results[method] = bench_method(method, args.repeats, env, Path(scratch))
    print()
    print(
        f"| method | tool | wall s (median of {args.repeats}) | min–max | peak RSS GiB (median) "
        "| ours/mergekit wall ratio | ours/mergekit RSS ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, (samples, _) in results.items():
        print("\n".join(table_rows(method, samples)))
    print()
    for _, diff_line in results.values():
        print(diff_line)
    print(
        f"(peak RSS is each child's own ru_maxrss, from a small launcher: bench/measure.py; this process: {_self_rss():.2f} GiB)"
    )
    if args.clean:
        shutil.rmtree(CACHE, ignore_errors=True)


def _self_rss() -> float:
    """Peak RSS of this benchmark process in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()
