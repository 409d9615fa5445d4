#!/usr/bin/env python3
"""The project's commands, needing nothing but python3: each one sets up `.venv` first.

python3 tasks.py demo     ingest (and process) the sample documents on an embedded Postgres
python3 tasks.py test     run the whole test suite (installs chromium + chromium-driver when missing)
python3 tasks.py check    ruff lint + format check, mypy on shared/, import contracts
python3 tasks.py bench    run the benchmarks under bench/ (installs the `bench` extra too)
python3 tasks.py package  build the Lambda zips with the Serverless Framework (osls), offline
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
EXTRAS = ("all", "test")
# Extras a command needs beyond EXTRAS, installed only when that command runs.
COMMAND_EXTRAS = {"bench": ("bench",)}
STAMP = VENV / ".nexus-installed"
# The operator page's tests drive Debian's chromium through its chromedriver (tests/support/browser.py).
BROWSER_PACKAGES = ("chromium", "chromium-driver")


def _run(*args: str | Path, env: dict[str, str] | None = None) -> int:
    return subprocess.call([str(a) for a in args], cwd=ROOT, env=env)


def _installed_extras(pyproject_hash: str) -> set[str]:
    """The extras the stamp says were installed from this very pyproject.toml (none otherwise)."""
    if not STAMP.exists():
        return set()
    recorded, _, extras = STAMP.read_text().strip().partition(" ")
    return set(extras.split(",")) if recorded == pyproject_hash and extras else set()


def ensure_venv(extras: tuple[str, ...] = EXTRAS) -> None:
    """Create `.venv` and install the project with `extras` into it, again whenever
    pyproject.toml changes; extras installed earlier from the same pyproject.toml stay."""
    if not (BIN / "python").exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    pyproject_hash = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed = _installed_extras(pyproject_hash)
    if installed >= set(extras):
        return
    wanted = ",".join(sorted(installed | set(extras)))
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.check_call([*pip, "--upgrade", "pip"], cwd=ROOT)
    subprocess.check_call([*pip, "-e", f".[{wanted}]"], cwd=ROOT)
    STAMP.write_text(f"{pyproject_hash} {wanted}")


def _browser_paths() -> list[Path]:
    return [
        Path(os.environ.get("NEXUS_CHROMIUM") or "/usr/bin/chromium"),
        Path(os.environ.get("NEXUS_CHROMEDRIVER") or "/usr/bin/chromedriver"),
    ]


def ensure_browser() -> None:
    """Install Debian's chromium and chromium-driver when either is missing (apt-get, as root or
    through sudo; `apt-get update` first if the install fails). If that cannot be done, say so:
    the browser tests then fail, naming what is missing."""
    if all(path.exists() for path in _browser_paths()):
        return
    apt, sudo_path = shutil.which("apt-get"), shutil.which("sudo")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    sudo = [] if is_root else [sudo_path] if sudo_path else None
    if apt is None or sudo is None:
        print(
            "tasks.py: chromium and chromium-driver are missing and cannot be installed here (no apt-get, "
            "or not root and no sudo); install them, or set NEXUS_CHROMIUM and NEXUS_CHROMEDRIVER.",
            file=sys.stderr,
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, apt, "install", "-y", *BROWSER_PACKAGES]
    if subprocess.call(install, env=env) != 0:
        subprocess.call([*sudo, apt, "update"], env=env)
        subprocess.call(install, env=env)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    rest = argv[1:]
    if command not in {"demo", "test", "check", "bench", "nexus", "package"}:
        print(__doc__)
        return 0 if command == "help" else 2
    ensure_venv((*EXTRAS, *COMMAND_EXTRAS.get(command, ())))
    if command == "demo":
        return _run(BIN / "nexus", "demo", *rest)
    if command == "nexus":
        return _run(BIN / "nexus", *rest)
    if command == "test":
        ensure_browser()
        return _run(BIN / "python", "-m", "pytest", *rest)
    if command == "check":
        lint = _run(BIN / "ruff", "check", ".") or _run(BIN / "ruff", "format", "--check", ".")
        types = lint or _run(BIN / "python", "-m", "mypy", "--ignore-missing-imports", "shared")
        return types or _run(BIN / "lint-imports")
    if command == "package":
        env = {**os.environ, "SLS_TELEMETRY_DISABLED": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        return _run("npm", "ci", "--no-audit", "--no-fund") or _run("npx", "osls", "package", *rest, env=env)
    return _run(BIN / "python", "bench/run.py", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
