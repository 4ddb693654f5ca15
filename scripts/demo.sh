#!/usr/bin/env bash
# Set up .venv, build three tiny Llama checkpoints under var/demo, and merge them with TIES.
# The CLI end to end without the service (the service: scripts/up.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/python -m cli.demo var/demo
