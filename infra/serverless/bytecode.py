#!/usr/bin/env python3
"""Add CPython bytecode to Lambda zips, so a cold start does not compile every module again.

Lambda unpacks a zip into a read-only `/var/task`: a module without its `__pycache__/*.pyc` in the
zip is compiled from source on every cold start, and the result cannot be kept. For the ingest
function that is about a third of its import time (bench/README.md). pip cannot write bytecode
for the runtime while packaging, because bytecode is tied to the Python minor version (not to the
CPU architecture) and the packaging interpreter may be another version; so the zips are built
with `--no-compile` and this script adds the bytecode afterwards, compiled by an interpreter of
the runtime's version:

- `NEXUS_BYTECODE_PYTHON`, when set (an error if it is not that version);
- else `python3.X` on PATH, if it runs (a pyenv shim for a version not selected does not);
- else the newest `3.X.*` under pyenv's `versions/`.

With none of them the zips are left as they are and a warning says so (`--require` makes that an
error). The `.pyc` files are `unchecked-hash` ones: the sources under `/var/task` never change, so
the runtime need not read each source's timestamp or hash to trust them. Sources stay in the zip
(tracebacks show their lines). Re-running on a zip replaces the bytecode it added before.

usage: bytecode.py --python-version 3.12 [--require] ZIP [ZIP ...]

`infra/serverless/bytecode-plugin.js` runs this after serverless-python-requirements has put the
dependencies into each function's zip.
"""

from __future__ import annotations

import argparse
import os
import platform
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

INTERPRETER_VARIABLE = "NEXUS_BYTECODE_PYTHON"


def interpreter_version(python: str) -> str | None:
    """`major.minor` of an interpreter that runs, else None (missing, or a shim that refuses)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _pyenv_candidates(version: str) -> list[Path]:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")

    def patch(path: Path) -> tuple[int, ...]:
        parts = path.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    found = [p for p in (root / "versions").glob(f"{version}.*") if patch(p)[:2] == patch(Path(version))]
    return [p / "bin" / f"python{version}" for p in sorted(found, key=patch, reverse=True)]


def find_interpreter(version: str) -> str | None:
    """An interpreter of `version` (e.g. "3.12") that runs, looked for as the module docstring says.
    Raises ValueError when NEXUS_BYTECODE_PYTHON names one that is not that version."""
    chosen = os.environ.get(INTERPRETER_VARIABLE)
    if chosen:
        got = interpreter_version(chosen)
        if got != version:
            what = "not a Python that runs" if got is None else f"Python {got}"
            raise ValueError(
                f"{INTERPRETER_VARIABLE}={chosen} is {what}, but the functions run Python {version}."
            )
        return chosen
    on_path = shutil.which(f"python{version}")
    candidates = [on_path] if on_path else []
    candidates += [str(p) for p in _pyenv_candidates(version) if p.is_file()]
    return next((c for c in candidates if interpreter_version(c) == version), None)


def pyc_name(source: str) -> str:
    """Where this interpreter's import system looks for the bytecode of `source` (a zip path)."""
    path = PurePosixPath(source)
    return str(path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc")


def add_bytecode(archive: Path) -> tuple[int, list[str]]:
    """Rewrite `archive` with an unchecked-hash `.pyc` beside every `.py` this interpreter compiles;
    returns how many were compiled and the sources that failed (left without bytecode)."""
    suffix = f".{sys.implementation.cache_tag}.pyc"
    compiled, failed = 0, []
    with tempfile.TemporaryDirectory(dir=archive.parent) as scratch:
        rewritten = Path(scratch) / archive.name
        with zipfile.ZipFile(archive) as source, zipfile.ZipFile(rewritten, "w") as target:
            for info in source.infolist():
                if "/__pycache__/" in f"/{info.filename}" and info.filename.endswith(suffix):
                    continue  # written by an earlier run: replaced below
                data = source.read(info)
                target.writestr(info, data)
                if info.is_dir() or not info.filename.endswith(".py"):
                    continue
                bytecode = _compile(data, info.filename, Path(scratch))
                if bytecode is None:
                    failed.append(info.filename)
                    continue
                entry = zipfile.ZipInfo(pyc_name(info.filename), date_time=info.date_time)
                entry.external_attr = 0o644 << 16
                target.writestr(entry, bytecode, compress_type=zipfile.ZIP_DEFLATED)
                compiled += 1
        os.replace(rewritten, archive)
    return compiled, failed


def _compile(source: bytes, name: str, scratch: Path) -> bytes | None:
    src, pyc = scratch / "module.py", scratch / "module.pyc"
    src.write_bytes(source)
    try:
        py_compile.compile(
            str(src),
            cfile=str(pyc),
            dfile=name,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    except py_compile.PyCompileError:
        return None
    return pyc.read_bytes()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", required=True, help="the runtime's Python, e.g. 3.12")
    parser.add_argument("--require", action="store_true", help="fail when no such interpreter is found")
    parser.add_argument("zips", nargs="+", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if here != args.python_version:
        try:
            python = find_interpreter(args.python_version)
        except ValueError as exc:
            print(f"bytecode: {exc}", file=sys.stderr)
            return 2
        if python is None:
            print(
                f"bytecode: no Python {args.python_version} found (set {INTERPRETER_VARIABLE}); the zips "
                "ship without bytecode, so each cold start compiles every module.",
                file=sys.stderr,
            )
            return 2 if args.require else 0
        return subprocess.call([python, "-I", __file__, *argv])  # -I: no PYTHON* variables, no user site
    for archive in args.zips:
        compiled, failed = add_bytecode(archive)
        note = f", {len(failed)} left as source (do not compile: {', '.join(failed[:3])})" if failed else ""
        by = f"Python {platform.python_version()}"
        print(f"bytecode: {archive.name}: {compiled} modules compiled by {by}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
