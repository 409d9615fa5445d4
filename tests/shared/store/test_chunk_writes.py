"""The chunk write path: binary COPY rows encoded by `copy_rows_binary` read back exactly, rows
stay inline (no TOAST) at their usual size, and `content_sha256` is right however a row is written."""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from array import array
from typing import Any

import psycopg

from shared.store.postgres import ChunkRecord, CompletedItem, PostgresStore
from shared.store.vectors import from_pgvector_text
from tests.support.process_helpers import insert_items


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
