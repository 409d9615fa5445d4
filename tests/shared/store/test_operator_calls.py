"""The operator page's store calls (migration 20261209100000) on both backends, psycopg and
PostgREST's `rpc` (the stand-in over real HTTP), against a database of the test's own: requeueing
touches failed items only, throughput counts done items per hour, failures and clients read back."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import pytest

from shared.store.postgres import PostgresStore
from shared.store.supabase import SupabaseStore
from tests.support.postgrest import PostgrestStandIn

JWT_SECRET = "stand-in-jwt-secret-with-at-least-32-characters"
SERVICE_ROLE_KEY = jwt.encode({"iss": "supabase", "role": "service_role"}, JWT_SECRET, algorithm="HS256")


@pytest.fixture(params=["postgres", "supabase"])
def backend(request: pytest.FixtureRequest, db_url: str, db_store: PostgresStore) -> Iterator[Any]:
    if request.param == "postgres":
        yield db_store
        return
    with PostgrestStandIn(db_url, {SERVICE_ROLE_KEY: "service_role"}) as server:
        store = SupabaseStore(server.url, SERVICE_ROLE_KEY)
        try:
            yield store
        finally:
            store.close()


def add(db: psycopg.Connection[Any], client: uuid.UUID, status: str, **columns: Any) -> uuid.UUID:
    names = ["client_id", "source", "content", "status", *columns]
    values = [client, f"{status}.md", f"An item that is {status}, {uuid.uuid4()}.", status, *columns.values()]
    row = db.execute(
        f"insert into knowledge_items ({', '.join(names)}) values ({', '.join(['%s'] * len(values))}) "
        "returning id",
        values,
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def state_of(db: psycopg.Connection[Any], item: uuid.UUID) -> tuple[Any, ...]:
    row = db.execute(
        "select status, attempts, last_error, next_attempt_at, lease_owner "
        "from knowledge_items where id = %s",
        (item,),
    ).fetchone()
    assert row is not None
    return tuple(row.values())


def test_requeue_moves_failed_items_only(
    backend: Any, db: psycopg.Connection[Any], db_client: uuid.UUID
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    first = add(db, db_client, "failed", attempts=5, last_error="HTTP 400: input refused")
    second = add(
        db, db_client, "failed", attempts=2, last_error="chunking took too long", next_attempt_at=later
    )
    leased = add(
        db,
        db_client,
        "processing",
        attempts=1,
        last_error="an earlier failure",
        lease_owner="w-1",
        lease_expires_at=later,
    )
    pending = add(db, db_client, "pending")
    before = {item: state_of(db, item) for item in (leased, pending)}

    assert [f["id"] for f in backend.failed_items()] == [str(second), str(first)]  # last failed first
    assert backend.requeue_failed(leased) == 0 and backend.requeue_failed(pending) == 0
    assert backend.requeue_failed(uuid.uuid4()) == 0
    assert backend.requeue_failed(first) == 1
    assert state_of(db, first) == ("pending", 0, None, None, None)
    assert state_of(db, second)[0] == "failed"
    assert backend.requeue_failed(first) == 0  # already pending
    assert backend.requeue_failed(None) == 1
    assert state_of(db, second) == ("pending", 0, None, None, None)
    assert {item: state_of(db, item) for item in (leased, pending)} == before
    assert backend.failed_items() == []


def test_throughput_counts_done_items_per_hour(
    backend: Any, db: psycopg.Connection[Any], db_client: uuid.UUID
) -> None:
    now = datetime.now(UTC)
    for hours_ago, chunks in ((0, 4), (0, 2), (3, 5), (30, 7)):  # the last one is out of the window
        add(
            db,
            db_client,
            "done",
            processed_at=now - timedelta(hours=hours_ago),
            chunk_count=chunks,
            token_count=100,
        )
    add(db, db_client, "failed", processed_at=None)
    hours = backend.throughput(24)
    assert len(hours) == 24
    starts = [datetime.fromisoformat(h["hour"]) for h in hours]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(starts))
    assert starts[-1] <= now < starts[-1] + timedelta(hours=1)
    assert (hours[-1]["done"], hours[-1]["chunks"], hours[-1]["tokens"]) == (2, 6, 200)
    assert (hours[-4]["done"], hours[-4]["chunks"]) == (1, 5)
    assert sum(h["done"] for h in hours) == 3
    assert len(backend.throughput(1)) == 1


def test_failed_items_and_clients_read_back(
    backend: Any, db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore
) -> None:
    db.execute("update clients set name = 'Cedar Legal' where id = %s", (db_client,))
    failed = add(db, db_client, "failed", attempts=1, last_error="refused")
    add(db, db_client, "pending")
    add(db, db_client, "done")
    (row,) = backend.failed_items(10)
    assert (row["id"], row["client_name"], row["last_error"], row["attempts"]) == (
        str(failed),
        "Cedar Legal",
        "refused",
        1,
    )
    db_store.set_client_budget(db_client, 5.0)
    (client,) = backend.client_overview(datetime.now(UTC).date().replace(day=1).isoformat())
    assert client["client_id"] == str(db_client) and client["name"] == "Cedar Legal"
    assert (client["pending"], client["done"], client["failed"], client["requests"], client["usd"]) == (
        1,
        1,
        1,
        0,
        None,
    )
    assert backend.failed_items(0) == []


def test_explain_answers_through_postgrest_as_the_service_role(db: Any, db_url: str, db_client: Any) -> None:
    """`explain_knowledge_item` adds the document facts to the ones it kept under another name:
    the service role (PostgREST's) may run both."""
    from shared.store.supabase import SupabaseStore
    from tests.shared.store.test_supabase_store import KEYS, SERVICE_ROLE_KEY
    from tests.support.postgrest import PostgrestStandIn
    from tests.support.process_helpers import insert_items

    (item,) = insert_items(db, db_client, ["A note about valves."])
    with PostgrestStandIn(db_url, KEYS) as postgrest:
        facts = SupabaseStore(postgrest.url, SERVICE_ROLE_KEY).explain_item(item)
    assert facts is not None and facts["status"] == "pending"
    assert facts["document_pages_kept"] == 0 and facts["pages"] is None
