"""Least privilege: each deployed function's database role (migration 20261205000100) does that
function's whole job through the real store, and nothing of the others' jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shared.gcal.store import PostgresTokenStore
from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore

RUNS = {
    "nexus_ingest": {"ingest_knowledge_items"},
    "nexus_process": {
        "claim_knowledge_items",
        "finish_knowledge_item",
        "finish_knowledge_items",
        "keep_unchanged_chunks",
        "complete_knowledge_item",
        "fail_knowledge_item",
        "release_knowledge_items",
        "defer_knowledge_items",
        "find_chunk_embeddings",
        "save_chunk_embeddings",
        "find_summaries",
        "save_summaries",
        "client_summary_backlog",
        "clients_with_summary_backlog",
        "save_client_summary",
        "index_pending_chunks",
        "begin_vector_index_build",
        "ensure_embedding_generation",
        "claim_generation_chunks",
        "store_generation_vectors",
        "release_generation_chunks",
        "provider_gate",
        "record_provider_failure",
        "record_provider_success",
        "knowledge_schema",
        "knowledge_status",
        "record_usage",
        "roll_up_usage",
        "client_budget_status",
        "take_provider_capacity",
        "provider_throttled",
        "provider_rate_status",
        "knowledge_freshness",
        "document_pages",
        "save_document_pages",
        "drop_document_pages",
        "save_item_outlines",
    },
    "nexus_search": {
        "chunk_locations",
        "match_knowledge_chunks",
        "match_knowledge_chunks_hybrid",
        "knowledge_schema",
        "record_usage",
    },
    "nexus_gcal": {
        "read_google_token",
        "list_google_tokens",
        "put_google_token",
        "claim_google_token_refresh",
        "finish_google_token_refresh",
        "reencrypt_google_token",
    },
}


@pytest.fixture
def role_url(db_url: str, db: psycopg.Connection[Any]) -> Iterator[Any]:
    """The test database's DSN as one of the roles, given a login for the test."""
    used: list[str] = []

    def url(role: str) -> str:
        db.execute(f"alter role {role} login")
        used.append(role)
        return make_conninfo(db_url, user=role)

    yield url
    for role in used:
        db.execute(f"alter role {role} nologin")


def item_row(client_id: uuid.UUID, content: str) -> dict[str, Any]:
    return {"client_id": str(client_id), "source": "roles", "content": content, "metadata": {}}


def test_each_role_runs_exactly_its_functions(db: psycopg.Connection[Any]) -> None:
    for role, expected in RUNS.items():
        runnable = {
            row["proname"]
            for row in db.execute(
                "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                "where n.nspname = 'public' and has_function_privilege(%s, p.oid, 'execute') "
                # pgvector's own functions (in `public` on a bare Postgres) are everyone's
                "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')",
                (role,),
            )
        }
        assert runnable == expected, role


