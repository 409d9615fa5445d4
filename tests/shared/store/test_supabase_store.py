"""The Supabase (PostgREST `rpc`) store over real HTTP, against the real test database.

`tests.support.postgrest` answers supabase-py's `rpc` calls by running the SQL functions from the
migrations, so both backends run the same SQL; the parametrised tests show they give the same
results, and the rest pin the Supabase backend's error mapping and the ingest function on it.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from shared.config import reset_settings
from shared.errors import ConfigError, DatabaseUnavailable
from shared.store import IngestOutcome, PostgresStore, Store, SupabaseError, SupabaseStore
from tests.conftest import API_KEY, count_items, load_event, load_function
from tests.support.postgrest import PostgrestStandIn
from tests.support.process_helpers import assert_exact_chunk_set

JWT_SECRET = "stand-in-jwt-secret-with-at-least-32-characters"
# Supabase's legacy service key is a JWT with role service_role; the new ones are `sb_secret_…`.
SERVICE_ROLE_KEY = jwt.encode({"iss": "supabase", "role": "service_role"}, JWT_SECRET, algorithm="HS256")
SECRET_KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
ANON_KEY = jwt.encode({"iss": "supabase", "role": "anon"}, JWT_SECRET, algorithm="HS256")
KEYS = {SERVICE_ROLE_KEY: "service_role", SECRET_KEY: "service_role", ANON_KEY: "anon"}


@pytest.fixture
def postgrest(pg_url: str) -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn(pg_url, KEYS) as server:
        yield server


@pytest.fixture
def supabase_store(postgrest: PostgrestStandIn) -> Iterator[SupabaseStore]:
    store = SupabaseStore(postgrest.url, SERVICE_ROLE_KEY)
    yield store
    store.close()


@pytest.fixture(params=["postgres", "supabase"])
def backend(request: pytest.FixtureRequest) -> Store:
    """Each store backend in turn, both on the session's database."""
    name = "store" if request.param == "postgres" else "supabase_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def row(client_id: uuid.UUID | str, **fields: Any) -> dict[str, Any]:
    """An item as `shared.ingest.service` hands it to the store."""
    return {
        "client_id": str(client_id),
        "source": "notes/a.md",
        "content": "# Title\n\nSome text.",
        "metadata": {},
        "external_id": None,
        "idempotency_key": None,
        "token_estimate": 5,
        "content_type": "text/markdown",
        **fields,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored(admin: psycopg.Connection[Any], item_id: uuid.UUID | None) -> dict[str, Any]:
    found = admin.execute("select * from knowledge_items where id = %s", (item_id,)).fetchone()
    assert found is not None
    return found


# --- the same behaviour over both backends ---


def test_new_item_is_created_pending(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    metadata = {"team": "ops", "tags": ["a", "ü"], "nested": {"n": 1.5, "ok": True, "none": None}}
    (outcome,) = backend.ingest_items([row(client_id, metadata=metadata, external_id="doc-1")])
    assert outcome == IngestOutcome(0, outcome.item_id, "created", "pending")
    found = stored(admin, outcome.item_id)
    assert found["client_id"] == client_id
    assert found["metadata"] == metadata
    assert (found["external_id"], found["token_estimate"], found["content_type"]) == (
        "doc-1",
        5,
        "text/markdown",
    )
    assert (found["status"], found["processed"], found["attempts"]) == ("pending", False, 0)


def test_same_idempotency_key_is_a_duplicate(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    (first,) = backend.ingest_items([row(client_id, idempotency_key="req-1")])
    (again,) = backend.ingest_items([row(client_id, idempotency_key="req-1")])
    assert again == IngestOutcome(0, first.item_id, "duplicate", "pending")
    assert count_items(admin, client_id) == 1


def test_same_external_id_is_a_duplicate_then_an_update(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    (first,) = backend.ingest_items([row(client_id, external_id="doc-1")])
    admin.execute(
        "update knowledge_items set status = 'done', processed = true where id = %s", (first.item_id,)
    )
    (same,) = backend.ingest_items([row(client_id, external_id="doc-1")])
    assert same == IngestOutcome(0, first.item_id, "duplicate", "done")
    (changed,) = backend.ingest_items([row(client_id, external_id="doc-1", content="New text.")])
    assert changed == IngestOutcome(0, first.item_id, "updated", "pending")
    found = stored(admin, first.item_id)
    assert (found["content"], found["status"], found["processed"]) == ("New text.", "pending", False)
    assert count_items(admin, client_id) == 1


def test_unknown_client_stores_nothing(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    unknown = uuid.uuid4()
    outcomes = backend.ingest_items([row(client_id), row(unknown)])
    assert outcomes == [IngestOutcome(1, None, "unknown_client", None)]
    assert count_items(admin, client_id) == 0


def test_reused_idempotency_key_stores_nothing(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    (first,) = backend.ingest_items([row(client_id, idempotency_key="req-2")])
    outcomes = backend.ingest_items(
        [row(client_id, external_id="x"), row(client_id, idempotency_key="req-2", content="other")]
    )
    assert outcomes == [IngestOutcome(1, first.item_id, "idempotency_conflict", "pending")]
    assert count_items(admin, client_id) == 1


def test_batch_outcomes_come_back_in_input_order(backend: Store, client_id: uuid.UUID) -> None:
    outcomes = backend.ingest_items(
        [row(client_id, external_id=f"doc-{i}", content=f"text {i}") for i in range(5)]
    )
    assert [(o.index, o.outcome) for o in outcomes] == [(i, "created") for i in range(5)]
    assert len({o.item_id for o in outcomes}) == 5


def test_uuid_objects_are_serialised(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    (outcome,) = backend.ingest_items([{**row(client_id), "client_id": client_id}])
    assert outcome.outcome == "created"
    assert stored(admin, outcome.item_id)["client_id"] == client_id


def test_ensure_client_creates_once_and_keeps_the_name(
    backend: Store, admin: psycopg.Connection[Any]
) -> None:
    new_id = uuid.uuid4()
    backend.ensure_client(new_id, "Acme")
    backend.ensure_client(new_id)  # an empty name keeps the stored one
    rows = admin.execute("select id, name from clients where id = %s", (new_id,)).fetchall()
    assert rows == [{"id": new_id, "name": "Acme"}]
    backend.ensure_client(new_id, "Acme Ltd")
    assert admin.execute("select name from clients where id = %s", (new_id,)).fetchone() == {
        "name": "Acme Ltd"
    }


def test_status_counts_items_and_lists_failures(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    (outcome,) = backend.ingest_items([row(client_id)])
    admin.execute(
        "update knowledge_items set status = 'failed', attempts = 2, last_error = 'embedding timed out',"
        " updated_at = now() + interval '1 hour' where id = %s",
        (outcome.item_id,),
    )
    status = backend.status()
    assert {"counts", "oldest_pending_at", "recent_failures"} <= set(status)
    assert status["counts"]["failed"] >= 1
    failure = status["recent_failures"][0]
    assert failure["id"] == str(outcome.item_id)
    assert (failure["attempts"], failure["last_error"]) == (2, "embedding timed out")


def test_both_backends_store_identical_rows_and_report_identical_status(
    store: PostgresStore, supabase_store: SupabaseStore, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    payload = row(client_id, metadata={"quote": '«"é"» \\ 🚀', "list": [1, 2.5, None]}, content="Ünïcode — ✓")
    by_postgres = store.ingest_items([{**payload, "external_id": "pg"}])
    by_supabase = supabase_store.ingest_items([{**payload, "external_id": "sb"}])
    assert [(o.index, o.outcome, o.status) for o in by_postgres] == [
        (o.index, o.outcome, o.status) for o in by_supabase
    ]
    ignored = {"id", "external_id", "created_at", "updated_at"}
    rows = [stored(admin, o.item_id) for o in (*by_postgres, *by_supabase)]
    assert {k: v for k, v in rows[0].items() if k not in ignored} == {
        k: v for k, v in rows[1].items() if k not in ignored
    }
    by_sql, by_rest = store.status(), supabase_store.status()
    # A second may tick between the two calls; the age is checked to the second, the rest exactly.
    age_sql, age_rest = by_sql.pop("oldest_pending_age_seconds"), by_rest.pop("oldest_pending_age_seconds")
    assert age_sql is not None and age_rest is not None and 0 <= age_rest - age_sql <= 1
    assert by_sql == by_rest


# --- the Supabase backend's own behaviour ---


def test_calls_go_over_http_as_service_role(
    postgrest: PostgrestStandIn, supabase_store: SupabaseStore, client_id: uuid.UUID
) -> None:
    supabase_store.ingest_items([row(client_id)])
    supabase_store.status()
    assert [(c.function, c.role, c.status) for c in postgrest.calls] == [
        ("ingest_knowledge_items", "service_role", 200),
        ("knowledge_status", "service_role", 200),
        ("client_budget_status", "service_role", 200),
        ("provider_rate_status", "service_role", 200),
        ("knowledge_freshness", "service_role", 200),
    ]


def test_new_style_secret_key_works(postgrest: PostgrestStandIn, admin: psycopg.Connection[Any]) -> None:
    store = SupabaseStore(postgrest.url, SECRET_KEY)
    try:
        new_id = uuid.uuid4()
        store.ensure_client(new_id)
    finally:
        store.close()
    assert admin.execute("select 1 as found from clients where id = %s", (new_id,)).fetchone() == {"found": 1}


@pytest.mark.parametrize("key", ["wrong-key", ANON_KEY])
def test_rejected_key_is_a_config_error_naming_the_variable(
    postgrest: PostgrestStandIn, admin: psycopg.Connection[Any], client_id: uuid.UUID, key: str
) -> None:
    store = SupabaseStore(postgrest.url, key)
    try:
        with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY"):
            store.ingest_items([row(client_id)])
    finally:
        store.close()
    assert (postgrest.calls[-1].function, postgrest.calls[-1].status) == ("ingest_knowledge_items", 401)
    assert count_items(admin, client_id) == 0


def test_unreachable_supabase_is_database_unavailable() -> None:
    store = SupabaseStore(f"http://127.0.0.1:{free_port()}", SERVICE_ROLE_KEY)
    try:
        with pytest.raises(DatabaseUnavailable, match="SUPABASE_URL"):
            store.status()
    finally:
        store.close()


def test_database_down_behind_postgrest_is_database_unavailable() -> None:
    dead_database = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with PostgrestStandIn(dead_database, KEYS) as server:
        store = SupabaseStore(server.url, SERVICE_ROLE_KEY)
        try:
            with pytest.raises(DatabaseUnavailable, match="retry"):
                store.status()
        finally:
            store.close()
        assert server.calls[-1].status == 503


def test_missing_function_points_at_the_migrations(pg_url: str) -> None:
    with PostgrestStandIn(pg_url, KEYS, schema="schema_without_migrations") as server:
        store = SupabaseStore(server.url, SERVICE_ROLE_KEY)
        try:
            with pytest.raises(ConfigError, match=r"ingest_knowledge_items.*migrations"):
                store.ingest_items([row(uuid.uuid4())])
        finally:
            store.close()
        assert server.calls[-1].status == 404


def test_sql_error_is_reported_without_database_internals(supabase_store: SupabaseStore) -> None:
    with pytest.raises(SupabaseError) as raised:
        supabase_store.ingest_items([row("not-a-uuid")])
    assert "ingest_knowledge_items" in str(raised.value)
    assert "22P02" in str(raised.value)
    assert "invalid input syntax" not in str(raised.value)


def test_malformed_supabase_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SUPABASE_URL"):
        SupabaseStore("db.example.com", SERVICE_ROLE_KEY)


def test_stand_in_answers_like_postgrest(postgrest: PostgrestStandIn, client_id: uuid.UUID) -> None:
    """The stand-in's replies have PostgREST's shapes: a scalar, an array of rows, an error object."""
    rpc = f"{postgrest.url}/rest/v1/rpc"
    service = {"apikey": SERVICE_ROLE_KEY, "authorization": f"Bearer {SERVICE_ROLE_KEY}"}
    with httpx.Client() as http:
        scalar = http.post(f"{rpc}/ensure_client", json={"client_id": str(client_id)}, headers=service)
        rows = http.post(f"{rpc}/ingest_knowledge_items", json={"items": [row(client_id)]}, headers=service)
        anonymous = http.post(f"{rpc}/ingest_knowledge_items", json={"items": []})
        missing = http.post(f"{rpc}/ingest_knowledge_items", json={"rows": []}, headers=service)
        bad_token = http.post(f"{rpc}/knowledge_status", json={}, headers={"authorization": "Bearer x.y.z"})
        bad_apikey = http.post(f"{rpc}/knowledge_status", json={}, headers={"apikey": "nope"})
    assert (scalar.status_code, scalar.json()) == (200, str(client_id))
    assert rows.status_code == 200 and rows.headers["content-range"] == "0-0/*"
    assert [set(r) for r in rows.json()] == [{"item_index", "item_id", "outcome", "item_status"}]
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "code": "42501",
        "details": None,
        "hint": None,
        "message": "permission denied for function ingest_knowledge_items",
    }
    assert missing.status_code == 404 and missing.json()["code"] == "PGRST202"
    assert (bad_token.status_code, bad_token.json()["code"]) == (401, "PGRST301")
    assert (bad_apikey.status_code, bad_apikey.json()["message"]) == (401, "Invalid API key")


# --- the ingest function on the Supabase backend ---


def url_event(body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    event = load_event("function_url_ingest.json")
    event["headers"].update({"authorization": f"Bearer {API_KEY}", **(headers or {})})
    event["body"] = json.dumps(body)
    return event


def call(module: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    result = module.handler(event, None)
    headers = {k.lower(): v for k, v in result.get("headers", {}).items()}
    body = base64.b64decode(result["body"]) if result.get("isBase64Encoded") else result["body"]
    return result["statusCode"], headers, json.loads(body)


@pytest.fixture
def supabase_env(function_env: pytest.MonkeyPatch, postgrest: PostgrestStandIn) -> pytest.MonkeyPatch:
    """A deployed function's environment with Supabase's API settings and no DATABASE_URL."""
    function_env.delenv("DATABASE_URL")
    function_env.setenv("SUPABASE_URL", postgrest.url)
    function_env.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_ROLE_KEY)
    reset_settings()
    return function_env


@pytest.fixture
def ingest_on_supabase(supabase_env: pytest.MonkeyPatch) -> Iterator[Any]:
    module = load_function("ingest")
    yield module
    if isinstance(module.endpoint.store, SupabaseStore):
        module.endpoint.store.close()


def test_ingest_lambda_handler_stores_through_supabase(
    ingest_on_supabase: Any, postgrest: PostgrestStandIn, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    body = {"client_id": str(client_id), "source": "notes/a.md", "content": "# Title\n\nSome text."}
    status, headers, created = call(ingest_on_supabase, url_event(body, {"idempotency-key": "req-sb"}))
    assert (status, headers["content-type"]) == (201, "application/json")
    assert created == {"id": created["id"], "status": "pending", "duplicate": False}
    again = call(ingest_on_supabase, url_event(body, {"idempotency-key": "req-sb"}))
    assert again[:1] == (200,) and again[2] == {"id": created["id"], "status": "pending", "duplicate": True}
    assert isinstance(ingest_on_supabase.endpoint.store, SupabaseStore)
    assert [(c.function, c.role) for c in postgrest.calls] == [("ingest_knowledge_items", "service_role")] * 2
    found = stored(admin, uuid.UUID(created["id"]))
    assert (found["client_id"], found["content_type"]) == (client_id, "text/markdown")
    assert count_items(admin, client_id) == 1


def test_ingest_lambda_handler_unknown_client_is_422_through_supabase(
    ingest_on_supabase: Any, admin: psycopg.Connection[Any]
) -> None:
    unknown = uuid.uuid4()
    body = {"client_id": str(unknown), "source": "a", "content": "text"}
    status, headers, problem = call(ingest_on_supabase, url_event(body))
    assert (status, headers["content-type"]) == (422, "application/problem+json")
    assert problem["errors"][0]["field"] == "client_id"
    assert count_items(admin, unknown) == 0


def test_ingest_lambda_handler_answers_503_when_supabase_is_down(
    supabase_env: pytest.MonkeyPatch, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    supabase_env.setenv("SUPABASE_URL", f"http://127.0.0.1:{free_port()}")
    reset_settings()
    module = load_function("ingest")
    try:
        body = {"client_id": str(client_id), "source": "a", "content": "text"}
        status, headers, problem = call(module, url_event(body))
    finally:
        module.endpoint.store.close()
    assert (status, headers["content-type"], headers["retry-after"]) == (503, "application/problem+json", "1")
    assert "SUPABASE_URL" in problem["detail"]
    assert count_items(admin, client_id) == 0


# -- processing through either backend ---------------------------------------------------------

PROCESS_DOC = "\n\n".join(
    f"Part {i}. The warehouse quokka recalibrates its lidar every night; dock {i} reports contact wear." * 4
    for i in range(10)
)


def _processor(backend: Store) -> Any:
    from shared.process.pipeline import Processor
    from shared.providers.embeddings import LocalEmbedder
    from shared.providers.summaries import LocalSummarizer

    return Processor(backend, LocalEmbedder(), LocalSummarizer(), retry_base_s=0, worker="test-worker")


def _new_item(admin: psycopg.Connection[Any], client_id: uuid.UUID, content: str) -> uuid.UUID:
    row = admin.execute(
        "insert into knowledge_items (client_id, source, content) values (%s, 'doc.md', %s) returning id",
        (client_id, content),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def test_processing_gives_the_same_result_on_both_backends(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    document = f"Client {client_id}.\n\n{PROCESS_DOC}"  # text no other test has embedded
    item_id = _new_item(admin, client_id, document)
    report = _processor(backend).process_ids([item_id], 60)
    assert report.done_ids == {item_id} and report.chunks > 1
    # Chunks another test already embedded (same text, model, dimensions) are reused, not paid for.
    assert report.embedded_chunks >= 1 and report.embedded_chunks + report.reused_chunks == report.chunks
    rows = admin.execute(
        "select chunk_index, content, vector_dims(embedding) as dims, embedding_model, client_id"
        " from knowledge_chunks where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()
    assert "".join(r["content"] for r in rows) == document
    assert [r["chunk_index"] for r in rows] == list(range(len(rows)))
    assert {(r["dims"], r["embedding_model"], r["client_id"]) for r in rows} == {
        (1536, "local-hash-v1", client_id)
    }
    assert backend.client_summary(client_id)

    # The same text in another item reuses every stored vector: nothing is embedded again.
    twin = _new_item(admin, client_id, document)
    again = _processor(backend).process_ids([twin], 60)
    assert again.done_ids == {twin} and again.embedded_chunks == 0 and again.reused_chunks == report.chunks

    hits = backend.search(_processor(backend).embedder.embed(["quokka lidar dock 3"])[0], 3, client_id)
    assert hits and {h.client_id for h in hits} == {client_id}
    assert hits[0].similarity >= hits[-1].similarity


def test_failure_is_recorded_the_same_way_on_both_backends(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    item_id = _new_item(admin, client_id, "Short text.")
    (claimed,) = backend.claim_items("w1", 60, 10, 3, item_ids=[item_id])
    assert backend.fail_item(item_id, "someone-else", "boom", 3, 0, False) is None  # not the lease holder
    assert backend.fail_item(item_id, "w1", "embeddings endpoint said no", 3, 0, False) == "failed"
    row = admin.execute("select status, attempts, last_error from knowledge_items where id = %s", (item_id,))
    assert row.fetchone() == {"status": "failed", "attempts": 1, "last_error": "embeddings endpoint said no"}
    (again,) = backend.claim_items("w2", 60, 10, 3, item_ids=[item_id])
    assert again.attempts == claimed.attempts + 1
    assert backend.release_items([item_id], "w2") == 1


def _chunk_rows(admin: psycopg.Connection[Any], item_id: uuid.UUID) -> dict[int, tuple[str, bool]]:
    rows = admin.execute(
        "select chunk_index, id, vector_indexed from knowledge_chunks where knowledge_item_id = %s",
        (item_id,),
    ).fetchall()
    return {r["chunk_index"]: (str(r["id"]), r["vector_indexed"]) for r in rows}


def test_processing_again_rewrites_only_the_chunks_that_changed(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    line = "Section {i} for {client}: the quokka fleet logs dock {i} wear nightly. "
    parts = [line.format(i=i, client=client_id) * 25 for i in range(6)]
    item_id = _new_item(admin, client_id, "\n\n".join(parts))
    first = _processor(backend).process_ids([item_id], 60)
    assert first.done_ids == {item_id} and first.chunks >= 6
    where_item = "where knowledge_item_id = %s"
    admin.execute(f"update knowledge_chunks set vector_indexed = true {where_item}", (item_id,))
    before = _chunk_rows(admin, item_id)

    # Processed again with nothing changed: every row stays as it is, still in the vector index.
    admin.execute("update knowledge_items set status = 'pending' where id = %s", (item_id,))
    again = _processor(backend).process_ids([item_id], 60)
    assert again.done_ids == {item_id} and again.embedded_chunks == 0
    assert _chunk_rows(admin, item_id) == before

    # A late section edited: the chunks before the edit are the same rows as before (the ones
    # after it moved in the text, so their character spans are rewritten with them).
    parts[4] = parts[4].replace("wear", "corrosion")
    admin.execute("update knowledge_items set content = %s where id = %s", ("\n\n".join(parts), item_id))
    edited = _processor(backend).process_ids([item_id], 60)
    assert edited.done_ids == {item_id}
    after = _chunk_rows(admin, item_id)
    assert set(after) == set(before)
    changed = sorted(index for index in after if after[index] != before[index])
    assert changed and changed == list(range(changed[0], len(after))) and changed[0] >= len(after) / 2
    assert_exact_chunk_set(admin, item_id)


def test_kept_embeddings_are_found_again_on_both_backends(backend: Store) -> None:
    from array import array

    tag = uuid.uuid4().hex  # hashes no stored chunk has
    vectors = {f"{tag}-{i}": array("f", [float(i + 1)] * 1536) for i in range(3)}
    assert backend.find_embeddings(list(vectors), "model-x", 1536) == {}
    assert backend.save_embeddings(vectors, "model-x", 1536) == 3
    assert backend.save_embeddings(vectors, "model-x", 1536) == 0  # kept once
    found = backend.find_embeddings([*vectors, f"{tag}-missing"], "model-x", 1536)
    assert {h: list(v) for h, v in found.items()} == {h: list(v) for h, v in vectors.items()}
    assert backend.find_embeddings(list(vectors), "model-y", 1536) == {}  # another model's are not reused


# --- PostgREST's db-max-rows ---

SMALL_MAX_ROWS = 50  # stands for Supabase's 1000, to keep the tests quick


@pytest.fixture
def small_postgrest(pg_url: str) -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn(pg_url, KEYS, max_rows=SMALL_MAX_ROWS) as server:
        yield server


def pending_items(admin: psycopg.Connection[Any], client_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    rows = admin.execute(
        "insert into knowledge_items (client_id, source, content)"
        " select %s, 'notes/' || n || '.md', 'Text ' || n from generate_series(1, %s) as n returning id",
        (client_id, count),
    ).fetchall()
    return [r["id"] for r in rows]


def leased_to(admin: psycopg.Connection[Any], worker: str) -> set[uuid.UUID]:
    rows = admin.execute(
        "select id from knowledge_items where status = 'processing' and lease_owner = %s", (worker,)
    ).fetchall()
    return {r["id"] for r in rows}


def test_stand_in_answers_at_most_max_rows_of_a_function_that_ran_in_full(
    small_postgrest: PostgrestStandIn, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    """What the store must allow for: asked for more than max rows, PostgREST leases them all
    and returns max rows of them."""
    ids = pending_items(admin, client_id, 2 * SMALL_MAX_ROWS)
    worker = f"worker-{uuid.uuid4()}"
    body = {"worker": worker, "lease_seconds": 60, "max_items": len(ids), "item_ids": [str(i) for i in ids]}
    service = {"apikey": SERVICE_ROLE_KEY, "authorization": f"Bearer {SERVICE_ROLE_KEY}"}
    with httpx.Client() as http:
        reply = http.post(
            f"{small_postgrest.url}/rest/v1/rpc/claim_knowledge_items", json=body, headers=service
        )
    assert reply.status_code == 200 and len(reply.json()) == SMALL_MAX_ROWS
    assert reply.headers["content-range"] == f"0-{SMALL_MAX_ROWS - 1}/*"
    assert leased_to(admin, worker) == set(ids)


@pytest.mark.parametrize("by_ids", [True, False], ids=["item-ids", "sweep"])
def test_claim_leases_only_what_comes_back(
    small_postgrest: PostgrestStandIn, admin: psycopg.Connection[Any], client_id: uuid.UUID, by_ids: bool
) -> None:
    ids = pending_items(admin, client_id, 2 * SMALL_MAX_ROWS)
    worker = f"worker-{uuid.uuid4()}"
    store = SupabaseStore(small_postgrest.url, SERVICE_ROLE_KEY, max_rows=SMALL_MAX_ROWS)
    try:
        claimed = store.claim_items(worker, 60, len(ids), 5, item_ids=ids if by_ids else None)
        leased = leased_to(admin, worker)
        assert len(claimed) == SMALL_MAX_ROWS
        assert leased == {item.id for item in claimed}  # no lease stranded beyond the answer
        store.release_items(sorted(leased), worker)
    finally:
        store.close()


def test_embedding_look_up_beyond_max_rows_goes_in_pages(small_postgrest: PostgrestStandIn) -> None:
    from array import array

    store = SupabaseStore(small_postgrest.url, SERVICE_ROLE_KEY, max_rows=SMALL_MAX_ROWS)
    try:
        tag = uuid.uuid4().hex
        vectors = {f"{tag}-{i}": array("f", [float(i + 1)] * 8) for i in range(2 * SMALL_MAX_ROWS + 7)}
        assert store.save_embeddings(vectors, "model-pages", 8) == len(vectors)
        found = store.find_embeddings(list(vectors), "model-pages", 8)
        assert {h: list(v) for h, v in found.items()} == {h: list(v) for h, v in vectors.items()}
        assert [c.function for c in small_postgrest.calls].count("find_chunk_embeddings") == 3
    finally:
        store.close()


def test_back_off_deferral_and_kept_summaries_behave_the_same_on_both_backends(
    backend: Store, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    provider = f"openai http://backend-test-{uuid.uuid4().hex[:8]}/v1"
    item_id = _new_item(admin, client_id, "An item the provider could not take, for now.")
    assert len(backend.claim_items("w1", 60, 1, 5, item_ids=[item_id])) == 1

    assert backend.provider_gate(provider, "w1", 120) == {"state": "closed", "claim": True, "probe": False}
    assert backend.defer_items([item_id], "w1", "HTTP 503", 30) == 1
    state = backend.record_provider_failure(provider, "HTTP 503", False, 45, 120)
    assert state["state"] == "open"
    gate = backend.provider_gate(provider, "w2", 120)
    assert (gate["claim"], gate["probe"], gate["last_error"]) == (False, False, "HTTP 503")
    row = stored(admin, item_id)
    assert (row["status"], row["attempts"], row["transient_failures"]) == ("pending", 0, 1)

    admin.execute("update provider_backoff set probe_at = now() where provider = %s", (provider,))
    probe = backend.provider_gate(provider, "w2", 120)
    assert (probe["claim"], probe["probe"]) == (True, True)
    assert backend.provider_gate(provider, "w3", 120)["claim"] is False  # one probe at a time
    assert backend.record_provider_success(provider) is True
    assert backend.provider_gate(provider, "w3", 120)["claim"] is True
    assert stored(admin, item_id)["next_attempt_at"] is None  # freed by the recovery

    key = uuid.uuid4().hex
    assert backend.save_summaries({key: "kept"}) == 1
    assert backend.find_summaries([key, "unknown"]) == {key: "kept"}
    facts = backend.schema_facts()
    assert facts["embedding_dimensions"] == 1536 and isinstance(facts["generations"], list)


# --- Supabase's API keys: the legacy service_role JWT and the new secret keys ---

PUBLISHABLE_KEY = "sb_publishable_Q9pXl2Vt0rUu3-cY6hN0dg_a1b2c3d4"
GATEWAY_KEYS = {**KEYS, PUBLISHABLE_KEY: "anon"}


@pytest.fixture
def gateway(pg_url: str) -> Iterator[PostgrestStandIn]:
    """PostgREST behind a gateway that checks the new API keys as Supabase's hosted one does."""
    with PostgrestStandIn(pg_url, GATEWAY_KEYS, api_key_gateway=True) as server:
        yield server


@pytest.mark.parametrize(
    ("key", "sent"),
    [(SECRET_KEY, {"apikey"}), (SERVICE_ROLE_KEY, {"apikey", "authorization"})],
    ids=["secret-key", "legacy-service-role-jwt"],
)
def test_each_kind_of_server_key_is_sent_as_supabase_expects(
    gateway: PostgrestStandIn, admin: psycopg.Connection[Any], client_id: uuid.UUID, key: str, sent: set[str]
) -> None:
    store = SupabaseStore(gateway.url, key)
    try:
        (outcome,) = store.ingest_items([row(client_id)])
        store.status()
    finally:
        store.close()
    assert outcome.outcome == "created" and count_items(admin, client_id) == 1
    assert [(c.function, c.role, c.status, c.credentials) for c in gateway.calls] == [
        ("ingest_knowledge_items", "service_role", 200, frozenset(sent)),
        ("knowledge_status", "service_role", 200, frozenset(sent)),
        ("client_budget_status", "service_role", 200, frozenset(sent)),
        ("provider_rate_status", "service_role", 200, frozenset(sent)),
        ("knowledge_freshness", "service_role", 200, frozenset(sent)),
    ]


def test_gateway_stand_in_refuses_a_new_key_as_a_bearer_token(gateway: PostgrestStandIn) -> None:
    """Why the store sends a secret key in `apikey` only: a new key is not a JWT."""
    rpc = f"{gateway.url}/rest/v1/rpc/knowledge_status"
    with httpx.Client() as http:
        both = http.post(
            rpc, json={}, headers={"apikey": SECRET_KEY, "authorization": f"Bearer {SECRET_KEY}"}
        )
        bearer_only = http.post(rpc, json={}, headers={"authorization": f"Bearer {SECRET_KEY}"})
        mixed = http.post(
            rpc, json={}, headers={"apikey": PUBLISHABLE_KEY, "authorization": f"Bearer {SECRET_KEY}"}
        )
        browser = http.post(rpc, json={}, headers={"apikey": SECRET_KEY, "user-agent": "Mozilla/5.0 (X11)"})
        apikey_only = http.post(rpc, json={}, headers={"apikey": SECRET_KEY})
        publishable = http.post(rpc, json={}, headers={"apikey": PUBLISHABLE_KEY})
    assert (both.status_code, both.json()["code"]) == (401, "PGRST301")
    assert (bearer_only.status_code, bearer_only.json()["message"]) == (401, "No API key found in request")
    assert (mixed.status_code, mixed.json()["message"]) == (401, "Invalid authorization header")
    assert browser.status_code == 401 and "browser" in browser.json()["message"]
    assert apikey_only.status_code == 200
    assert (publishable.status_code, publishable.json()["code"]) == (401, "42501")  # anon may not


def test_ingest_function_runs_on_supabase_secret_key_alone(
    function_env: pytest.MonkeyPatch,
    gateway: PostgrestStandIn,
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
) -> None:
    function_env.delenv("DATABASE_URL")
    function_env.setenv("SUPABASE_URL", gateway.url)
    function_env.setenv("SUPABASE_SECRET_KEY", SECRET_KEY)
    reset_settings()
    module = load_function("ingest")
    try:
        body = {"client_id": str(client_id), "source": "notes/a.md", "content": "Text."}
        status, _, created = call(module, url_event(body))
    finally:
        if isinstance(module.endpoint.store, SupabaseStore):
            module.endpoint.store.close()
    assert status == 201, created
    assert [(c.function, c.role, c.credentials) for c in gateway.calls] == [
        ("ingest_knowledge_items", "service_role", frozenset({"apikey"}))
    ]
    assert count_items(admin, client_id) == 1


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (
            {"SUPABASE_SERVICE_ROLE_KEY": PUBLISHABLE_KEY},
            "SUPABASE_SERVICE_ROLE_KEY is invalid: a publishable key",
        ),
        ({"SUPABASE_SECRET_KEY": PUBLISHABLE_KEY}, "SUPABASE_SECRET_KEY is invalid: a publishable key"),
        (
            {"SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY, "SUPABASE_SECRET_KEY": SECRET_KEY},
            "SUPABASE_SERVICE_ROLE_KEY is invalid: it differs from SUPABASE_SECRET_KEY",
        ),
    ],
    ids=["publishable-as-service-role-key", "publishable-as-secret-key", "both-set-differently"],
)
def test_a_key_that_is_not_one_server_key_is_refused_in_one_sentence(
    environ: dict[str, str], named: str
) -> None:
    from shared.config import load_settings

    with pytest.raises(ConfigError) as raised:
        load_settings({"SUPABASE_URL": "https://abc.supabase.co", **environ})
    message = str(raised.value)
    assert message.startswith(named) and message.count(".") == 1 and message.endswith(".")
    assert PUBLISHABLE_KEY not in message and SECRET_KEY not in message


@pytest.mark.parametrize(
    "environ",
    [
        {"SUPABASE_SECRET_KEY": SECRET_KEY},
        {"SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY},
        {"SUPABASE_SERVICE_ROLE_KEY": SECRET_KEY, "SUPABASE_SECRET_KEY": SECRET_KEY},
    ],
    ids=["secret-key-variable", "secret-key-in-service-role-variable", "both-the-same"],
)
def test_either_variable_holds_the_server_key(environ: dict[str, str]) -> None:
    from shared.config import load_settings
    from shared.store.backends import SUPABASE, store_backend

    settings = load_settings({"SUPABASE_URL": "https://abc.supabase.co", **environ})
    assert settings.supabase_service_role_key == SECRET_KEY
    assert store_backend(settings) == SUPABASE


def test_store_refuses_a_publishable_key(gateway: PostgrestStandIn) -> None:
    with pytest.raises(ConfigError, match=r"^SUPABASE_SERVICE_ROLE_KEY holds a publishable key"):
        SupabaseStore(gateway.url, PUBLISHABLE_KEY)
    assert gateway.calls == []
