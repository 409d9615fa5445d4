"""Rebuilding the HNSW index in bulk when most chunks wait for it (`…_bulk_vector_index.sql`):
when it happens and when it does not, that searches rank through the rebuilt graph, that one
worker builds at a time, and that a build a worker died in is finished by the next."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shared.process.budgets import INDEX_BUILD_MIN_ROWS, index_build_rows
from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore, _concurrent_index_statements
from tests.shared.store.test_vector_index import (
    HNSW_INDEX,
    awaiting_index,
    exact_top,
    hnsw_scans,
    random_vectors,
    search,
    store_chunks,
)


def index_state(conn: psycopg.Connection[Any]) -> tuple[int, bool] | None:
    """(oid, valid) of the HNSW index, None when it does not exist."""
    row = conn.execute(
        "select i.indexrelid::oid::int as oid, i.indisvalid as valid from pg_index i "
        "where i.indexrelid = to_regclass(%s)",
        (f"public.{HNSW_INDEX}",),
    ).fetchone()
    return None if row is None else (row["oid"], row["valid"])


def leases(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return conn.execute("select index_name, worker from vector_index_builds").fetchall()


def begin(store: PostgresStore, worker: str, lease_s: float = 60.0, max_rows: int = 10**9) -> Any:
    arguments = {"worker": worker, "lease_s": lease_s, "min_rows": INDEX_BUILD_MIN_ROWS, "max_rows": max_rows}
    return store._value("begin_vector_index_build", arguments)


def test_a_large_backlog_is_built_in_bulk_and_searched_through_the_graph(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    vectors = random_vectors(INDEX_BUILD_MIN_ROWS + 100, seed=21)
    store_chunks(db, db_client, vectors[:50], indexed=True)
    store_chunks(db, db_client, vectors[50:], indexed=False)
    before = index_state(db)
    assert before is not None

    moved = Processor(db_store, LocalEmbedder(), LocalSummarizer()).index_pending(lambda: 600.0)

    assert moved == len(vectors) - 50
    assert awaiting_index(db) == 0
    after = index_state(db)
    assert after is not None and after[1] and after[0] != before[0], "the index was not rebuilt"
    assert leases(db) == []
    db.execute("set enable_sort = off")
    scans = hnsw_scans(db)
    query = vectors[300]
    hits = [uuid.UUID(str(h["id"])) for h in search(db, query, 5, db_client)]
    assert hits[0] == exact_top(db, query, 1, db_client)[0]
    assert hnsw_scans(db) > scans, "the search did not use the rebuilt index"


@pytest.mark.parametrize(
    ("indexed", "waiting", "max_rows"),
    [
        (0, INDEX_BUILD_MIN_ROWS - 1, 10**9),  # too few waiting: inserts are cheap enough
        (400, 400, 10**9),  # as many indexed as waiting: inserting costs less than rebuilding
        (0, INDEX_BUILD_MIN_ROWS + 10, INDEX_BUILD_MIN_ROWS),  # more rows than the time allows
    ],
)
def test_rows_go_in_one_by_one_when_a_rebuild_does_not_pay(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    indexed: int,
    waiting: int,
    max_rows: int,
) -> None:
    vectors = random_vectors(indexed + waiting, seed=22)
    if indexed:
        store_chunks(db, db_client, vectors[:indexed], indexed=True)
    store_chunks(db, db_client, vectors[indexed:], indexed=False)
    before = index_state(db)
    assert db_store.build_vector_index("w1", 60.0, INDEX_BUILD_MIN_ROWS, max_rows) is None
    assert index_state(db) == before and awaiting_index(db) == waiting and leases(db) == []


def test_the_time_left_bounds_the_rows_a_rebuild_may_cover() -> None:
    assert index_build_rows(0.5) == 0  # fewer than INDEX_BUILD_MIN_ROWS would fit
    assert index_build_rows(10.0) == 5000
    assert index_build_rows(float("inf")) > 10**12


def test_one_worker_builds_at_a_time_and_a_dead_workers_build_is_finished(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    store_chunks(db, db_client, random_vectors(INDEX_BUILD_MIN_ROWS + 20, seed=23), indexed=False)
    definition = begin(db_store, "dies", lease_s=0.5)
    assert definition and definition.startswith("CREATE INDEX")
    assert begin(db_store, "other") is None, "a second worker started while the lease runs"
    # The first worker dropped the index and died before creating it again.
    db.execute(f"drop index {HNSW_INDEX}")
    db.execute("update vector_index_builds set lease_until = now() - interval '1 second'")

    moved = db_store.build_vector_index("next", 60.0, INDEX_BUILD_MIN_ROWS, 10**9)

    assert moved == INDEX_BUILD_MIN_ROWS + 20
    state = index_state(db)
    assert state is not None and state[1]
    assert awaiting_index(db) == 0 and leases(db) == []


def test_an_index_dropped_on_purpose_is_not_brought_back(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    store_chunks(db, db_client, random_vectors(INDEX_BUILD_MIN_ROWS + 20, seed=24), indexed=False)
    db.execute(f"drop index {HNSW_INDEX}")
    assert db_store.build_vector_index("w", 60.0, INDEX_BUILD_MIN_ROWS, 10**9) is None
    assert index_state(db) is None


def test_a_role_that_does_not_own_the_table_moves_rows_instead(
    db_url: str, db: psycopg.Connection[Any], db_client: uuid.UUID
) -> None:
    store_chunks(db, db_client, random_vectors(INDEX_BUILD_MIN_ROWS + 20, seed=25), indexed=False)
    before = index_state(db)
    db.execute("alter role nexus_process login")
    store = PostgresStore(ConnectionHolder(make_conninfo(db_url, user="nexus_process")))
    try:
        assert store.build_vector_index("w", 60.0, INDEX_BUILD_MIN_ROWS, 10**9) is None
        moved = Processor(store, LocalEmbedder(), LocalSummarizer()).index_pending(lambda: 600.0)
    finally:
        store.close()
        db.execute("alter role nexus_process nologin")
    assert moved == INDEX_BUILD_MIN_ROWS + 20 and awaiting_index(db) == 0
    assert index_state(db) == before


def test_concurrent_statements_come_from_the_catalogs_definition() -> None:
    name, statement = _concurrent_index_statements(
        "CREATE INDEX knowledge_chunks_embedding_hnsw_half ON public.knowledge_chunks USING hnsw "
        "(((embedding)::extensions.halfvec(1536)) extensions.halfvec_cosine_ops) WHERE vector_indexed"
    )
    assert name == "knowledge_chunks_embedding_hnsw_half"
    assert statement.startswith("CREATE INDEX CONCURRENTLY knowledge_chunks_embedding_hnsw_half ON public.")
    assert _concurrent_index_statements("CREATE UNIQUE INDEX ix ON t (x)") == (
        "ix",
        "CREATE UNIQUE INDEX CONCURRENTLY ix ON t (x)",
    )


def test_a_generations_backfill_gets_its_index_built_in_bulk(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    store_chunks(db, db_client, random_vectors(INDEX_BUILD_MIN_ROWS + 30, seed=26), indexed=True)
    db_store.ensure_generation("a-model", 1536)
    generation = db_store.start_generation("a-model", 512)
    name = f"chunk_vectors_hnsw_g{generation.id}"
    # the backfill's vectors, loaded outside the generation's index
    db.execute(
        "insert into chunk_vectors (knowledge_item_id, chunk_index, generation_id, client_id, embedding) "
        "select knowledge_item_id, chunk_index, %s, client_id, subvector(embedding, 1, 512) "
        "from knowledge_chunks",
        (generation.id,),
    )
    before = db.execute("select to_regclass(%s)::oid::int as oid", (name,)).fetchone()

    moved = Processor(db_store, LocalEmbedder(), LocalSummarizer()).index_pending(lambda: 600.0)

    assert moved == INDEX_BUILD_MIN_ROWS + 30
    after = db.execute(
        "select i.indexrelid::int as oid, i.indisvalid as valid from pg_index i "
        "where i.indexrelid = to_regclass(%s)",
        (name,),
    ).fetchone()
    assert before is not None and after is not None and after["valid"] and after["oid"] != before["oid"]
    waiting = db.execute("select count(*) as n from chunk_vectors where not vector_indexed").fetchone()
    assert waiting is not None and waiting["n"] == 0 and leases(db) == []


def test_the_parallelism_of_writes_and_index_moves_is_a_setting(db_url: str) -> None:
    from shared.config import load_settings
    from shared.errors import ConfigError
    from shared.store.backends import store_from_settings

    store = store_from_settings(load_settings({"DATABASE_URL": db_url, "NEXUS_WRITE_CONNECTIONS": "3"}))
    try:
        assert isinstance(store, PostgresStore) and store.write_connections == 3
    finally:
        store.close()
    with pytest.raises(ConfigError, match="NEXUS_WRITE_CONNECTIONS"):
        load_settings({"DATABASE_URL": db_url, "NEXUS_WRITE_CONNECTIONS": "0"})