def test_ingest_stores_items_and_can_do_nothing_else(role_url: Any, db_client: uuid.UUID) -> None:
    store = PostgresStore(ConnectionHolder(role_url("nexus_ingest")))
    try:
        (outcome,) = store.ingest_items([item_row(db_client, "A note the ingest role may store.")])
        assert outcome.outcome == "created" and outcome.item_id is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            store.claim_items("intruder", 60, 10, 5)
    finally:
        store.close()
    with psycopg.connect(role_url("nexus_ingest"), autocommit=True) as conn:
        for statement in (
            "select * from system_config",
            "select * from knowledge_chunks",
            "select public.read_google_token('google_oauth_token')",
            "delete from knowledge_items",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_process_does_the_whole_job_and_cannot_read_tokens(
    role_url: Any, db_client: uuid.UUID, db: psycopg.Connection[Any]
) -> None:
    ingest = PostgresStore(ConnectionHolder(role_url("nexus_ingest")))
    store = PostgresStore(ConnectionHolder(role_url("nexus_process")))
    try:
        text = "\n\n".join(f"Paragraph {i}: the process role writes chunks and summaries." for i in range(40))
        (outcome,) = ingest.ingest_items([item_row(db_client, text)])
        report = Processor(store, LocalEmbedder(), LocalSummarizer(), chunk_tokens=60).process_ids(
            [outcome.item_id], 60.0
        )
        assert report.done == 1 and report.chunks > 1, report
        assert store.client_summary(db_client)
        assert store.status()["counts"].get("done", 0) >= 1
    finally:
        ingest.close()
        store.close()
    stored = db.execute(
        "select count(*) as n from knowledge_chunks where knowledge_item_id = %s", (outcome.item_id,)
    )
    assert stored.fetchone()["n"] == report.chunks
    with psycopg.connect(role_url("nexus_process"), autocommit=True) as conn:
        for statement in (
            "select * from system_config",
            "select public.read_google_token('google_oauth_token')",
            "select * from public.ingest_knowledge_items('[]'::jsonb)",
            "insert into clients (id) values (gen_random_uuid())",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_gcal_keeps_tokens_and_sees_no_knowledge(role_url: Any) -> None:
    tokens = PostgresTokenStore(ConnectionHolder(role_url("nexus_gcal")))
    try:
        tokens.put("google_oauth_token:roles", {"secrets": "ciphertext", "status": "ok"})
        assert (tokens.read("google_oauth_token:roles") or {}).get("status") == "ok"
    finally:
        tokens.close()
    with psycopg.connect(role_url("nexus_gcal"), autocommit=True) as conn:
        for statement in (
            "select * from knowledge_items",
            "select * from knowledge_chunks",
            "select * from public.claim_knowledge_items('intruder', 10, 60)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_search_finds_chunks_records_its_cost_and_can_do_nothing_else(
    role_url: Any, db_client: uuid.UUID, db: psycopg.Connection[Any], openai_server: Any
) -> None:
    from shared.config import Settings
    from shared.providers.embeddings import OpenAIEmbedder
    from shared.search.service import search

    text = "The search role reads chunks. Fault E-212 means the valve is stuck."
    db.execute(
        "insert into knowledge_items (client_id, source, content) values (%s, 'roles', %s)", (db_client, text)
    )
    process = PostgresStore(ConnectionHolder(role_url("nexus_process")))
    embedder = OpenAIEmbedder("sk-roles", base_url=openai_server.base_url)
    try:
        assert Processor(process, embedder, LocalSummarizer()).sweep(lambda: 60.0).done == 1
    finally:
        process.close()
        embedder.close()
    settings = Settings(
        embedding_provider="openai", openai_api_key="sk-roles", openai_base_url=openai_server.base_url
    )
    store = PostgresStore(ConnectionHolder(role_url("nexus_search")))
    try:
        for mode in ("hybrid", "vector", "text"):
            hits = search(store, settings, "fault E-212", 5, db_client, mode=mode)  # type: ignore[arg-type]
            assert hits and "E-212" in hits[0].content, mode
    finally:
        store.close()
    # the two queries that were embedded are on record, as the client's searches
    searches = db.execute(
        "select count(*) as n from usage_records where purpose = 'search' and client_id = %s", (db_client,)
    ).fetchone()
    assert searches == {"n": 2}
    with psycopg.connect(role_url("nexus_search"), autocommit=True) as conn:
        for statement in (
            "select * from system_config",
            "select * from client_summaries",
            "select * from public.claim_knowledge_items('intruder', 10, 60)",
            "update knowledge_items set content = 'x'",
            "delete from knowledge_chunks",
            "select * from usage_records",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_functions_that_run_as_their_owner_search_pg_catalog_first(db: psycopg.Connection[Any]) -> None:
    """A security definer function whose search_path put `public` first would run whatever a role
    able to create objects there named like a built-in, with the owner's rights."""
    rows = db.execute(
        "select p.oid::regprocedure::text as name, p.proconfig from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace where p.prosecdef and n.nspname in ('public', 'nexus')"
    ).fetchall()
    assert len(rows) >= 4
    for row in rows:
        path = next((c for c in row["proconfig"] or [] if c.startswith("search_path=")), "")
        assert path.partition("=")[2].split(",")[0].strip() == "pg_catalog", row["name"]
