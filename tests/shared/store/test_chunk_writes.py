"""The chunk write path: binary COPY rows encoded by `copy_rows_binary` read back exactly, rows
stay inline (no TOAST) at their usual size, `content_sha256` is right however a row is written,
and both backends keep the same stored rows when an item is completed again (one rule, in SQL)."""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from shared.store import ChunkRecord, CompletedItem, PostgresStore, Store, SupabaseStore
from shared.store.vectors import from_pgvector_text, to_pgvector_text
from tests.support.postgrest import PostgrestStandIn
from tests.support.process_helpers import insert_items

SERVICE_KEY = "sb_secret_Ch7nkWr1tesK3epRu1e_xSvEMPvz"


def vector(rng: random.Random) -> array[float]:
    return array("f", [rng.uniform(-1, 1) for _ in range(1536)])


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_copied_rows_read_back_exactly(
    admin: psycopg.Connection[Any], store: PostgresStore, client_id: uuid.UUID
) -> None:
    rng = random.Random(5)
    [item_id] = insert_items(admin, client_id, ["to be replaced by the chunks below"])
    [item] = store.claim_items("copy-test", 60, 1, 5, item_ids=[item_id])
    texts = ["plain ascii", "ünïcødé — 日本語 🚀 " * 40, "x" * 9000]  # the last one over a page
    records = [
        ChunkRecord(i, text, vector(rng), 7 + i, 10 * i, 10 * i + 9, sha(text) if i == 0 else "")
        for i, text in enumerate(texts)
    ]
    completed = CompletedItem(item, records, "summary", "text-embedding-3-small", 1536, 12)
    assert store.complete_items("copy-test", [completed]) == {item_id}

    rows = admin.execute(
        "select id, chunk_index, content, embedding::text as embedding, client_id, token_count, "
        "embedding_model, embedding_dimensions, char_start, char_end, content_sha256, vector_indexed, "
        "pg_column_size(embedding) as vector_bytes "
        "from knowledge_chunks where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()
    assert [r["content"] for r in rows] == texts
    for record, row in zip(records, rows, strict=True):
        assert list(from_pgvector_text(row["embedding"])) == list(record.embedding)
        assert (row["chunk_index"], row["token_count"], row["char_start"], row["char_end"]) == (
            record.chunk_index, record.token_count, record.char_start, record.char_end)  # fmt: skip
        assert (row["client_id"], row["embedding_model"], row["embedding_dimensions"]) == (
            client_id, "text-embedding-3-small", 1536)  # fmt: skip
        assert row["content_sha256"] == sha(record.content)
        assert row["vector_indexed"] is False
        assert row["vector_bytes"] == 8 + 4 * 1536  # varlena and pgvector headers, floats uncompressed
    # Ids are UUIDv7 from the writer, increasing in write order (new rows go to the primary key's
    # right edge), and start at the time of writing.
    ids = [row["id"] for row in rows]
    assert [i.version for i in ids] == [7, 7, 7] and ids == sorted(ids) and len(set(ids)) == 3
    written_ms = int.from_bytes(ids[0].bytes[:6], "big")
    assert abs(written_ms / 1000 - time.time()) < 60


def test_usual_chunks_are_stored_inline_without_toast(
    admin: psycopg.Connection[Any], store: PostgresStore, client_id: uuid.UUID
) -> None:
    toast = admin.execute(
        "select reltoastrelid::regclass::text as name from pg_class where oid = 'knowledge_chunks'::regclass"
    ).fetchone()
    assert toast is not None

    def toast_rows() -> int:
        row = admin.execute(f"select count(*) as n from {toast['name']}").fetchone()
        assert row is not None
        return int(row["n"])

    before = toast_rows()
    [item_id] = insert_items(admin, client_id, ["inline"])
    [item] = store.claim_items("inline-test", 60, 1, 5, item_ids=[item_id])
    rng = random.Random(6)
    prose = "A chunk of about 350 tokens is some 1,500 characters of prose, in many words. "
    records = [ChunkRecord(i, f"{i} {prose * 20}", vector(rng), 350, 0, 1) for i in range(20)]
    store.complete_items("inline-test", [CompletedItem(item, records, "s", "m", 1536, 1)])
    assert toast_rows() == before  # before migration 20261125001100, 3 TOAST rows per chunk


def test_content_sha256_is_computed_for_plain_inserts_and_on_content_change(
    admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    [item_id] = insert_items(admin, client_id, ["sql writer"])
    vector = "[" + ",".join(["0.5"] * 1536) + "]"
    admin.execute(
        "insert into knowledge_chunks (knowledge_item_id, client_id, chunk_index, content, embedding) "
        "values (%s, %s, 0, 'first text', %s)",
        (item_id, client_id, vector),
    )

    def stored() -> str:
        row = admin.execute(
            "select content_sha256 from knowledge_chunks where knowledge_item_id = %s", (item_id,)
        ).fetchone()
        assert row is not None
        return str(row["content_sha256"])

    assert stored() == sha("first text")
    admin.execute(
        "update knowledge_chunks set content = 'second text' where knowledge_item_id = %s", (item_id,)
    )
    assert stored() == sha("second text")
    admin.execute(
        "update knowledge_chunks set content_sha256 = 'forged' where knowledge_item_id = %s", (item_id,)
    )
    assert stored() == sha("second text")


def test_an_items_content_hash_and_length_follow_its_content_only(
    admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    """Set on insert, kept by updates of other columns, recomputed when the content changes, and
    not writable to a wrong value (they were generated columns, now kept by triggers)."""
    [item_id] = insert_items(admin, client_id, ["first version ✓"])

    def facts() -> tuple[str, int]:
        row = admin.execute(
            "select content_sha256, char_count from knowledge_items where id = %s", (item_id,)
        ).fetchone()
        assert row is not None
        return row["content_sha256"], row["char_count"]

    assert facts() == (sha("first version ✓"), len("first version ✓"))
    admin.execute("update knowledge_items set summary = 's', status = 'done' where id = %s", (item_id,))
    assert facts() == (sha("first version ✓"), len("first version ✓"))
    admin.execute("update knowledge_items set content = 'second' where id = %s", (item_id,))
    assert facts() == (sha("second"), 6)
    admin.execute(
        "update knowledge_items set content_sha256 = 'forged', char_count = 1 where id = %s", (item_id,)
    )
    assert facts() == (sha("second"), 6)


@pytest.fixture
def supabase_store(pg_url: str) -> Iterator[SupabaseStore]:
    with PostgrestStandIn(pg_url, {SERVICE_KEY: "service_role"}) as server:
        store = SupabaseStore(server.url, SERVICE_KEY)
        yield store
        store.close()


def test_both_backends_keep_the_same_rows_for_the_same_completions(
    admin: psycopg.Connection[Any], store: PostgresStore, supabase_store: SupabaseStore, client_id: uuid.UUID
) -> None:
    """The same completions, one item per backend: after each, the same rows are rewritten (new
    ids) and the stored chunks are the same. A row stays only when its index, text, model,
    dimensions, token count and span all match, and only on an item processed before."""
    rng = random.Random(8)
    base = [
        ChunkRecord(i, f"part {i} of {client_id}", vector(rng), 10 + i, 100 * i, 100 * i + 90)
        for i in range(4)
    ]
    edited = [
        base[0],
        replace(base[1], char_end=base[1].char_end + 1),  # moved in the text
        replace(base[2], content="edited text", content_sha256=""),
        replace(base[3], token_count=99),
        ChunkRecord(4, "a new last part", vector(rng), 5, 400, 415),
    ]
    steps = [
        ("first", base, "model-a", [0, 1, 2, 3]),  # the row written by hand at index 0 is replaced
        ("unchanged", base, "model-a", []),
        ("edited", edited, "model-a", [1, 2, 3, 4]),
        ("shorter", edited[:2], "model-a", []),  # rows 2-4 deleted, 0-1 kept
        ("other-model", edited[:2], "model-b", [0, 1]),
    ]

    def complete_in_steps(backend: Store, item_id: uuid.UUID) -> list[tuple[str, list[int], list[Any]]]:
        admin.execute(  # a stray row matching the first chunk, on an item never processed
            "insert into knowledge_chunks (knowledge_item_id, client_id, chunk_index, content, embedding, "
            "token_count, char_start, char_end, embedding_model, embedding_dimensions) "
            "values (%s, %s, 0, %s, %s, %s, %s, %s, 'model-a', 1536)",
            (item_id, client_id, base[0].content, to_pgvector_text(base[0].embedding), 10, 0, 90),
        )
        history, before = [], row_ids(admin, item_id)
        for name, chunks, model, _ in steps:
            admin.execute("update knowledge_items set status = 'pending' where id = %s", (item_id,))
            [claimed] = backend.claim_items("keep-test", 60, 1, 100, item_ids=[item_id])
            done = backend.complete_items("keep-test", [CompletedItem(claimed, chunks, "s", model, 1536, 1)])
            assert done == {item_id}, name
            after = row_ids(admin, item_id)
            history.append(
                (name, sorted(i for i in after if before.get(i) != after[i]), chunk_rows(admin, item_id))
            )
            before = after
        return history

    on_postgres, on_supabase = insert_items(admin, client_id, ["postgres item", "supabase item"])
    history = complete_in_steps(store, on_postgres)
    assert history == complete_in_steps(supabase_store, on_supabase)
    assert [(name, rewritten) for name, rewritten, _ in history] == [(s[0], s[3]) for s in steps]
    assert [len(rows) for _, _, rows in history] == [4, 4, 5, 2, 2]


def row_ids(admin: psycopg.Connection[Any], item_id: uuid.UUID) -> dict[int, uuid.UUID]:
    rows = admin.execute(
        "select chunk_index, id from knowledge_chunks where knowledge_item_id = %s", (item_id,)
    ).fetchall()
    return {r["chunk_index"]: r["id"] for r in rows}


def chunk_rows(admin: psycopg.Connection[Any], item_id: uuid.UUID) -> list[Any]:
    return admin.execute(
        "select chunk_index, content, content_sha256, token_count, char_start, char_end, embedding_model, "
        "embedding_dimensions, embedding::text as embedding, client_id from knowledge_chunks "
        "where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()
