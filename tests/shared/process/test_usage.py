"""The usage ledger on the real database, against the local OpenAI-compatible server: what each
client's work cost is what the server counted for it, recorded with the work in one transaction
(a worker killed between the answers and the store records nothing), through psycopg and
PostgREST alike; items that fail still show what they cost; RLS keeps each client's spend its own."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.cli.main import main
from shared.config import load_settings, reset_settings
from shared.errors import ConfigError
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.prices import PriceTable
from shared.providers.summaries import OpenAISummarizer
from shared.providers.usage import apportion
from shared.store.postgres import PostgresStore
from shared.store.rows import UsageEntry
from tests.shared.store.test_rls import acting_as, user_claims
from tests.support.openai_server import OpenAIServer, cl100k
from tests.support.process_helpers import document, insert_items

API_KEY = "sk-test-usage-0123456789"
EMBEDDING = "text-embedding-3-small"
CHAT = "gpt-4o-mini"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def server(openai_server: OpenAIServer) -> OpenAIServer:
    return openai_server


@pytest.fixture
def providers(server: OpenAIServer) -> Iterator[tuple[OpenAIEmbedder, OpenAISummarizer]]:
    embedder = OpenAIEmbedder(API_KEY, base_url=server.base_url)
    summarizer = OpenAISummarizer(API_KEY, base_url=server.base_url)
    yield embedder, summarizer
    embedder.close()
    summarizer.close()


def usage_json(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any, *args: str) -> list[dict[str, Any]]:
    """`nexus usage --json ARGS` as a user runs it."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    reset_settings()
    capsys.readouterr()
    assert main(["usage", "--json", *args]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def row_of(rows: list[dict[str, Any]], client: uuid.UUID, kind: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["client_id"] == str(client) and r["kind"] == kind]
    return row


def distinct_chunk_tokens(db: psycopg.Connection[Any], client: uuid.UUID) -> int:
    """What the server counts for the client's chunk texts, each embedded once (cl100k)."""
    texts = [
        r["content"]
        for r in db.execute(
            "select distinct on (content_sha256) content from knowledge_chunks where client_id = %s",
            (client,),
        ).fetchall()
    ]
    return sum(len(ids) for ids in cl100k().encode_ordinary_batch(texts))


def test_two_clients_pay_what_the_server_counted_for_each(
    db: psycopg.Connection[Any],
    db_url: str,
    db_store: PostgresStore,
    db_client: uuid.UUID,
    server: OpenAIServer,
    providers: tuple[OpenAIEmbedder, OpenAISummarizer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    other = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other,))
    rng = random.Random(11)
    insert_items(db, db_client, [document(rng, 5, 80, tag=f"mine{i}") for i in range(4)])
    # CJK and emoji in the other client's items; both clients' inputs share requests
    insert_items(db, other, [document(rng, 3, 60, tag=f"其他 {i} 🚀") for i in range(3)])
    report = Processor(db_store, *providers, chunk_tokens=120).sweep(lambda: 600.0)
    assert report.done == 7
    stats = server.stats

    rows = usage_json(db_url, monkeypatch, capsys)
    assert {(r["client_id"], r["kind"], r["model"]) for r in rows} == {
        (str(c), kind, model)
        for c in (db_client, other)
        for kind, model in (("embedding", EMBEDDING), ("chat", CHAT))
    }
    for client in (db_client, other):
        embedding = row_of(rows, client, "embedding")
        assert embedding["tokens"] == embedding["prompt_tokens"] == distinct_chunk_tokens(db, client)
        assert embedding["completion_tokens"] == 0
        assert embedding["usd"] == pytest.approx(embedding["tokens"] * 0.02 / 1e6)
        chat = row_of(rows, client, "chat")
        assert chat["tokens"] == chat["prompt_tokens"] + chat["completion_tokens"]
        assert chat["usd"] == pytest.approx(
            (chat["prompt_tokens"] * 0.15 + chat["completion_tokens"] * 0.6) / 1e6
        )
    # everything the server counted, and nothing else: summaries and client folds alike
    kinds = {kind: [r for r in rows if r["kind"] == kind] for kind in ("embedding", "chat")}
    assert sum(r["tokens"] for r in kinds["embedding"]) == stats.embedding_tokens
    assert sum(r["requests"] for r in kinds["embedding"]) == stats.embedding_requests
    assert sum(r["prompt_tokens"] for r in kinds["chat"]) == stats.chat_prompt_tokens
    assert sum(r["completion_tokens"] for r in kinds["chat"]) == stats.chat_completion_tokens
    assert sum(r["requests"] for r in kinds["chat"]) == stats.chat_requests
    # each item carries its own lines; folds are the client's
    per_item = db.execute(
        "select count(distinct knowledge_item_id) as items from usage_records where purpose = 'item'"
    ).fetchone()
    assert per_item is not None and per_item["items"] == 7
    folds = db.execute("select count(*) as n from usage_records where purpose = 'fold'").fetchone()
    assert folds is not None and folds["n"] == 2

    # one client, and a day filter
    only = usage_json(db_url, monkeypatch, capsys, "--client-id", str(other))
    assert {r["client_id"] for r in only} == {str(other)}
    assert usage_json(db_url, monkeypatch, capsys, "--since", "2999-01-01") == []

    # processing the same items again pays nothing and records nothing
    db.execute("update knowledge_items set status = 'pending'")
    records = db.execute("select count(*) as n from usage_records").fetchone()
    Processor(db_store, *providers, chunk_tokens=120).sweep(lambda: 600.0)
    assert db.execute("select count(*) as n from usage_records").fetchone() == records
    assert usage_json(db_url, monkeypatch, capsys) == rows


def test_the_daily_view_rolls_up_and_each_client_reads_only_its_own(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    providers: tuple[OpenAIEmbedder, OpenAISummarizer],
) -> None:
    other = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other,))
    insert_items(db, db_client, [document(random.Random(1), 3, 60, tag="a")])
    insert_items(db, other, [document(random.Random(2), 3, 60, tag="b")])
    Processor(db_store, *providers).sweep(lambda: 600.0)
    # the sweep rolled its lines up: the view reads them from the daily totals
    assert db.execute("select count(*) as n from usage_pending").fetchone() == {"n": 0}
    totals = "select client_id, kind, sum(requests)::int, sum(tokens)::int from usage_by_day group by 1, 2"
    records = (
        "select client_id, kind, sum(requests)::int, sum(prompt_tokens + completion_tokens)::int "
        "from usage_records group by 1, 2"
    )
    assert sorted(map(str, db.execute(totals).fetchall())) == sorted(map(str, db.execute(records).fetchall()))
    # a line recorded since is in the view before any roll-up, and once after it
    db_store.record_usage([UsageEntry(other, None, "gpt-4o-mini", "chat", "fold", 1, 100, 10, 0.0001)])
    before = db.execute("select * from usage_by_day order by client_id, kind").fetchall()
    assert db.execute("select nexus.roll_up_usage() as moved").fetchone() == {"moved": 1}
    assert db.execute("select * from usage_by_day order by client_id, kind").fetchall() == before
    with acting_as(db, "authenticated", user_claims(db_client)) as conn:
        seen = conn.execute("select distinct client_id from usage_by_day").fetchall()
        assert [r["client_id"] for r in seen] == [db_client]
        assert {r["client_id"] for r in conn.execute("select client_id from usage_records").fetchall()} == {
            db_client
        }
    with acting_as(db, "anon") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from usage_records")


