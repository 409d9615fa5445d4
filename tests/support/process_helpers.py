"""Helpers for the failure, concurrency and crash tests of processing.

- `isolated_database`: a fresh, migrated database in the session's embedded Postgres, so a sweep
  claims only the test's own items (the session database holds other tests' pending items).
- Lambda contexts and events (function URL, SQS) built from the sample files in tests/events/.
- Generated documents whose chunk boundaries are predictable, and the check every processed item
  must pass (`assert_exact_chunk_set`).
- `crash_zygote`: the subprocess that forks the workers the crash tests kill with SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

# Pronounceable words keep cl100k at a realistic ~4-5 characters per token.
_SYLLABLES = ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "va", "sho", "len", "mar", "tin", "ber")


@contextmanager
def isolated_database(pg_url: str) -> Iterator[str]:
    """A new database with every migration applied; dropped (even if still in use) afterwards."""
    from shared.store.migrations import apply_migrations

    name = f"nexus_iso_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = make_conninfo(pg_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            apply_migrations(conn)
        yield url
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@dataclass
class LambdaContext:
    """The parts of the Lambda context the process function reads."""

    aws_request_id: str
    remaining_ms: int = 120_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def load_event(name: str) -> dict[str, Any]:
    """tests/conftest.py's `load_event`, imported late: the crash workers import this module and
    should not pay for pytest's import."""
    from tests.conftest import load_event as load

    return load(name)


def new_context(remaining_ms: int = 120_000) -> LambdaContext:
    return LambdaContext(str(uuid.uuid4()), remaining_ms)


def function_url_event(body: Any, token: str, path: str = "/") -> dict[str, Any]:
    """A function URL (payload 2.0) POST carrying `body` as JSON, with a bearer token."""
    event = load_event("function_url_ingest.json")
    event["headers"]["authorization"] = f"Bearer {token}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


def webhook_insert_body(item_id: uuid.UUID, client_id: uuid.UUID, content: str) -> dict[str, Any]:
    body = load_event("supabase_webhook_insert.json")
    body["record"].update(id=str(item_id), client_id=str(client_id), content=content)
    return body


def sqs_event(messages: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """An SQS batch of (messageId, body) records, shaped like the sample."""
    template = load_event("sqs_batch.json")["Records"][0]
    return {"Records": [{**template, "messageId": mid, "body": body} for mid, body in messages]}


def words(rng: random.Random, count: int) -> str:
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(count))


def paragraph(rng: random.Random, word_count: int, tag: str = "") -> str:
    """One paragraph of sentences (8-14 words each), optionally starting with a unique tag."""
    sentences: list[str] = [tag] if tag else []
    written = 0
    while written < word_count:
        n = min(rng.randint(8, 14), word_count - written)
        sentences.append(words(rng, n).capitalize() + ".")
        written += n
    return " ".join(sentences)


def document(rng: random.Random, paragraphs: int, word_count: int, tag: str = "") -> str:
    """Paragraphs separated by blank lines; every paragraph carries `tag` and its number, so
    documents of different tags share no chunk text."""
    return "\n\n".join(
        paragraph(rng, word_count, f"{tag} part {i}." if tag else "") for i in range(paragraphs)
    )


def insert_items(
    admin: psycopg.Connection[Any], client_id: uuid.UUID, contents: Sequence[str], source: str = "test.md"
) -> list[uuid.UUID]:
    """Insert pending items straight into the table (as the database webhook would see them)."""
    ids = []
    with admin.transaction():
        for content in contents:
            row = admin.execute(
                "insert into knowledge_items (client_id, source, content) values (%s, %s, %s) returning id",
                (client_id, source, content),
            ).fetchone()
            assert row is not None
            ids.append(uuid.UUID(str(row["id"])))
    return ids


