"""Embedding generations on the real database, against the local OpenAI-compatible server: a
database processed at 1536 dimensions moves to 512 and back while search answers throughout,
paying once per chunk per generation; a backfill killed part way resumes without paying again
for what it stored; settings that name no generation are refused before any call; RLS holds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from array import array
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.cli.embeddings import plan_figures
from shared.config import Settings
from shared.errors import ConfigError, RefusedByDatabase
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.search.service import search
from shared.store.postgres import PostgresStore
from shared.store.rows import GenerationChunk
from shared.store.vectors import to_pgvector_text
from tests.shared.store.test_rls import acting_as, user_claims
from tests.support.openai_server import OpenAIServer
from tests.support.process_helpers import document, insert_items

API_KEY = "sk-test-generations-0123456789"
MODEL = "text-embedding-3-small"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def server(openai_server: OpenAIServer) -> OpenAIServer:
    return openai_server  # the session's local server, reset for the test


@pytest.fixture
def embedder(server: OpenAIServer) -> Iterator[OpenAIEmbedder]:
    made = OpenAIEmbedder(API_KEY, base_url=server.base_url)
    yield made
    made.close()


def settings_for(server: OpenAIServer, db_url: str, dimensions: int = 1536) -> Settings:
    return Settings(
        database_url=db_url,
        embedding_provider="openai",
        openai_api_key=API_KEY,
        openai_base_url=server.base_url,
        embedding_dimensions=dimensions,
    )


def sweep(store: Any, embedder: OpenAIEmbedder) -> Any:
    return Processor(store, embedder, LocalSummarizer()).sweep(lambda: 600.0)


def inputs_at(server: OpenAIServer, dimensions: int) -> int:
    """Inputs the server embedded at `dimensions` so far."""
    return sum(inputs for _, size, inputs in server.stats.embedding_shapes if size == dimensions)


def count(db: psycopg.Connection[Any], query: str, *args: Any) -> int:
    row = db.execute(query, args).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def processed_database(
    db: psycopg.Connection[Any], store: PostgresStore, embedder: OpenAIEmbedder, client: uuid.UUID, items: int
) -> tuple[list[uuid.UUID], int, int]:
    """`items` documents for `client` processed at 1536; (ids, chunks, distinct chunk texts)."""
    rng = random.Random(7)
    ids = insert_items(db, client, [document(rng, 6, 90, tag=f"doc{i}") for i in range(items)])
    # two items share their text: one vector per text, whichever generation
    ids += insert_items(db, client, [document(random.Random(7), 6, 90, tag="doc0")])
    assert sweep(store, embedder).done == len(ids)
    chunks = count(db, "select count(*) from knowledge_chunks")
    texts = count(db, "select count(distinct content_sha256) from knowledge_chunks")
    assert chunks > texts > items
    return ids, chunks, texts


def test_a_database_moves_to_512_and_back_with_search_answering_throughout(
    db: psycopg.Connection[Any],
    db_url: str,
    db_store: PostgresStore,
    db_client: uuid.UUID,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    ids, chunks, texts = processed_database(db, db_store, embedder, db_client, items=6)
    settings = settings_for(server, db_url)  # NEXUS_EMBEDDING_DIMENSIONS stays 1536 throughout

    # plan: the figures, and no call
    requests = server.stats.requests
    plan = plan_figures(db_store.plan_generation(MODEL, 512), MODEL, 512)
    tokens = count(
        db,
        "select sum(t) from (select max(token_count) as t from knowledge_chunks group by content_sha256) s",
    )
    assert (plan["chunks_total"], plan["texts_total"], plan["inputs_to_embed"]) == (chunks, texts, texts)
    assert plan["tokens_to_embed"] == tokens and plan["requests"] == 1
    assert plan["estimated_usd"] == pytest.approx(tokens / 1e6 * 0.02, abs=1e-6)
    assert db_store.plan_generation(MODEL, 1536)["inputs_to_embed"] == 0  # all stored already
    assert server.stats.requests == requests

    # start: searches keep answering from 1536 while sweeps fill 512
    generation = db_store.start_generation(MODEL, 512)
    assert (generation.state, generation.storage) == ("building", "table")
    hits = search(db_store, settings, "doc3 part 2", 3, db_client)
    assert hits and server.stats.embedding_shapes[-1] == (MODEL, 1536, 1)
    report = sweep(db_store, embedder)
    assert (report.claimed, report.generation_chunks, report.generation_embedded) == (0, chunks, texts)
    assert inputs_at(server, 512) == texts  # one input per distinct text, no more
    state = {g["id"]: g for g in db_store.generations_status()}[generation.id]
    assert (state["state"], state["chunks_embedded"], state["chunks_total"]) == ("ready", chunks, chunks)

    # cutover: search and the query embedder use 512
    answer = db_store.cutover_generation()
    assert answer["active"]["id"] == generation.id and answer["retired"]["dimensions"] == 1536
    hits = search(db_store, settings, "doc3 part 2", 3, db_client)
    assert server.stats.embedding_shapes[-1] == (MODEL, 512, 1)
    assert {h.knowledge_item_id for h in hits} <= set(ids)

    # rollback: 1536 again, and nothing is embedded for either generation
    embedded = server.stats.embedding_inputs
    db_store.rollback_generation()
    hits = search(db_store, settings, "doc3 part 2", 3, db_client)
    assert hits and server.stats.embedding_shapes[-1] == (MODEL, 1536, 1)
    report = sweep(db_store, embedder)
    assert (report.embedded_chunks, report.generation_embedded) == (0, 0)

    # processing unchanged items again embeds nothing for either generation
    db.execute("update knowledge_items set status = 'pending' where id = any(%s)", (ids,))
    report = sweep(db_store, embedder)
    assert report.done == len(ids) and (report.embedded_chunks, report.generation_embedded) == (0, 0)
    assert server.stats.embedding_inputs == embedded + 1  # the one query above
    assert count(db, "select count(*) from chunk_vectors where generation_id = %s", generation.id) == chunks


def test_while_512_is_active_new_items_store_their_vectors_there(
    db: psycopg.Connection[Any],
    db_url: str,
    db_store: PostgresStore,
    db_client: uuid.UUID,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    processed_database(db, db_store, embedder, db_client, items=2)
    generation = db_store.start_generation(MODEL, 512)
    sweep(db_store, embedder)
    db_store.cutover_generation()

    new = insert_items(db, db_client, [document(random.Random(99), 5, 80, tag="fresh")])[0]
    report = sweep(db_store, embedder)  # settings still name 1536: the retired generation
    assert report.done == 1
    rows = db.execute(
        "select c.embedding is null as bare, v.generation_id, vector_dims(v.embedding) as dims "
        "from knowledge_chunks c left join chunk_vectors v using (knowledge_item_id, chunk_index) "
        "where c.knowledge_item_id = %s",
        (new,),
    ).fetchall()
    assert rows and all(r["bare"] and r["generation_id"] == generation.id and r["dims"] == 512 for r in rows)
    assert (
        count(db, "select count(*) from chunk_vectors where not vector_indexed") == 0
    )  # moved into the graph
    # freshness reads the active generation's table: every item done in the hour is in its index
    fresh = db_store.status()["freshness"]
    assert fresh["indexed_in_window"] == fresh["done_in_window"] == 4
    text = db.execute(
        "select content from knowledge_chunks where knowledge_item_id = %s limit 1", (new,)
    ).fetchone()
    assert text is not None  # the server's vectors are exact only for the same text
    hits = search(db_store, settings_for(server, db_url), text["content"], 1, db_client)
    assert hits[0].knowledge_item_id == new and hits[0].similarity == pytest.approx(1.0, abs=1e-3)


def test_settings_that_name_no_generation_are_refused_before_any_call(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    processed_database(db, db_store, embedder, db_client, items=1)
    db_store.start_generation(MODEL, 512)
    insert_items(db, db_client, ["A note that must wait for settings that agree."])
    requests = server.stats.requests
    other = OpenAIEmbedder(API_KEY, dimensions=256, base_url=server.base_url)
    try:
        with pytest.raises(ConfigError) as refused:
            Processor(db_store, other, LocalSummarizer()).sweep(lambda: 600.0)
    finally:
        other.close()
    assert "are text-embedding-3-small / 256" in str(refused.value)
    assert "nexus embeddings start" in str(refused.value)
    assert server.stats.requests == requests
    # settings naming the generation being built are fine: processing writes the active one
    building = OpenAIEmbedder(API_KEY, dimensions=512, base_url=server.base_url)
    try:
        assert Processor(db_store, building, LocalSummarizer()).sweep(lambda: 600.0).done == 1
    finally:
        building.close()


def test_generations_refuse_what_they_cannot_do(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID, embedder: OpenAIEmbedder
) -> None:
    with pytest.raises(RefusedByDatabase, match="No embedding generation is active yet"):
        db_store.start_generation(MODEL, 512)
    processed_database(db, db_store, embedder, db_client, items=1)
    with pytest.raises(RefusedByDatabase, match="nothing to do"):
        db_store.start_generation(MODEL, 1536)
    generation = db_store.start_generation(MODEL, 512)
    with pytest.raises(RefusedByDatabase, match="is already building"):
        db_store.start_generation(MODEL, 256)
    assert "missing" in db_store.cutover_generation()  # nothing filled yet: not switched
    with pytest.raises(RefusedByDatabase, match="No retired generation"):
        db_store.rollback_generation()
    with pytest.raises(RefusedByDatabase, match="is active"):
        db_store.drop_generation(1)
    chunk = db.execute(
        "select knowledge_item_id, chunk_index, content, content_sha256, token_count "
        "from knowledge_chunks limit 1"
    ).fetchone()
    assert chunk is not None
    with pytest.raises(RefusedByDatabase, match="has 3 dimensions; it needs 512"):
        db_store.store_generation_vectors(
            generation.id, "w", [GenerationChunk(**chunk)], [array("f", [1, 0, 0])]
        )
    dropped = db_store.drop_generation(generation.id)
    assert dropped.id == generation.id
    assert (
        count(
            db, "select count(*) from pg_indexes where indexname = %s", f"chunk_vectors_hnsw_g{generation.id}"
        )
        == 0
    )


KILLED_FILL = """
import sys
import shared.process.generations as generations
from shared.process.generations import GenerationFill
from shared.providers.embeddings import OpenAIEmbedder
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore
from shared.store.rows import Generation

