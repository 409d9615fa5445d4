"""A database in the state an operator meets: several clients, items done over the last day,
pending ones (one of them old), one being processed, failed ones with their errors, chunks partly
awaiting the vector index, spend on record, budgets (one client over its own), the fleet's rate
limit buckets and a Google token.

Arranged with SQL and the store's own calls, so the operator page tests and the screenshot in
docs/ (`python -m tests.support.operator_state OUT.png`) show the same kind of state.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from shared.store.rows import UsageEntry

OPENAI = "openai https://api.openai.com/v1"
CLIENTS = ("Cedar Legal", "Northwind Logistics", "Harbor Health")
FAILURES = (
    "Embedding failed: the embeddings endpoint refused the input (HTTP 400 invalid_request_error: "
    "This model's maximum context length is 8192 tokens).",
    "Chunking took longer than the item's share of the invocation (41.2 s of 30.0 s).",
    "Summary failed: HTTP 400 invalid_request_error: the input contains invalid UTF-8.",
)


@dataclass
class OperatorState:
    """The ids the tests look for."""

    clients: list[uuid.UUID] = field(default_factory=list)
    done: list[uuid.UUID] = field(default_factory=list)
    pending: list[uuid.UUID] = field(default_factory=list)
    old_pending: uuid.UUID | None = None
    processing: uuid.UUID | None = None
    failed: list[uuid.UUID] = field(default_factory=list)
    over_budget_client: uuid.UUID | None = None


def _insert(
    db: psycopg.Connection[Any], client: uuid.UUID, source: str, content: str, **columns: Any
) -> uuid.UUID:
    names = ["client_id", "source", "content", *columns]
    values = [client, source, content, *columns.values()]
    placeholders = ", ".join(["%s"] * len(values))
    row = db.execute(
        f"insert into knowledge_items ({', '.join(names)}) values ({placeholders}) returning id", values
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def _done(
    db: psycopg.Connection[Any], client: uuid.UUID, n: int, ingested: datetime, took: timedelta
) -> uuid.UUID:
    chunks = 3 + n % 9
    item = _insert(
        db,
        client,
        f"docs/notes-{n:03}.md",
        f"Note {n}: the quarterly review of contracts, shipments and patient intake.",
        created_at=ingested,
        status="done",
        processed=True,
        processed_at=ingested + took,
        chunk_count=chunks,
        token_count=chunks * 310,
        embedding_model="text-embedding-3-small",
        embedding_dimensions=1536,
    )
    with db.cursor() as cursor:
        cursor.executemany(
            "insert into knowledge_chunks (knowledge_item_id, chunk_index, content, client_id) "
            "values (%s, %s, %s, %s)",
            [(item, i, f"Chunk {i} of note {n}.", client) for i in range(chunks)],
        )
    return item


def arrange_operator_state(db: psycopg.Connection[Any], store: Any, *, done_items: int = 36) -> OperatorState:
    """Fill a fresh (isolated) database; `store` is a store on the same database."""
    state = OperatorState()
    now = datetime.now(UTC)
    for name in CLIENTS:
        row = db.execute("insert into clients (name) values (%s) returning id", (name,)).fetchone()
        assert row is not None
        state.clients.append(uuid.UUID(str(row["id"])))
    # done over the last day, busier in working hours; the last few within the hour
    for n in range(done_items):
        hours_ago = (n * 37 % 23) + (n % 3) * 0.25 if n >= 6 else n * 0.12
        ingested = now - timedelta(hours=hours_ago, seconds=40 + n * 7 % 50)
        took = timedelta(seconds=6 + n * 13 % 40)
        state.done.append(_done(db, state.clients[n % 3], n, ingested, took))
    # the chunks of all but the newest items joined the vector index seconds after their item was done
    db.execute(
        "update knowledge_chunks c set vector_indexed = true from knowledge_items k "
        "where k.id = c.knowledge_item_id and k.processed_at < now() - interval '3 minutes'"
    )
    db.execute(
        "update knowledge_chunks c "
        "set vector_indexed_at = k.processed_at + make_interval(secs => 2 + c.chunk_index) "
        "from knowledge_items k where k.id = c.knowledge_item_id and c.vector_indexed"
    )
    for n in range(5):
        state.pending.append(
            _insert(db, state.clients[n % 3], f"inbox/new-{n}.md", f"New note {n} about the dock schedule.")
        )
    state.old_pending = _insert(
        db,
        state.clients[2],
        "inbox/intake-form.html",
        "An intake form that waits for its client's budget.",
        created_at=now - timedelta(hours=2, minutes=14),
    )
    state.processing = _insert(
        db,
        state.clients[0],
        "contracts/master-services-agreement.md",
        "A long agreement being processed.",
        status="processing",
        attempts=1,
        lease_owner="sweep-4f2a",
        lease_expires_at=now + timedelta(minutes=4),
    )
    for n, error in enumerate(FAILURES):
        state.failed.append(
            _insert(
                db,
                state.clients[n % 3],
                ("scans/ocr-dump.txt", "exports/shipments-2026.csv.txt", "letters/latin1-letter.txt")[n],
                f"Content {n} that its provider refuses.",
                created_at=now - timedelta(hours=5 - n),
                updated_at=now - timedelta(minutes=50 - 15 * n),
                status="failed",
                attempts=5 if n != 1 else 2,
                last_error=error,
                next_attempt_at=None if n != 1 else now + timedelta(minutes=8),
            )
        )
    _spend(store, state)
    store.take_provider_capacity(OPENAI, "text-embedding-3-small", 42_000, 3, (1_000_000, 3000, 10))
    store.take_provider_capacity(OPENAI, "gpt-4o-mini", 9_000, 12, (2_000_000, 5000, 10))
    return state


def _spend(store: Any, state: OperatorState) -> None:
    """Usage per client this month, a budget each for two clients, the third over its own."""
    for n, client in enumerate(state.clients):
        scale = 3 - n
        store.record_usage(
            [
                UsageEntry(
                    client,
                    None,
                    "text-embedding-3-small",
                    "embedding",
                    "item",
                    40 * scale,
                    410_000 * scale,
                    0,
                    0.0082 * scale,
                ),
                UsageEntry(
                    client,
                    None,
                    "gpt-4o-mini",
                    "chat",
                    "item",
                    120 * scale,
                    380_000 * scale,
                    52_000 * scale,
                    0.0882 * scale,
                ),
            ]
        )
    store.set_client_budget(state.clients[0], 25.0)
    store.set_client_budget(state.clients[2], 0.05)
    state.over_budget_client = state.clients[2]


def store_google_token(settings: Any, token_store: Any, secrets: dict[str, str]) -> None:
    """Store a Google token for account `default` whose access token expires in 40 minutes;
    `secrets` holds `token`, `refresh_token` and `client_secret` (the strings a page must never show)."""
    from google.oauth2.credentials import Credentials

    from shared.gcal import save_credentials

    expiry = (datetime.now(UTC) + timedelta(minutes=40)).replace(tzinfo=None)
    credentials = Credentials(
        token=secrets["token"],
        refresh_token=secrets["refresh_token"],
        client_id="1234567890-nexus.apps.googleusercontent.com",
        client_secret=secrets["client_secret"],
        scopes=["https://www.googleapis.com/auth/calendar"],
        expiry=expiry,
    )
    save_credentials(credentials, settings=settings, store=token_store)


def _screenshot(out: Path) -> None:
    """The docs' picture: this state in a fresh database, served and shot in headless Chromium."""
    import shutil
    import tempfile

    from psycopg.rows import dict_row

    from shared.config import Settings
    from shared.gcal import generate_key
    from shared.gcal.store import PostgresTokenStore
    from shared.local.dashboard import start_dashboard
    from shared.local.embedded import start_embedded_postgres, stop_embedded_postgres
    from shared.store.database import ConnectionHolder
    from shared.store.postgres import PostgresStore
    from tests.support.browser import full_page_screenshot, headless_chromium
    from tests.support.process_helpers import isolated_database

    data_dir = Path(tempfile.mkdtemp(prefix="nexus-shot-")) / "data"
    pg_url = start_embedded_postgres(data_dir)
    try:
        with isolated_database(pg_url) as url:
            settings = Settings(database_url=url, token_encryption_key=generate_key())
            store, tokens = PostgresStore(ConnectionHolder(url)), PostgresTokenStore(ConnectionHolder(url))
            with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
                arrange_operator_state(db, store)
            store_google_token(
                settings, tokens, {"token": "ya29.x", "refresh_token": "1//x", "client_secret": "x"}
            )
            served = start_dashboard(settings, "127.0.0.1", 0, store=store, token_store=tokens)
            try:
                with headless_chromium() as browser:
                    browser.get(served.url)
                    full_page_screenshot(browser, out)
            finally:
                served.stop()
    finally:
        stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    _screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