def assert_exact_chunk_set(admin: psycopg.Connection[Any], item_id: uuid.UUID, dimensions: int = 1536) -> int:
    """The item is done with exactly one chunk set: indexes 0..n-1, n = chunk_count, every chunk
    embedded, and (no overlap) the chunks concatenate back to the content. Returns n."""
    item = admin.execute(
        "select status, processed, chunk_count, content, content_sha256, processed_sha256, lease_owner "
        "from knowledge_items where id = %s",
        (item_id,),
    ).fetchone()
    assert item is not None, f"item {item_id} is gone"
    assert (item["status"], item["processed"]) == ("done", True), f"item {item_id}: {item['status']}"
    assert item["processed_sha256"] == item["content_sha256"]
    assert item["lease_owner"] is None
    chunks = admin.execute(
        "select chunk_index, content, vector_dims(embedding) as dims, client_id "
        "from knowledge_chunks where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()
    assert [c["chunk_index"] for c in chunks] == list(range(item["chunk_count"])), f"item {item_id}"
    assert all(c["dims"] == dimensions for c in chunks)
    assert "".join(c["content"] for c in chunks) == item["content"]
    return len(chunks)


def item_states(admin: psycopg.Connection[Any], ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = admin.execute(
        "select id, status, attempts, last_error, chunk_count, next_attempt_at, lease_owner, "
        "transient_failures, last_transient_error "
        "from knowledge_items where id = any(%s)",
        (list(ids),),
    ).fetchall()
    return {uuid.UUID(str(row["id"])): row for row in rows}


def pass_time(db: psycopg.Connection[Any], seconds: float) -> None:
    """Move every waiting time the database keeps (the fleet's next probe, items' deferrals and
    retry backoffs) `seconds` closer, as if that much time had passed: no test sleeps for it."""
    shift = f"{float(seconds)} seconds"
    db.execute("update provider_backoff set probe_at = probe_at - %s::interval", (shift,))
    db.execute(
        "update knowledge_items set next_attempt_at = next_attempt_at - %s::interval "
        "where next_attempt_at is not null",
        (shift,),
    )


def backoff_state(db: psycopg.Connection[Any], provider: str) -> dict[str, Any] | None:
    """The fleet's back-off row for `provider`, if any."""
    return db.execute("select * from provider_backoff where provider = %s", (provider,)).fetchone()


class _DiesWhileFolding:
    """A summariser (local, extractive) whose client fold kills its own process with SIGKILL: a
    crash at the one point between storing items and folding their client's summary."""

    def __init__(self) -> None:
        from shared.providers.summaries import LocalSummarizer

        self._local = LocalSummarizer()
        self.model = self._local.model

    def summarize_item(self, chunks: Sequence[str], source: str = "") -> str:
        return self._local.summarize_item(chunks, source)

    def fold_client(self, previous: str, item_summaries: Sequence[str]) -> str:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def crash_zygote() -> None:
    """Subprocess body for the crash tests: `python -c 'from tests.support.process_helpers import
    crash_zygote; crash_zygote()' DSN BATCH_TOKENS`.

    Imports everything and loads the tokenizer once, prints `ready`, then for each stdin line
    `run NAME [die-while-folding]` forks a worker process that connects (as application NAME),
    prints `started NAME PID`, sweeps with the local providers (small claims, so a run commits
    several batches) and prints `finished NAME {report}`. Forking from a single-threaded process
    that holds no connection keeps each worker's start-up to milliseconds, so a test can kill many.
    """
    from shared.process.pipeline import Processor
    from shared.providers.embeddings import LocalEmbedder
    from shared.providers.summaries import LocalSummarizer, Summarizer
    from shared.store.database import ConnectionHolder
    from shared.store.postgres import PostgresStore
    from shared.text.tokenizer import get_encoding

    dsn, batch_tokens = sys.argv[1], int(sys.argv[2])
    get_encoding()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically
    print("ready", flush=True)
    for line in sys.stdin:
        _, name, *flags = line.split()
        if os.fork() != 0:
            continue
        status = 1
        try:
            summarizer: Summarizer = (
                _DiesWhileFolding() if "die-while-folding" in flags else LocalSummarizer()
            )
            holder = ConnectionHolder(dsn, application_name=name)
            with holder.connection() as conn:
                conn.execute("select 1")
            store = PostgresStore(holder)
            processor = Processor(store, LocalEmbedder(), summarizer, batch_tokens=batch_tokens)
            print(f"started {name} {os.getpid()}", flush=True)
            report = processor.sweep(lambda: 120.0)
            store.close()
            print(f"finished {name} {json.dumps(report.as_dict())}", flush=True)
            status = 0
        except BaseException as exc:
            print(f"error {name} {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        finally:
            os._exit(status)
