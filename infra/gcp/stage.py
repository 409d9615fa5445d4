#!/usr/bin/env python3
"""Stage each function as a Cloud Functions (gen2) source folder: build/gcp/<function>/.

Cloud Functions builds a Python function from one folder holding `main.py` and
`requirements.txt`. Ours import the top-level `shared` package, so each staged folder gets:

- `main.py`, copied from functions/<function>/main.py (its functions-framework targets);
- `shared/`, copied from the repo (Python files only; not the CLI and local tools, which no
  function runs);
- `requirements.txt`, written from pyproject.toml: the core dependencies, the function's own
  extra and functions-framework, so pyproject stays the only list of dependencies.

    python3 infra/gcp/stage.py [--out build/gcp] [FUNCTION ...]

Prints each staged folder. Needs Python 3.11+ (tomllib) and nothing else. The functions and their
extras come from `shared/runtime/functions.py`, the one list of functions.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from shared.runtime.functions import FUNCTIONS  # noqa: E402  (the repo's own package, found above)

# function folder → its extra in pyproject.toml
EXTRAS = {function.name: function.extra for function in FUNCTIONS}
LOCAL_ONLY = frozenset({"cli", "local"})  # shared/ sub-packages no function imports
FRAMEWORK = "functions-framework"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements_for(function: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The function's requirement lines: core + its extra + functions-framework (as pinned in `local`)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    framework = [r for extra in extras.values() for r in extra if _name(r) == FRAMEWORK][:1] or [FRAMEWORK]
    lines = [*project["dependencies"], *extras[EXTRAS[function]], *framework]
    return list(dict.fromkeys(lines))


def stage(function: str, out: Path) -> Path:
    """Write build/gcp/<function>/ afresh and return it."""
    target = out / function
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(ROOT / "functions" / function / "main.py", target / "main.py")
    shutil.copytree(
        ROOT / "shared",
        target / "shared",
        ignore=lambda folder, names: {
            n
            for n in names
            if n == "__pycache__" or n.endswith(".pyc") or (Path(folder).name == "shared" and n in LOCAL_ONLY)
        },
    )
    header = f"# Written by infra/gcp/stage.py from pyproject.toml (extra {EXTRAS[function]}); do not edit.\n"
    (target / "requirements.txt").write_text(header + "\n".join(requirements_for(function)) + "\n")
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("functions", nargs="*", metavar="FUNCTION", help=f"default: {', '.join(EXTRAS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gcp")
    args = parser.parse_args(argv)
    unknown = [f for f in args.functions if f not in EXTRAS]
    if unknown:
        parser.error(f"unknown function {unknown[0]!r}; choose from {', '.join(EXTRAS)}")
    for function in args.functions or list(EXTRAS):
        print(stage(function, args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
