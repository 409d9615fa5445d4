"""The `nexus` command: migrate, ingest, status, demo (and the rest as they land).

With no DATABASE_URL (and no Supabase settings) every command uses an embedded Postgres with
pgvector, its data under `.nexus/` (or NEXUS_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.cli.arguments import parse_uuid
from shared.config import Settings, get_settings
from shared.errors import NexusError
from shared.http.problems import ProblemError
from shared.local.database import database_url, open_store, uses_supabase_api

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


class CommandError(NexusError):
    """A command cannot do what was asked; the message says why."""


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    if uses_supabase_api(settings):
        raise CommandError("nexus migrate needs DATABASE_URL; with the Supabase CLI run 'supabase db push'.")
    from shared.store.migrations import migrate

    applied = migrate(database_url(settings))
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {name}" for name in applied))
    if not applied:
        print("database is up to date")
    return 0


def _print_skip(path: Path, reason: str) -> None:
    print(f"skipped {path}: {reason}", file=sys.stderr)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        return _ingest(args, settings, store)
    finally:
        store.close()


def _ingest(args: argparse.Namespace, settings: Settings, store: Any) -> int:
    if args.create_client:
        store.ensure_client(args.client_id)
    from shared.ingest.files import ingest_files

    results = ingest_files(
        store,
        [Path(p) for p in args.paths],
        args.client_id,
        args.source,
        max_item_tokens=settings.max_item_tokens,
        max_file_bytes=settings.max_file_bytes,
        on_skip=_print_skip,
    )
    for path, result in results:
        state = "duplicate" if result.duplicate else ("updated" if result.updated else "new")
        print(f"{result.item_id}  {state:9}  {path}")
    print(f"{len(results)} item(s) ingested for client {args.client_id}")
    return 0


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m ago"


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        status = store.status()
    finally:
        store.close()
    if args.json:
        from shared.local.overview import status_json  # the operator page's /api/status prints it too

        print(status_json(status))
        return 0
    counts = status.get("counts", {})
    for name in ("pending", "processing", "done", "failed"):
        print(f"{name:>10}  {counts.get(name, 0)}")
    age = status.get("oldest_pending_age_seconds")
    print(
        f"oldest pending: {_age(age)} ({status.get('oldest_pending_at')})"
        if age is not None
        else "oldest pending: -"
    )
    hour, chunks = status.get("processed_last_hour", 0), status.get("chunks", 0)
    waiting = status.get("chunks_awaiting_index", 0)
    print(f"processed in the last hour: {hour}; chunks: {chunks} ({waiting} awaiting the vector index)")
    fresh = status.get("freshness") or {}
    if fresh.get("done_in_window"):
        p50, p95 = float(fresh["ingest_to_done_p50_seconds"]), float(fresh["ingest_to_done_p95_seconds"])
        line = f"ingest to done, last hour: p50 {p50:.1f} s, p95 {p95:.1f} s"
        if fresh.get("indexed_in_window"):
            p50, p95 = (
                float(fresh["ingest_to_indexed_p50_seconds"]),
                float(fresh["ingest_to_indexed_p95_seconds"]),
            )
            line += f"; to the vector index: p50 {p50:.1f} s, p95 {p95:.1f} s"
        print(line)
    for provider in status.get("providers", []):
        why = "has no quota left (insufficient_quota)" if provider["state"] == "quota" else "is failing"
        print(
            f"claiming paused: {provider['provider']} {why} since {provider['opened_at']}; "
            f"next probe at {provider['probe_at']}; last error: {provider['last_error']}"
        )
    from shared.cli.usage import budget_line

    for budget in status.get("budgets", []):
        if budget.get("over_budget"):
            print(f"waiting for budget: {budget_line(budget)}")
    deferred = status.get("deferred_by_provider", 0)
    if deferred:
        print(f"waiting on the provider: {deferred} item(s), no attempt counted")
    for failure in status.get("recent_failures", []):
        print(f"failed {failure['id']} (attempt {failure['attempts']}): {failure['last_error']}")
    return 0


def process_all(settings: Settings, store: Any, item_id: uuid.UUID | None = None, quiet: bool = False) -> Any:
    """Process one item, or everything claimable, with a progress bar."""
    from shared.cli.progress import progress_bar
    from shared.process import items_to_process
    from shared.process import process_all as run

    if item_id is not None:
        return run(settings, store, item_id)
    with progress_bar("processing", items_to_process(store), disabled=quiet) as advance:
        return run(settings, store, progress=advance)


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        return _process(args, settings, store)
    finally:
        store.close()


def _process(args: argparse.Namespace, settings: Settings, store: Any) -> int:
    report = process_all(settings, store, args.item)
    summary = report.as_dict()
    print(
        f"{summary['done']} done, {summary['failed']} failed, {summary['chunks']} chunks "
        f"({summary['embedded_chunks']} embedded, {summary['embedded_tokens']} tokens; the rest reused)"
    )
    if summary["generation_chunks"]:
        print(
            f"{summary['generation_chunks']} vectors stored for other embedding generations "
            f"({summary['generation_embedded']} embedded; the rest reused)"
        )
    waiting = sum(int(b.get("waiting_items") or 0) for b in store.client_budgets() if b.get("over_budget"))
    if waiting:
        print(f"{waiting} item(s) wait for their client's monthly budget (nexus budget show)")
    if args.item is not None and not report.claimed:
        print(
            f"item {args.item} needed no processing (already done, leased elsewhere, unknown, "
            "or its client is at its monthly budget)"
        )
    return 1 if report.failed else 0


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from shared.search.service import search

    store = open_store(settings)
    try:
        hits = search(store, settings, args.query, args.k, args.client_id, args.mode)
    finally:
        store.close()
    if args.json:
        print(json.dumps([hit.as_dict() for hit in hits], ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.content.split())[:160]
        similarity = "  -  " if hit.similarity is None else f"{hit.similarity:.3f}"
        where = " › ".join(hit.headings)
        if hit.page is not None:
            where = f"p. {hit.page}" + (f" · {where}" if where else "")
        print(f"{rank:>2}. {similarity}  {hit.source}  [{hit.chunk_index}]" + (f"  {where}" if where else ""))
        print(f"    {snippet}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from shared.local.demo import run_demo

    return run_demo(open_store(settings), settings, EXAMPLES_DIR, process=process_all)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="apply the SQL migrations").set_defaults(run=cmd_migrate)

    ingest = commands.add_parser("ingest", help="ingest .txt, .md, .html, .pdf and .docx files (folders too)")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.add_argument("--client-id", required=True, type=parse_uuid)
    ingest.add_argument("--source", help="source label for every file (default: the file's path)")
    ingest.add_argument("--create-client", action="store_true", help="create the client if it does not exist")
    ingest.set_defaults(run=cmd_ingest)

    status = commands.add_parser("status", help="items per status, oldest pending, recent failures")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    process = commands.add_parser("process", help="chunk, embed and summarise pending items")
    which = process.add_mutually_exclusive_group()
    which.add_argument("--item", type=parse_uuid, help="process this item only")
    which.add_argument("--all", action="store_true", help="process everything claimable (the default)")
    process.set_defaults(run=cmd_process)

    search = commands.add_parser("search", help="hybrid (full-text + vector), vector or text search")
    search.add_argument("query")
    search.add_argument(
        "--mode",
        choices=("hybrid", "vector", "text"),
        default="hybrid",
        help="hybrid: full-text and vector results fused by rank (default); text calls no API",
    )
    search.add_argument("--client-id", type=parse_uuid)
    search.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    search.add_argument("--json", action="store_true", help="print a JSON array, best first")
    search.set_defaults(run=cmd_search)

    commands.add_parser("demo", help="run the whole job on the sample documents").set_defaults(run=cmd_demo)

    from shared.cli.dashboard import add_dashboard_command
    from shared.cli.dev import add_dev_commands
    from shared.cli.embeddings import add_embeddings_commands
    from shared.cli.estimate import add_estimate_command
    from shared.cli.explain import add_explain_command
    from shared.cli.gcal import add_gcal_commands
    from shared.cli.usage import add_usage_commands

    add_dashboard_command(commands)
    add_dev_commands(commands)
    add_embeddings_commands(commands)
    add_estimate_command(commands)
    add_explain_command(commands)
    add_gcal_commands(commands)
    add_usage_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The CLI speaks to people: JSON log lines only for warnings unless asked for more.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from shared.runtime.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    try:
        return run(args, get_settings())
    except (NexusError, ValueError) as exc:
        print(f"nexus: {exc}", file=sys.stderr)
        return 1
    except ProblemError as problem:
        details = "; ".join(e.detail for e in problem.errors)
        hint = " Add --create-client to create it." if problem.slug == "unknown-client" else ""
        print(f"nexus: {details or problem.detail}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