dsn, base_url, generation_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
generations.FILL_BATCH_CHUNKS = 8
store = PostgresStore(ConnectionHolder(dsn))
generation = Generation(generation_id, "text-embedding-3-small", 512, "building", "table", True)
fill = GenerationFill(store, OpenAIEmbedder("sk-killed", base_url=base_url), "killed")
fill.fill(generation, lambda: 600.0)
print("finished", flush=True)
"""


def test_a_backfill_killed_part_way_resumes_without_paying_again(
    db: psycopg.Connection[Any],
    db_url: str,
    db_store: PostgresStore,
    db_client: uuid.UUID,
    embedder: OpenAIEmbedder,
) -> None:
    _, chunks, texts = processed_database(db, db_store, embedder, db_client, items=8)
    generation = db_store.start_generation(MODEL, 512)
    with OpenAIServer(latency_ms=150) as slow:
        worker = subprocess.Popen(
            [sys.executable, "-c", KILLED_FILL, db_url, slow.base_url, str(generation.id)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while count(db, "select count(*) from chunk_vectors") < 16:  # two batches stored
                assert worker.poll() is None and time.monotonic() < deadline, "the worker never stored"
            os.kill(worker.pid, signal.SIGKILL)
        finally:
            worker.wait()
        paid_before = slow.stats.embedding_inputs
    stored = count(db, "select count(*) from chunk_vectors")
    assert 16 <= stored < chunks
    # The dead worker's leases run out (its invocation's time and margin), then a sweep resumes.
    # in flight when it died: at most a batch being stored and the next being embedded (16 each)
    leased = count(db, "select count(*) from generation_fill_leases")
    assert leased <= 32
    db.execute("update generation_fill_leases set lease_until = now() - interval '1 second'")
    report = sweep(db_store, embedder)
    embedded = report.generation_embedded
    assert count(db, "select count(*) from chunk_vectors where generation_id = %s", generation.id) == chunks
    assert count(db, "select count(*) from generation_fill_leases") == 0
    # paid once per text, apart from what was in flight when the worker died
    assert texts <= paid_before + embedded <= texts + 32
    assert report.generation_chunks == chunks - stored


def test_each_client_sees_only_its_own_vectors_in_every_generation(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID, embedder: OpenAIEmbedder
) -> None:
    other = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other,))
    processed_database(db, db_store, embedder, db_client, items=2)
    insert_items(db, other, [document(random.Random(3), 4, 80, tag="other")])
    sweep(db_store, embedder)
    generation = db_store.start_generation(MODEL, 512)
    sweep(db_store, embedder)
    db_store.cutover_generation()
    mine = count(db, "select count(*) from chunk_vectors where client_id = %s", db_client)
    query = to_pgvector_text(embedder_at_512(embedder).embed(["other part 1"])[0])
    with acting_as(db, "authenticated", user_claims(db_client)) as conn:
        assert count(conn, "select count(*) from chunk_vectors") == mine
        hits = conn.execute(
            "select client_id from match_knowledge_chunks(%s::vector, 50, null)", (query,)
        ).fetchall()
        assert hits and {h["client_id"] for h in hits} == {db_client}
    with acting_as(db, "anon") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select count(*) from chunk_vectors")
    with acting_as(db, "anon") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from match_knowledge_chunks(%s::vector, 5, null)", (query,))
    assert generation.storage == "table"


def embedder_at_512(embedder: OpenAIEmbedder) -> Any:
    from shared.providers.embeddings import embedder_for

    return embedder_for(embedder, MODEL, 512)


def test_the_supabase_backend_moves_generations_too(
    db: psycopg.Connection[Any],
    db_url: str,
    db_client: uuid.UUID,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    from shared.store.supabase import SupabaseStore
    from tests.shared.store.test_supabase_store import KEYS, SERVICE_ROLE_KEY
    from tests.support.postgrest import PostgrestStandIn

    with PostgrestStandIn(db_url, KEYS) as postgrest:
        store = SupabaseStore(postgrest.url, SERVICE_ROLE_KEY)
        try:
            insert_items(db, db_client, [document(random.Random(i), 4, 80, tag=f"rest{i}") for i in range(3)])
            assert sweep(store, embedder).done == 3
            chunks = count(db, "select count(*) from knowledge_chunks")
            generation = store.start_generation(MODEL, 512)
            assert sweep(store, embedder).generation_chunks == chunks
            assert store.cutover_generation()["active"]["id"] == generation.id
            new = insert_items(db, db_client, [document(random.Random(50), 4, 80, tag="after")])[0]
            assert sweep(store, embedder).done == 1
            rows = db.execute(
                "select c.embedding is null as bare, v.generation_id from knowledge_chunks c "
                "left join chunk_vectors v using (knowledge_item_id, chunk_index) "
                "where c.knowledge_item_id = %s",
                (new,),
            ).fetchall()
            assert rows and all(r["bare"] and r["generation_id"] == generation.id for r in rows)
            text = db.execute(
                "select content from knowledge_chunks where knowledge_item_id = %s limit 1", (new,)
            ).fetchone()
            assert text is not None
            hits = search(store, settings_for(server, db_url), text["content"], 1, db_client)
            assert hits[0].knowledge_item_id == new
            with pytest.raises(RefusedByDatabase, match="is active"):
                store.drop_generation(generation.id)
        finally:
            store.close()


def test_the_plan_counts_requests_as_the_fills_pack_them() -> None:
    from shared.process.generations import fill_requests

    assert fill_requests(0, 0) == 0
    assert fill_requests(41, 12_000) == 1
    # 100,000 chunks of 301 tokens: 49 claims of 2,048, each 616k tokens in three requests
    # (bench/generation_bench.py sent 146)
    assert fill_requests(100_000, 30_099_000) == 147
    assert fill_requests(100_000, 30_099_000, concurrency=1) == 98 * 2


def test_through_postgrest_a_failed_vector_write_leaves_the_claim_stored_and_the_sweep_fills_it(
    db: psycopg.Connection[Any],
    db_url: str,
    db_client: uuid.UUID,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    from shared.store.supabase import SupabaseStore
    from tests.shared.store.test_supabase_store import KEYS, SERVICE_ROLE_KEY
    from tests.support.postgrest import PostgrestStandIn

    with PostgrestStandIn(db_url, KEYS) as postgrest:
        store = SupabaseStore(postgrest.url, SERVICE_ROLE_KEY)
        try:
            store.ensure_generation(MODEL, 512)  # a new database whose first generation is a table one
            ids = insert_items(
                db, db_client, [document(random.Random(i), 3, 60, tag=f"w{i}") for i in range(3)]
            )
            signature = "public.store_generation_vectors(integer, text, uuid[], integer[], text[], text[])"
            db.execute(f"revoke execute on function {signature} from service_role")
            try:
                processor = Processor(store, embedder_at_512(embedder), LocalSummarizer())
                assert processor.sweep(lambda: 600.0).done == 3  # every item stored, none lost
            finally:
                db.execute(f"grant execute on function {signature} to service_role")
            assert count(db, "select count(*) from chunk_vectors") == 0
            assert count(db, "select count(*) from embedding_generations where unfilled") == 1
            report = Processor(store, embedder_at_512(embedder), LocalSummarizer()).sweep(lambda: 600.0)
            chunks = count(db, "select count(*) from knowledge_chunks where knowledge_item_id = any(%s)", ids)
            assert report.generation_chunks == chunks == count(db, "select count(*) from chunk_vectors")
        finally:
            store.close()
