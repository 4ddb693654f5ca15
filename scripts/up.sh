#!/usr/bin/env bash
# Set up .venv and run the service on its embedded defaults: SQLite (var/fdamerge.db), a local
# storage folder (var/storage) and the filesystem broker; API + worker + reaper in one command.
# It prints the URL and a first API key. Extra arguments go to `fdamerge up` (e.g. --port 8080).
# The package is reinstalled only when pyproject.toml changed; the schema is upgraded by an explicit
# `fdamerge migrate` (no role changes it: each refuses a database at another revision).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fdamerge migrate
exec .venv/bin/fdamerge up "$@"
