#!/usr/bin/env bash
# The README's test command: set up .venv, then lint, check import layering, type-check, test.
# Arguments go to pytest (e.g. scripts/test.sh -k mergekit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/mypy
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: the suite is missing or a filter matched nothing" >&2
fi
exit "$status"
