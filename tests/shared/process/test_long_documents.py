"""A 300-page PDF processed across several short invocations: its pages are extracted in batches,
each batch kept as a checkpoint and never read again; the item completes with every page in its
chunks, and the embeddings are paid for once."""

from __future__ import annotations

import base64
import random
import uuid
from typing import Any

import psycopg
import pytest

from shared.ingest.queue import NoQueue
from shared.ingest.service import ingest_items, parse_items
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.search.service import located
from shared.store.postgres import PostgresStore
from shared.text.documents import PDF
from tests.support.documents import pdf_bytes
from tests.support.openai_server import OpenAIServer, cl100k

PAGES = 300
WORDS = (
    "lidar battery chassis controller firmware torque sensor calibrate inspect replace module bracket "
    "harness voltage current thermal gearbox encoder bearing coupling seal gasket valve relay fuse"
).split()


def long_pdf() -> bytes:
    """PAGES dense pages, each under its own chapter heading (a bookmark) with a unique code."""
    rng = random.Random(300)
    pages = [
        [("h1", f"Chapter {n}")]
        + [
            ("p", " ".join(rng.choice(WORDS) for _ in range(110)) + f" Code PG-{n:04d}-{k}.")
            for k in range(4)
        ]
        for n in range(1, PAGES + 1)
    ]
    return pdf_bytes(pages)


def kept_pages(db: psycopg.Connection[Any], item_id: uuid.UUID) -> dict[int, Any]:
    rows = db.execute(
        "select page, created_at from document_pages where knowledge_item_id = %s", (item_id,)
    ).fetchall()
    return {row["page"]: row["created_at"] for row in rows}


def test_a_300_page_pdf_finishes_across_short_invocations_paying_once(
    db: psycopg.Connection[Any],
    db_store: PostgresStore,
    db_client: uuid.UUID,
    openai_server: OpenAIServer,
    request: pytest.FixtureRequest,
) -> None:
    payload = {
        "client_id": str(db_client),
        "source": "manuals/long.pdf",
        "content_type": PDF,
        "content_base64": base64.b64encode(long_pdf()).decode(),
    }
    items, _ = parse_items(payload)
    (result,) = ingest_items(items, store=db_store, queue=NoQueue())
    item_id = result.item_id

    embedder = OpenAIEmbedder("sk-test", base_url=openai_server.base_url)
    request.addfinalizer(embedder.close)
    processor = Processor(
        db_store, embedder, LocalSummarizer(), chunk_tokens=300, item_chunk_min_s=5.0, pdf_page_batch=10
    )
    # Each invocation has 15.3 s left: 0.3 s beyond what the rest of an item's work keeps back,
    # so each extracts a few batches of pages, keeps them, and gives the item back.
    invocations, seen = 0, {}
    while invocations < 60:
        invocations += 1
        report = processor.process_ids([item_id], 15.3)
        if report.done:
            break
        assert report.released == 1 and report.failed == 0, report
        pages = kept_pages(db, item_id)
        assert len(pages) > len(seen)  # each invocation makes progress
        assert {page: pages[page] for page in seen} == seen  # no page is extracted twice
        seen = pages
    assert report.done == 1, report
    assert invocations >= 3, f"the whole PDF was read in {invocations} invocation(s)"

    row = db.execute(
        "select status, attempts, chunk_count from knowledge_items where id = %s", (item_id,)
    ).fetchone()
    assert row["status"] == "done" and row["attempts"] == 1  # given back without an attempt counted
    assert kept_pages(db, item_id) == {}  # the checkpoint goes once the item is stored
    chunks = db.execute(
        "select id, content from knowledge_chunks where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()
    text = "\n".join(chunk["content"] for chunk in chunks)
    for n in (1, 150, PAGES):
        assert all(f"PG-{n:04d}-{k}." in text for k in range(4))

    # the embeddings were paid for once: the server counted each distinct chunk text once
    distinct = {chunk["content"] for chunk in chunks}
    assert openai_server.stats.embedding_tokens == sum(len(cl100k().encode_ordinary(t)) for t in distinct)

    # each chunk knows its page and chapter
    middle = next(chunk for chunk in chunks if "PG-0150-1." in chunk["content"])
    hit_like = located(db_store, [_hit(middle["id"], item_id, db_client)])[0]
    assert hit_like.page in (149, 150) and hit_like.headings in (("Chapter 149",), ("Chapter 150",))


def _hit(chunk_id: uuid.UUID, item_id: uuid.UUID, client_id: uuid.UUID) -> Any:
    from shared.store.rows import SearchHit

    return SearchHit(chunk_id, item_id, client_id, 0, "", "manuals/long.pdf", None)


def test_through_postgrest_pages_are_kept_and_chunks_located(
    db: psycopg.Connection[Any], db_url: str, db_client: uuid.UUID
) -> None:
    """The Supabase API backend (PostgREST) keeps a long PDF's pages between invocations, saves
    the outline, drops the pages when done, and locates chunks, as the psycopg backend does."""
    from shared.providers.embeddings import LocalEmbedder
    from shared.store.supabase import SupabaseStore
    from tests.shared.store.test_supabase_store import KEYS, SERVICE_ROLE_KEY
    from tests.support.postgrest import PostgrestStandIn

    pages = [
        [("h1", f"Part {n}"), ("p", f"Section {n} explains valve VX-{n:03d} in detail. " * 8)]
        for n in range(1, 41)
    ]
    payload = {
        "client_id": str(db_client),
        "source": "manuals/valves.pdf",
        "content_type": PDF,
        "content_base64": base64.b64encode(pdf_bytes(pages)).decode(),
    }
    with PostgrestStandIn(db_url, KEYS) as postgrest:
        # PostgREST answers at most db-max-rows rows a call: the kept pages are read 3 at a time
        store = SupabaseStore(postgrest.url, SERVICE_ROLE_KEY, max_rows=3)
        items, _ = parse_items(payload)
        (result,) = ingest_items(items, store=store, queue=NoQueue())
        processor = Processor(
            store,
            LocalEmbedder(),
            LocalSummarizer(),
            chunk_tokens=120,
            item_chunk_min_s=5.0,
            pdf_page_batch=5,
        )
        # an invocation that leaves no time beyond the item's reserves extracts one batch and gives it back
        first = processor.process_ids([result.item_id], 15.0)
        assert first.released == 1
        assert len(kept_pages(db, result.item_id)) == 5
        sha = db.execute(
            "select content_sha256 from knowledge_items where id = %s", (result.item_id,)
        ).fetchone()["content_sha256"]
        assert sorted(store.document_pages(result.item_id, sha)) == [1, 2, 3, 4, 5]
        report = processor.process_ids([result.item_id], 600.0)
        assert report.done == 1, report
        assert kept_pages(db, result.item_id) == {}
        chunk = db.execute(
            "select id from knowledge_chunks where knowledge_item_id = %s and content like %s",
            (result.item_id, "%VX-033%"),
        ).fetchone()
        located_at = store.chunk_locations([chunk["id"]])
    assert located_at[chunk["id"]][0] in (32, 33)
    assert located_at[chunk["id"]][1] in (("Part 32",), ("Part 33",))
