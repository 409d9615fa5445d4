#!/usr/bin/env python3
"""Cold starts of each Lambda function with and without the bytecode the packaging step adds.

Lambda unpacks a function's zip into a read-only `/var/task`, so a module shipped without its
`.pyc` is compiled on every cold start. This builds each function's code as its zip holds it (the
function's extra installed by the runtime's Python with `pip --target --no-compile`, `main.py` at
the root) on this machine's architecture, then makes two copies:

- **source only**: what the zips held before `infra/serverless/bytecode.py` (no `__pycache__`);
- **with bytecode**: the same folder zipped, passed through `infra/serverless/bytecode.py` (as the
  Serverless plugin does), unzipped.

Each round starts a fresh interpreter of the runtime's version with `-I -B` (no bytecode is
written, as on the read-only `/var/task`) that imports `main` and then what the function loads
on its first call (`LAZY_IMPORTS` in tests/packaging/zip_smoke.py), timed inside; the variants
alternate. Needs Python 3.12 (found as bytecode.py finds it) and the package registries.

    python bench/bytecode_bench.py [--rounds 11]

Prints a Markdown table and writes bench/results/bytecode.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "bytecode.json"
RUNTIME_PYTHON = "3.12"
EXTRAS = {"ingest": "ingest", "process": "process", "gcal_refresh": "gcal"}
# The Lambda runtime provides boto3; serverless.yml's slimPatterns keep it out of the zips.
NOT_IN_ZIP = ("boto3", "botocore", "s3transfer")

PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
import main
imported = time.perf_counter()
for name in json.loads(sys.argv[2]):
    __import__(name)
first_call = time.perf_counter() - imported
print(json.dumps({"import_main_s": imported - started, "first_call_imports_s": first_call}))
"""


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_function(python: str, function: str, folder: Path) -> None:
    """The function's code as its zip holds it, for this machine's architecture, without bytecode."""
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    subprocess.run([*pip, "--target", str(folder), f".[{EXTRAS[function]}]"], cwd=ROOT, check=True)
    for name in NOT_IN_ZIP:
        for path in folder.glob(f"{name}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(folder / "bin", ignore_errors=True)
    shutil.copy(ROOT / "functions" / function / "main.py", folder / "main.py")
    leftovers = list(folder.rglob("__pycache__"))
    assert not leftovers, f"pip wrote bytecode: {leftovers[:3]}"


def with_bytecode(bytecode_tool: Path, source: Path, target: Path) -> None:
    """`source` zipped, through infra/serverless/bytecode.py, unzipped into `target`."""
    archive = target.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(source).as_posix())
    subprocess.run(
        [sys.executable, str(bytecode_tool), "--python-version", RUNTIME_PYTHON, "--require", str(archive)],
        check=True,
    )
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    archive.unlink()


def cold_start(python: str, folder: Path, lazy: list[str]) -> dict[str, float]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder)}
    started = time.perf_counter()
    done = subprocess.run(
        [python, "-I", "-B", "-c", PROBE, str(folder), json.dumps(lazy)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures | {"process_s": time.perf_counter() - started}


def measure(
    python: str, function: str, scratch: Path, rounds: int, tool: Path, lazy: list[str]
) -> dict[str, Any]:
    source = scratch / function / "source"
    build_function(python, function, source)
    compiled = scratch / function / "bytecode"
    with_bytecode(tool, source, compiled)
    for folder in (source, compiled):  # unmeasured: the OS's file cache warm for both
        cold_start(python, folder, lazy)
    runs: dict[str, list[dict[str, float]]] = {"source": [], "bytecode": []}
    for _ in range(rounds):
        runs["source"].append(cold_start(python, source, lazy))
        runs["bytecode"].append(cold_start(python, compiled, lazy))
    result: dict[str, Any] = {"function": function, "runs": runs}
    for variant, figures in runs.items():
        for key in ("import_main_s", "first_call_imports_s", "process_s"):
            result[f"{variant}_{key}"] = statistics.median(f[key] for f in figures)
        result[f"{variant}_total_s"] = statistics.median(
            f["import_main_s"] + f["first_call_imports_s"] for f in figures
        )
    return result


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"`{results['date_utc']}` · {results['machine']} · Python {results['python']} · "
        f"{results['rounds']} alternating rounds, medians; load at start: `{results['uptime_start']}`",
        "",
        "| function | import `main` + first-call imports, source only | with bytecode | saved | "
        "whole process (interpreter start included), source only / with bytecode |",
        "|---|---|---|---|---|",
    ]
    for r in results["functions"]:
        saved = r["source_total_s"] - r["bytecode_total_s"]
        lines.append(
            f"| {r['function']} | {r['source_total_s'] * 1000:.0f} ms "
            f"| {r['bytecode_total_s'] * 1000:.0f} ms | "
            f"{saved * 1000:.0f} ms ({saved / r['source_total_s']:.0%}) | "
            f"{r['source_process_s'] * 1000:.0f} / {r['bytecode_process_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--functions", nargs="+", choices=list(EXTRAS), default=list(EXTRAS))
    args = parser.parse_args(argv)
    tool = ROOT / "infra" / "serverless" / "bytecode.py"
    python = _load(tool, "nexus_bytecode").find_interpreter(RUNTIME_PYTHON)
    if python is None:  # not a failure of the code under test: say so and measure nothing
        print(f"skipped: this bench needs Python {RUNTIME_PYTHON} (the Lambda runtime's); none found.")
        return 0
    lazy_imports = _load(ROOT / "tests" / "packaging" / "zip_smoke.py", "zip_smoke").LAZY_IMPORTS
    results: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPU {platform.machine()}",
        "python": subprocess.run([python, "-V"], capture_output=True, text=True).stdout.split()[-1],
        "rounds": args.rounds,
        "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "functions": [],
    }
    with tempfile.TemporaryDirectory(prefix="nexus-bytecode-bench-") as scratch:
        for function in args.functions:
            print(f"{function}: building and timing", flush=True)
            results["functions"].append(
                measure(python, function, Path(scratch), args.rounds, tool, lazy_imports[function])
            )
    table = markdown(results)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results | {"markdown": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
