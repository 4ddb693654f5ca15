"""`fdamerge`: entry point. Each subcommand parses arguments and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys

# Before torch loads OpenMP: spinning worker threads made two busy processes on two cores 5–50×
# slower (the team's eval notes, shared/docs/eval-data.md); passive waiting avoids the collapse.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cli import client_commands, convert_command, keys_command, merge_command, migrate_command, service_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdamerge", description="Merge fine-tuned checkpoints of one base model.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge_command.add_parser(commands)
    convert_command.add_parser(commands)
    migrate_command.add_parser(commands)
    keys_command.add_parser(commands)
    service_commands.add_parsers(commands)
    client_commands.add_parsers(commands)
    client_commands.add_schedule_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help prints: a closed pipe can end it too
        return int(args.run(args))
    except BrokenPipeError:  # `fdamerge jobs list | head`: the reader left; say nothing, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not raise again
        return 141
    except KeyboardInterrupt:
        print("fdamerge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a user's mistake that slipped past a command's own handling: one line, no traceback
        from fda_core.errors import FdaMergeError
        from service.errors import ServiceError

        if not isinstance(exc, FdaMergeError | ServiceError | OSError | ValueError):
            raise  # a bug: the traceback is what we need
        print(f"fdamerge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