def test_an_item_that_fails_still_shows_what_it_cost(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    server: OpenAIServer,
    providers: tuple[OpenAIEmbedder, OpenAISummarizer],
) -> None:
    (item,) = insert_items(db, db_client, [document(random.Random(5), 3, 60, tag="refused")])
    # its embeddings are answered; its summary is refused (a 400: the item's own fault)
    server.enqueue_faults([{"endpoint": "chat", "status": 400, "code": "invalid_prompt"}])
    report = Processor(db_store, *providers).sweep(lambda: 600.0)
    assert report.failed == 1 and report.done == 0
    rows = db.execute("select * from usage_records where knowledge_item_id = %s", (item,)).fetchall()
    assert [(r["kind"], r["client_id"], r["prompt_tokens"]) for r in rows] == [
        ("embedding", db_client, server.stats.embedding_tokens)
    ]


KILLED_CLAIM = """
import sys
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import OpenAISummarizer
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore
from shared.store.rows import UsageEntry

dsn, base_url = sys.argv[1], sys.argv[2]
store = PostgresStore(ConnectionHolder(dsn))
Processor(store, OpenAIEmbedder("sk-killed", base_url=base_url),
          OpenAISummarizer("sk-killed", base_url=base_url)).sweep(lambda: 600.0)
"""


