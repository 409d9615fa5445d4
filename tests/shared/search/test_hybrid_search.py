"""Hybrid search on the real database, against the local OpenAI-compatible server (whose vectors
carry no meaning, the hardest case for a rare exact term): full-text and vector results fused by
rank put the chunk holding the term first where vector search alone does not; text search calls
no API; every mode keeps to the client asked for, and RLS keeps a user to its own client."""

from __future__ import annotations

import random
import uuid
from array import array
from typing import Any

import psycopg
import pytest

from shared.config import Settings
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.search.service import search
from shared.store.postgres import PostgresStore
from shared.store.vectors import to_pgvector_text
from tests.shared.store.test_rls import acting_as, user_claims
from tests.support.openai_server import OpenAIServer
from tests.support.process_helpers import document, insert_items

API_KEY = "sk-test-hybrid-0123456789"
RARE = "E-4471-XQ"
QUERY = f"what does fault {RARE} on the pump controller mean"


@pytest.fixture
def corpus(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID, openai_server: OpenAIServer
) -> tuple[Settings, uuid.UUID]:
    """Thirty documents of one client (one of them names the fault code once, mid-text) and
    ten of another; processed. Returns the settings and the other client."""
    other = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other,))
    rng = random.Random(5)
    docs = [document(rng, 4, 80, tag=f"manual{i}") for i in range(30)]
    docs[17] = docs[17].replace(
        "part 2.", f"part 2. The controller reports fault {RARE} when the seal leaks."
    )
    insert_items(db, db_client, docs)
    # the other client has the same code in its text: it must never show up for the first
    insert_items(db, other, [document(rng, 3, 60, tag=f"other{i}") + f" {RARE}" for i in range(10)])
    embedder = OpenAIEmbedder(API_KEY, base_url=openai_server.base_url)
    try:
        assert Processor(db_store, embedder, LocalSummarizer()).sweep(lambda: 600.0).done == 40
    finally:
        embedder.close()
    settings = Settings(
        database_url="unused",
        embedding_provider="openai",
        openai_api_key=API_KEY,
        openai_base_url=openai_server.base_url,
    )
    return settings, other


def test_hybrid_puts_the_rare_exact_term_first_where_vector_search_does_not(
    db_store: PostgresStore,
    db_client: uuid.UUID,
    corpus: tuple[Settings, uuid.UUID],
    openai_server: OpenAIServer,
) -> None:
    settings, _ = corpus
    vector = search(db_store, settings, QUERY, 10, db_client, mode="vector")
    assert RARE not in vector[0].content  # these vectors carry no meaning: the term is not found by them
    hybrid = search(db_store, settings, QUERY, 10, db_client, mode="hybrid")
    assert RARE in hybrid[0].content
    assert hybrid[0].similarity is not None and -1 <= hybrid[0].similarity <= 1
    # the rest still come from the vector side: fused, not replaced
    assert {h.id for h in hybrid[1:]} & {h.id for h in vector}
    requests = openai_server.stats.embedding_requests
    text = search(db_store, settings, QUERY, 10, db_client, mode="text")
    assert openai_server.stats.embedding_requests == requests  # text alone calls no API
    assert RARE in text[0].content and text[0].similarity is None
    # the query's embedding is on record, for the client searched
    lines = db_store.usage_report(None, db_client)
    assert any(row["model"] == "text-embedding-3-small" for row in lines)


def test_every_mode_keeps_to_the_client_asked_for(
    db_store: PostgresStore, db_client: uuid.UUID, corpus: tuple[Settings, uuid.UUID]
) -> None:
    settings, other = corpus
    for mode in ("hybrid", "vector", "text"):
        hits = search(db_store, settings, RARE, 50, db_client, mode=mode)  # type: ignore[arg-type]
        assert hits and {h.client_id for h in hits} == {db_client}, mode
        theirs = search(db_store, settings, RARE, 50, other, mode=mode)  # type: ignore[arg-type]
        assert theirs and {h.client_id for h in theirs} == {other}, mode


def test_rls_keeps_a_user_to_its_own_client(
    db: psycopg.Connection[Any], db_client: uuid.UUID, corpus: tuple[Settings, uuid.UUID]
) -> None:
    _, other = corpus
    query = to_pgvector_text(array("f", [1.0] + [0.0] * 1535))
    with acting_as(db, "authenticated", user_claims(other)) as conn:
        rows = conn.execute(
            "select client_id from match_knowledge_chunks_hybrid(%s, %s::vector, 50, null)", (RARE, query)
        ).fetchall()
        assert rows and {r["client_id"] for r in rows} == {other}
    with acting_as(db, "anon") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from match_knowledge_chunks_hybrid(%s, null, 5, null)", (RARE,))


def test_a_query_of_stop_words_falls_back_to_vector_search(
    db_store: PostgresStore, db_client: uuid.UUID, corpus: tuple[Settings, uuid.UUID]
) -> None:
    settings, _ = corpus
    hybrid = search(db_store, settings, "the and of", 5, db_client, mode="hybrid")
    vector = search(db_store, settings, "the and of", 5, db_client, mode="vector")
    assert [h.id for h in hybrid] == [h.id for h in vector]
    assert search(db_store, settings, "the and of", 5, db_client, mode="text") == []
