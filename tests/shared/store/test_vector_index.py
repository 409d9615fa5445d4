"""The deferred vector index: chunks are stored outside the HNSW graph and moved into it after
their items are done; search stays exact for rows not moved yet; concurrent indexers move each
row once; rows stored before the migration count as indexed."""

from __future__ import annotations

import math
import random
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.store.database import ConnectionHolder
from shared.store.migrations import MIGRATIONS_DIR, apply_migrations
from shared.store.postgres import PostgresStore
from shared.store.vectors import to_pgvector_text
from tests.support.process_helpers import assert_exact_chunk_set, document, insert_items

HNSW_INDEX = "knowledge_chunks_embedding_hnsw_half"


def awaiting_index(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) as n from knowledge_chunks where not vector_indexed").fetchone()
    assert row is not None
    return int(row["n"])


def unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def random_vectors(count: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [unit([rng.gauss(0, 1) for _ in range(1536)]) for _ in range(count)]


def store_chunks(
    conn: psycopg.Connection[Any], client_id: uuid.UUID, vectors: list[list[float]], indexed: bool
) -> list[uuid.UUID]:
    """One done item holding a chunk per vector, written straight to the table."""
    item = insert_items(conn, client_id, [f"vectors {uuid.uuid4()}"])[0]
    ids = []
    with conn.transaction():
        for index, vector in enumerate(vectors):
            row = conn.execute(
                "insert into knowledge_chunks (knowledge_item_id, chunk_index, content, embedding, "
                "client_id, vector_indexed) values (%s, %s, %s, %s::vector, %s, %s) returning id",
                (item, index, f"chunk {index}", to_pgvector_text(vector), client_id, indexed),
            ).fetchone()
            assert row is not None
            ids.append(uuid.UUID(str(row["id"])))
    return ids


def exact_top(
    conn: psycopg.Connection[Any], query: list[float], k: int, client_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    rows = conn.execute(
        "select id from knowledge_chunks where %s::uuid is null or client_id = %s "
        "order by embedding <=> %s::vector limit %s",
        (client_id, client_id, to_pgvector_text(query), k),
    ).fetchall()
    return [uuid.UUID(str(r["id"])) for r in rows]


def hnsw_scans(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "select idx_scan from pg_stat_user_indexes where indexrelname = %s", (HNSW_INDEX,)
    ).fetchone()
    assert row is not None
    return int(row["idx_scan"])


def search(
    conn: psycopg.Connection[Any], query: list[float], k: int, client_id: uuid.UUID | None
) -> list[Any]:
    rows = conn.execute(
        "select id, similarity from match_knowledge_chunks(%s::vector, %s, %s)",
        (to_pgvector_text(query), k, client_id),
    ).fetchall()
    conn.execute("select pg_stat_force_next_flush()")
    return rows


def test_a_sweep_stores_chunks_outside_the_graph_then_moves_every_one_into_it(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    ids = insert_items(
        db, db_client, [document(random.Random(i), 3 + i, 120, tag=f"d{i}") for i in range(12)]
    )
    # Processing alone leaves the chunks outside the graph, their items done.
    processor = Processor(db_store, LocalEmbedder(), LocalSummarizer())
    report = processor.process_claimed(db_store.claim_items(processor.worker, 60, 100, 5))
    assert report.done == 12 and report.indexed_chunks == 0
    chunks = sum(assert_exact_chunk_set(db, item_id) for item_id in ids)
    assert awaiting_index(db) == chunks > 12
    assert db_store.status()["chunks_awaiting_index"] == chunks

    # The next sweep finds nothing to claim and spends its time on the index.
    report = processor.sweep(lambda: 60.0)
    assert (report.claimed, report.indexed_chunks) == (0, chunks)
    assert awaiting_index(db) == 0
    assert db_store.status()["chunks_awaiting_index"] == 0


def test_item_triggers_index_what_they_stored(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    ids = insert_items(
        db, db_client, [document(random.Random(7), 4, 150, "a"), document(random.Random(8), 6, 150, "b")]
    )
    report = Processor(db_store, LocalEmbedder(), LocalSummarizer()).process_ids(ids, 60)
    assert report.done == 2
    assert report.indexed_chunks == report.chunks > 2
    assert awaiting_index(db) == 0


def test_indexing_stops_at_its_budget_and_leaves_the_rest(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    store_chunks(db, db_client, random_vectors(40, seed=1), indexed=False)
    processor = Processor(db_store, LocalEmbedder(), LocalSummarizer())
    assert processor.index_pending(lambda: 600.0, budget_s=0.0) == 0
    assert processor.index_pending(lambda: 1.0) == 0  # under INDEX_RESERVE_S
    assert awaiting_index(db) == 40
    assert processor.index_pending(lambda: 600.0) == 40
    assert awaiting_index(db) == 0


def test_search_is_exact_over_indexed_and_waiting_rows(
    db: psycopg.Connection[Any], db_client: uuid.UUID
) -> None:
    other_client = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other_client,))
    vectors = random_vectors(60, seed=3)
    query = vectors[0]
    # The query's nearest rows are in both states: its own vector (distance 0) waits outside the
    # graph, a slight variation of it is indexed, and another client holds an exact copy.
    near = unit([v + 0.05 * n for v, n in zip(query, random_vectors(1, seed=4)[0], strict=True)])
    waiting = store_chunks(db, db_client, [query, *vectors[1:30]], indexed=False)
    indexed = store_chunks(db, db_client, [near, *vectors[30:]], indexed=True)
    copy = store_chunks(db, other_client, [query], indexed=False)

    # On a table this small the planner rightly sorts a client's rows instead of walking the
    # graph; with sorts priced out, the indexed part must be able to use the partial HNSW index.
    db.execute("set enable_sort = off")
    before = hnsw_scans(db)
    hits = search(db, query, 5, db_client)
    assert [uuid.UUID(str(h["id"])) for h in hits] == exact_top(db, query, 5, db_client)
    assert uuid.UUID(str(hits[0]["id"])) == waiting[0] and hits[0]["similarity"] == pytest.approx(1.0)
    assert uuid.UUID(str(hits[1]["id"])) == indexed[0]
    assert hnsw_scans(db) > before, "the indexed rows were not ranked through the HNSW index"

    everyone = [uuid.UUID(str(h["id"])) for h in search(db, query, 3, None)]
    assert set(everyone[:2]) == {waiting[0], copy[0]}  # both at distance 0, in either order
    assert everyone[2] == indexed[0]


def test_concurrent_indexers_move_each_row_once(
    db_url: str, db: psycopg.Connection[Any], db_client: uuid.UUID
) -> None:
    for seed in range(4):
        store_chunks(db, db_client, random_vectors(50, seed=10 + seed), indexed=False)
    stores = [PostgresStore(ConnectionHolder(db_url), write_connections=2) for _ in range(4)]
    moved: list[int] = []
    barrier = threading.Barrier(len(stores))

    def index(store: PostgresStore) -> None:
        barrier.wait()
        total = 0
        while n := store.index_chunks(64):
            total += n
        moved.append(total)

    threads = [threading.Thread(target=index, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sum(moved) == 200 and len(moved) == 4
    assert awaiting_index(db) == 0


def test_rows_stored_before_the_migration_count_as_indexed(
    admin: psycopg.Connection[Any], pg_url: str, tmp_path: Path
) -> None:
    migration = next(MIGRATIONS_DIR.glob("*_deferred_vector_index.sql"))
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < migration.name:
            shutil.copy(path, earlier / path.name)
    name = f"nexus_mig_{uuid.uuid4().hex[:12]}"
    admin.execute(f"create database {name}")
    try:
        url = psycopg.conninfo.make_conninfo(pg_url, dbname=name)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            apply_migrations(conn, directory=earlier)
            client_id = uuid.uuid4()
            conn.execute("insert into clients (id) values (%s)", (client_id,))
            item = insert_items(conn, client_id, ["before"])[0]
            conn.execute(
                "insert into knowledge_chunks (knowledge_item_id, chunk_index, content, embedding, "
                "client_id) values (%s, 0, 'old', %s::vector, %s)",
                (item, to_pgvector_text(random_vectors(1, seed=5)[0]), client_id),
            )
            assert apply_migrations(conn)[0] == migration.name
            conn.execute(
                "insert into knowledge_chunks (knowledge_item_id, chunk_index, content, embedding, "
                "client_id) values (%s, 1, 'new', %s::vector, %s)",
                (item, to_pgvector_text(random_vectors(1, seed=6)[0]), client_id),
            )
            rows = conn.execute(
                "select content, vector_indexed from knowledge_chunks order by chunk_index"
            ).fetchall()
            assert [(r["content"], r["vector_indexed"]) for r in rows] == [("old", True), ("new", False)]
    finally:
        admin.execute(f"drop database if exists {name} with (force)")
