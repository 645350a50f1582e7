"""scripts/ensure-venv.sh and scripts/ensure-deps.sh on a fresh Debian or Ubuntu, without root.

Each test copies the scripts into a throwaway repository and runs them with a fake Python
(``$PYTHON``) that plays Debian's interpreter: it answers the version it is told, makes a venv
whose python logs what pip was asked (nothing is downloaded or installed), or fails ``-m venv``
half-way as Debian's python3 does without python3-venv, leaving a ``.venv/bin/python`` with no
pip. apt-get and sudo are fakes that log their arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

FAKE_PYTHON = """#!/usr/bin/env bash
# Plays a Debian python: $FAKE_VERSION, a venv made or half-made, pip that logs.
echo "$0 $*" >> "$FAKE_LOG"
case "$1" in
  -c)
    case "$2" in
      *version_info*) echo "${FAKE_VERSION:-3.11}" ;;
      *sysconfig*) echo "$FAKE_SITE" ;;
      *ensurepip*) [ -z "${FAKE_NO_ENSUREPIP:-}" ] ;;
    esac
    ;;
  -m)
    case "$2" in
      venv)
        mkdir -p "$3/bin"
        if [ -n "${FAKE_VENV_FAILS:-}" ]; then
          # Debian without python3-venv: the interpreter is copied, then ensurepip is missing
          cp "$FAKE_BROKEN" "$3/bin/python"
          echo "The virtual environment was not created successfully because ensurepip is" >&2
          exit 1
        fi
        cp "$0" "$3/bin/python"
        ;;
      pip) exit 0 ;;
    esac
    ;;
esac
"""

BROKEN_VENV_PYTHON = """#!/usr/bin/env bash
# The .venv/bin/python a failed `python3 -m venv` leaves on Debian: no pip in it.
echo "$0 $*" >> "$FAKE_LOG"
if [ "$1" = -m ] && [ "$2" = pip ]; then
  echo "/work/.venv/bin/python: No module named pip" >&2
  exit 1
fi
[ "$1" = -c ] && echo 3.11
exit 0
"""

LOGGING_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
[ "$(basename "$0")" = sudo ] && exec "$@"
exit 0
"""


def write_executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def make_repo(tmp_path: Path) -> Path:
    """A repository holding the two scripts, a pyproject.toml and the constraints."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("ensure-venv.sh", "ensure-deps.sh"):
        shutil.copy(SCRIPTS / name, repo / "scripts" / name)
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.11"\n')
    (repo / "scripts" / "constraints.txt").write_text("")
    return repo


def run(
    repo: Path, script: str, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    fakes = tmp_path / "fakes"
    python = write_executable(fakes / "python3.11", FAKE_PYTHON)
    broken = write_executable(fakes / "broken-python", BROKEN_VENV_PYTHON)
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "PYTHON": str(python),
        "FAKE_LOG": str(tmp_path / "log"),
        "FAKE_SITE": str(site),
        "FAKE_BROKEN": str(broken),
        **env,
    }
    return subprocess.run(
        ["bash", str(repo / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def put_logging_apt_on_path(tmp_path: Path) -> str:
    """A PATH whose apt-get, sudo and systemctl only log their arguments."""
    bin_dir = tmp_path / "bin"
    for tool in ("apt-get", "sudo", "systemctl"):
        write_executable(bin_dir / tool, LOGGING_TOOL)
    return f"{bin_dir}:{os.environ['PATH']}"


def venv_was_built(repo: Path) -> bool:
    """The script got to its end: the stamp of a finished install is there."""
    return bool(list((repo / ".venv").glob(".stamp-*")))


def read_log(tmp_path: Path) -> str:
    log = tmp_path / "log"
    return log.read_text() if log.exists() else ""


def test_a_venv_left_without_pip_by_a_failed_venv_is_rebuilt_on_the_next_run(
    tmp_path: Path,
) -> None:
    # Given the .venv a failed `python3 -m venv` left on Debian: a python with no pip
    repo = make_repo(tmp_path)
    write_executable(repo / ".venv" / "bin" / "python", BROKEN_VENV_PYTHON)
    # When ensure-venv.sh runs again (python3-venv is there now)
    done = run(repo, "ensure-venv.sh", tmp_path)
    # Then it makes the venv again and installs the project with the new venv's pip
    assert done.returncode == 0, done.stderr
    assert "rebuilding .venv" in done.stderr
    log = read_log(tmp_path)
    assert "-m venv .venv" in log
    assert ".venv/bin/python -m pip install -q -c scripts/constraints.txt -e" in log
    assert (repo / ".venv" / "bin" / "python").read_text() != BROKEN_VENV_PYTHON
    assert venv_was_built(repo)


def test_a_failed_venv_leaves_no_venv_behind_and_names_the_package_to_install(
    tmp_path: Path,
) -> None:
    # Given Debian's python3 without its venv package
    repo = make_repo(tmp_path)
    # When ensure-venv.sh makes the venv
    done = run(repo, "ensure-venv.sh", tmp_path, FAKE_VENV_FAILS="1")
    # Then it fails naming the package, and leaves nothing a next run could take for a venv
    assert done.returncode == 1
    assert "install python3.11-venv" in done.stderr
    assert not (repo / ".venv").exists()
    # And once the package is there, the next run builds it
    again = run(repo, "ensure-venv.sh", tmp_path)
    assert again.returncode == 0, again.stderr
    assert venv_was_built(repo)


def test_a_python_older_than_3_11_is_refused_before_a_venv_is_made_naming_what_to_install(
    tmp_path: Path,
) -> None:
    # Given Ubuntu 22.04's python3 (3.10)
    repo = make_repo(tmp_path)
    # When ensure-venv.sh runs
    done = run(repo, "ensure-venv.sh", tmp_path, FAKE_VERSION="3.10")
    # Then it stops at once, saying which version it found and what to install and run
    assert done.returncode == 1
    assert "workerfleet needs Python >= 3.11" in done.stderr
    assert "is 3.10" in done.stderr
    assert "sudo apt-get install python3.11 python3.11-venv" in done.stderr
    assert "PYTHON=python3.11" in done.stderr
    assert not (repo / ".venv").exists()
    assert "-m venv" not in read_log(tmp_path)


def test_demo_deps_refuse_an_old_python_before_installing_anything(tmp_path: Path) -> None:
    # Given a python 3.10 and apt-get/sudo that log what they are asked
    repo = make_repo(tmp_path)
    path = put_logging_apt_on_path(tmp_path)
    # When `make demo-deps` runs its script
    done = run(repo, "ensure-deps.sh", tmp_path, "--demo", FAKE_VERSION="3.10", PATH=path)
    # Then it fails with the version message and apt-get was never called
    assert done.returncode == 1
    assert "workerfleet needs Python >= 3.11" in done.stderr
    assert "apt-get" not in read_log(tmp_path)


def test_demo_deps_install_the_venv_package_of_the_python_the_venv_is_made_with(
    tmp_path: Path,
) -> None:
    # Given a python 3.11 without ensurepip (no python3.11-venv), and no .venv yet
    repo = make_repo(tmp_path)
    path = put_logging_apt_on_path(tmp_path)
    # When `make demo-deps` runs its script
    done = run(repo, "ensure-deps.sh", tmp_path, "--demo", FAKE_NO_ENSUREPIP="1", PATH=path)
    # Then apt-get installs python3.11-venv with the other packages
    assert done.returncode == 0, done.stderr
    installs = [line for line in read_log(tmp_path).splitlines() if "apt-get install" in line]
    assert installs, read_log(tmp_path)
    assert "python3.11-venv" in installs[-1].split()
