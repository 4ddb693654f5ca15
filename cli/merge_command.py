"""`fdamerge merge CONFIG.yaml --out DIR`: a local merge with a progress bar and a summary line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cli.fda_report import describe_fda
from cli.progress import ProgressBar
from cli.sizes import format_bytes, parse_size


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("merge", help="merge checkpoints described by a YAML file (ours or mergekit's)")
    parser.add_argument("config", type=Path, help="merge YAML: method, base_model, models, parameters, dtype, seed")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument(
        "--shard-size", type=parse_size, default="5GB", help="largest output shard, e.g. 2GB (default 5GB)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (only once the merge succeeded)"
    )
    parser.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default $FDA_S3_ENDPOINT_URL)")
    parser.add_argument(
        "--anchor-cache", type=Path, default=None, help="FDA: folder of reusable anchors (content-addressed)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice; 1 when cores are shared)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (kill, systemctl stop, a closed terminal): unwinds like Ctrl+C, so the hidden
    staging folder is removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


def run(args: argparse.Namespace) -> int:
    import signal

    from fda_core.errors import FdaMergeError  # heavy imports after argument parsing, so --help is instant

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    try:
        return _merge(args)
    except (FdaMergeError, OSError) as exc:
        print(f"fdamerge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fdamerge: interrupted; no output written", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"fdamerge: {signal.Signals(stop.signum).name}: stopped; no output written", file=sys.stderr)
        return 128 + stop.signum


def _merge(args: argparse.Namespace) -> int:
    from fda_core.config import load_config, parse_config
    from fda_core.merge.run import MergeOptions, run_merge
    from service.settings import Settings, get_settings
    from service.sources import register_s3

    config = load_config(args.config)
    if args.seed is not None:
        config = parse_config({**config.model_dump(), "seed": args.seed}, where="--seed")
    settings = get_settings()
    if args.s3_endpoint_url:
        settings = Settings(**{**settings.model_dump(), "s3_endpoint_url": args.s3_endpoint_url})
    register_s3(settings)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = MergeOptions(args.device, args.shard_size, args.overwrite, args.anchor_cache)
    started = time.perf_counter()
    with ProgressBar(enabled=not args.quiet and sys.stderr.isatty()) as bar:
        result = run_merge(config, args.out, options, on_progress=bar.update)
    for warning in result.warnings:
        print(f"fdamerge: warning: {warning}", file=sys.stderr)
    if "fda" in result.metrics and not args.quiet:
        print(describe_fda(result.metrics["fda"]))
    size = sum(shard.bytes for shard in result.shards)
    print(
        f"merged {result.tensors} tensors ({result.parameters / 1e6:.1f}M parameters) of "
        f"{len(set(config.input_locations()))} inputs with {result.method} in {time.perf_counter() - started:.1f} s "
        f"-> {result.output_dir} ({len(result.shards)} shard{'s' if len(result.shards) > 1 else ''}, {format_bytes(size)})"
    )
    return 0