def test_a_worker_killed_between_the_answers_and_the_store_records_nothing(
    db: psycopg.Connection[Any], db_url: str, db_client: uuid.UUID
) -> None:
    insert_items(db, db_client, [document(random.Random(9), 4, 60, tag=f"killed{i}") for i in range(3)])
    with OpenAIServer(latency_ms=0) as slow:
        slow.enqueue_faults([{"endpoint": "chat", "hang_s": 30}] * 8)  # embeddings answered, summaries never
        worker = subprocess.Popen([sys.executable, "-c", KILLED_CLAIM, db_url, slow.base_url], cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while slow.stats.chat_attempts < 1 or slow.stats.embedding_requests < 1:
                assert worker.poll() is None and time.monotonic() < deadline, "the worker never called"
            os.kill(worker.pid, signal.SIGKILL)
        finally:
            worker.wait()
        paid = slow.stats.embedding_tokens
    assert paid > 0
    assert db.execute("select count(*) as n from usage_records").fetchone() == {"n": 0}
    assert db.execute("select count(*) as n from knowledge_chunks").fetchone() == {"n": 0}


def test_through_postgrest_usage_is_recorded_with_the_items(
    db: psycopg.Connection[Any],
    db_url: str,
    db_client: uuid.UUID,
    server: OpenAIServer,
    providers: tuple[OpenAIEmbedder, OpenAISummarizer],
) -> None:
    from shared.store.supabase import SupabaseStore
    from tests.shared.store.test_supabase_store import KEYS, SERVICE_ROLE_KEY
    from tests.support.postgrest import PostgrestStandIn

    insert_items(db, db_client, [document(random.Random(4), 4, 60, tag=f"rest{i}") for i in range(2)])
    with PostgrestStandIn(db_url, KEYS) as postgrest:
        store = SupabaseStore(postgrest.url, SERVICE_ROLE_KEY)
        assert Processor(store, *providers).sweep(lambda: 600.0).done == 2
        rows = store.usage_report(None, db_client)
    embedding = [r for r in rows if r["kind"] == "embedding"]
    assert [int(r["tokens"]) for r in embedding] == [server.stats.embedding_tokens]
    assert sum(int(r["requests"]) for r in rows if r["kind"] == "chat") == server.stats.chat_requests
    assert db.execute("select count(distinct knowledge_item_id) as n from usage_records").fetchone() == {
        "n": 2
    }


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (10, [1, 1, 1, 1], [3, 3, 2, 2]),
        (100, [30, 70], [30, 70]),
        (7, [0, 0], [4, 3]),
        (1, [5, 90, 5], [0, 1, 0]),
        (3, [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]),
        (0, [4, 2], [0, 0]),
        (5, [], []),
    ],
)
def test_apportion_keeps_the_total(total: int, weights: list[int], parts: list[int]) -> None:
    assert apportion(total, weights) == parts
    assert sum(parts) == (total if weights else 0)


def test_prices_come_from_the_table_and_nexus_prices() -> None:
    table = PriceTable()
    assert table.usd("embedding", EMBEDDING, 1_000_000) == pytest.approx(0.02)
    assert table.usd("chat", CHAT, 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert table.usd("chat", "my-model", 10, 10) is None
    settings = load_settings({"NEXUS_PRICES": '{"my-model": {"input": 1, "output": 2}}'})
    assert PriceTable(settings.prices).usd("chat", "my-model", 1_000_000, 500_000) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match='NEXUS_PRICES is invalid: the price of m needs "input"'):
        load_settings({"NEXUS_PRICES": '{"m": {"output": 2}}'})
    with pytest.raises(ConfigError, match="NEXUS_PRICES is invalid: it must be JSON"):
        load_settings({"NEXUS_PRICES": "cheap"})


def test_a_generation_backfill_records_what_it_embedded_per_item(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    server: OpenAIServer,
    providers: tuple[OpenAIEmbedder, OpenAISummarizer],
) -> None:
    from shared.providers.summaries import LocalSummarizer

    embedder, _ = providers
    ids = insert_items(db, db_client, [document(random.Random(8), 4, 60, tag=f"fill{i}") for i in range(3)])
    assert Processor(db_store, embedder, LocalSummarizer()).sweep(lambda: 600.0).done == 3
    db_store.start_generation(EMBEDDING, 512)
    before = server.stats.embedding_tokens
    Processor(db_store, embedder, LocalSummarizer()).sweep(lambda: 600.0)
    filled = server.stats.embedding_tokens - before
    assert filled > 0
    rows = db.execute(
        "select knowledge_item_id, client_id, sum(prompt_tokens) as tokens, sum(requests) as requests "
        "from usage_records where purpose = 'generation' group by 1, 2"
    ).fetchall()
    assert {r["knowledge_item_id"] for r in rows} == set(ids) and {r["client_id"] for r in rows} == {
        db_client
    }
    assert sum(r["tokens"] for r in rows) == filled
    assert sum(r["requests"] for r in rows) == sum(
        1 for _, size, _ in server.stats.embedding_shapes if size == 512
    )
