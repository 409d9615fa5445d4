#!/usr/bin/env python3
"""Run the benchmarks: `bench/<name>_bench.py` for each NAME given, or every `*_bench.py` here.

    python bench/run.py                 # all of them, in name order
    python bench/run.py ingest          # bench/ingest_bench.py
    python bench/run.py ingest -- --requests 5000   # arguments after `--` go to each bench

Each bench runs in its own process with this interpreter; the exit status is non-zero when any fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SUFFIX = "_bench.py"


def available() -> dict[str, Path]:
    """Bench name → file, for every `*_bench.py` beside this file."""
    return {path.name.removesuffix(SUFFIX): path for path in sorted(BENCH_DIR.glob(f"*{SUFFIX}"))}


def main(argv: list[str]) -> int:
    names, passthrough = argv, []
    if "--" in argv:
        split = argv.index("--")
        names, passthrough = argv[:split], argv[split + 1 :]
    benches = available()
    if any(name in ("-h", "--help") for name in names):
        print(__doc__)
        print("available:", ", ".join(benches) or "none")
        return 0
    unknown = [name for name in names if name not in benches]
    if unknown:
        print(
            f"no bench named {', '.join(unknown)}; available: {', '.join(benches) or 'none'}", file=sys.stderr
        )
        return 2
    failed = []
    for name in names or list(benches):
        print(f"== {name} ({benches[name].relative_to(BENCH_DIR.parent)})", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(benches[name]), *passthrough], cwd=BENCH_DIR.parent)
        outcome = "ok" if code == 0 else f"failed (exit {code})"
        print(f"== {name}: {outcome} in {time.monotonic() - started:.0f} s")
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
