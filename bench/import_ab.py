#!/usr/bin/env python3
"""Cold import of each function's handler plus its first-call modules, two source trees alternating.

    .venv/bin/python bench/import_ab.py OLD_TREE NEW_TREE [--rounds 13]

For each round, function and tree, a fresh `python -I` in that tree imports `functions/<name>/main.py`
and then the modules the function loads on its first call (`LAZY_IMPORTS` in that tree's
tests/packaging/zip_smoke.py), and reports the time inside the process. Bytecode is cached under
one private prefix (the first round warms it and is not counted), so the figures are imports, not
compiles. Trees alternate run by run so the machine's load falls on both alike; prints medians.
Make OLD_TREE with `git worktree add --detach /tmp/old <commit>`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FUNCTIONS = ("ingest", "process", "gcal_refresh")
CHILD = """
import importlib, os, sys, time
sys.path.insert(0, '.')
started = time.perf_counter()
sys.path.insert(0, 'functions/{name}')
import main
sys.path.insert(0, 'tests/packaging')
from zip_smoke import LAZY_IMPORTS
for module in LAZY_IMPORTS['{name}']:
    importlib.import_module(module)
elapsed_ms = (time.perf_counter() - started) * 1000
import shared
assert shared.__file__.startswith(os.getcwd()), shared.__file__
print(elapsed_ms)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--rounds", type=int, default=13)
    args = parser.parse_args()
    times: dict[tuple[Path, str], list[float]] = {(t, f): [] for t in args.trees for f in FUNCTIONS}
    with tempfile.TemporaryDirectory() as cache:
        for round_ in range(args.rounds):
            for name in FUNCTIONS:
                for tree in args.trees:
                    command = [sys.executable, "-I", "-X", f"pycache_prefix={cache}"]
                    done = subprocess.run(
                        [*command, "-c", CHILD.format(name=name)],
                        cwd=tree,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    if round_:
                        times[(tree, name)].append(float(done.stdout.split()[-1]))
    print("| function | " + " | ".join(str(t) for t in args.trees) + " |")
    print("|---|" + "---|" * len(args.trees))
    for name in FUNCTIONS:
        cells = " | ".join(f"{statistics.median(times[(t, name)]):.1f} ms" for t in args.trees)
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
