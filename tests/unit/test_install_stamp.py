"""`scripts/up.sh` reinstalls the package only when what it installs from changed (issue 12: `up` took
~50 s reinstalling on every start). Run in a copy of the scripts with a fake interpreter whose pip
records its calls: nothing is really installed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from tests.support.cli import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
# -V: the version; -m pip: recorded (an editable install also puts the fdamerge command in place); -c: ok
here="$(cd "$(dirname "$0")" && pwd)"
case "$1" in
  -V) echo "Python ${FAKE_PYTHON_VERSION:-3.11.9}" ;;
  -m) if [ "$2" = pip ]; then
        echo "${*:3}" >> "$PIP_LOG"
        if [[ " $* " == *" -e "* ]]; then
          printf '#!/usr/bin/env bash\\necho "fdamerge $*" >> "$PIP_LOG"\\n' > "$here/fdamerge"
          chmod +x "$here/fdamerge"
        fi
      fi ;;
esac
exit 0
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make_copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "scripts/setup.sh", "scripts/up.sh"):
        shutil.copy(REPO / name, copy / name)
    python = executable(copy / ".venv" / "bin" / "python", FAKE_PYTHON)
    fake_bin = tmp_path / "bin"
    executable(fake_bin / "apt-get", '#!/usr/bin/env bash\necho "apt-get $*" >> "$PIP_LOG"\n')  # never the real one
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}", "HOME": str(tmp_path), "PYTHON": str(python),
        "PIP_LOG": str(tmp_path / "pip.log"),
    }  # fmt: skip
    return copy, env


def run(copy: Path, env: dict[str, str], script: str = "setup.sh", *args: str, **extra: str) -> list[str]:
    """The script's pip (and fdamerge) calls."""
    log = Path(env["PIP_LOG"])
    log.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", f"scripts/{script}", *args], cwd=copy, env={**env, **extra}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line for line in log.read_text().splitlines() if not line.startswith("apt-get")] if log.exists() else []


def installs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("install")]


def test_the_package_is_installed_once_then_only_when_what_it_installs_from_changes(tmp_path: Path) -> None:
    copy, env = make_copy(tmp_path)
    assert installs(run(copy, env)) == ["install --quiet --disable-pip-version-check -e ."]
    assert (copy / ".venv" / ".fdamerge-installed").is_file()
    assert installs(run(copy, env)) == []  # nothing changed: no install
    with open(copy / "pyproject.toml", "a") as pyproject:
        pyproject.write("\n# a new dependency\n")
    assert len(installs(run(copy, env))) == 1  # pyproject.toml changed
    assert installs(run(copy, env)) == []
    assert len(installs(run(copy, env, FAKE_PYTHON_VERSION="3.12.1"))) == 1  # another interpreter
    (copy / ".venv" / "bin" / "fdamerge").unlink()
    assert len(installs(run(copy, env, FAKE_PYTHON_VERSION="3.12.1"))) == 1  # the install was lost
    with open(copy / "scripts" / "setup.sh", "a") as script:
        script.write("\n# the script itself changed\n")
    assert len(installs(run(copy, env, FAKE_PYTHON_VERSION="3.12.1"))) == 1


def test_the_test_install_counts_for_the_plain_one_and_up_sh_starts_without_installing(tmp_path: Path) -> None:
    copy, env = make_copy(tmp_path)
    assert installs(run(copy, env, "setup.sh", "test"))[0].endswith("-e .[test]")
    assert installs(run(copy, env, "setup.sh", "test")) == []
    assert installs(run(copy, env)) == []  # .[test] includes the package: no second install
    assert run(copy, env, "up.sh", "--port", "8123") == ["fdamerge migrate", "fdamerge up --port 8123"]
