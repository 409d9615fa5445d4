"""Chunk rows in PostgreSQL's binary COPY format, packed directly: pure functions, no database.

psycopg's per-field dumpers cost several times more CPU per row than packing the known layout, so
the psycopg backend streams these bytes into `COPY public.knowledge_chunks (COPY_COLUMNS) FROM
STDIN (FORMAT BINARY)`. Format: https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4
"""

from __future__ import annotations

import os
import struct
import sys
import time
from array import array
from collections.abc import Iterator

from shared.store.rows import CompletedItem

__all__ = ["COPY_BLOCK_BYTES", "COPY_COLUMNS", "copy_rows_binary", "time_ordered_ids"]

# The columns each encoded row holds, in order.
COPY_COLUMNS = (
    "id",
    "knowledge_item_id",
    "chunk_index",
    "content",
    "embedding",
    "client_id",
    "token_count",
    "embedding_model",
    "embedding_dimensions",
    "char_start",
    "char_end",
    "content_sha256",
)
COPY_BLOCK_BYTES = 1 << 20

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
_ROW_HEAD = struct.Struct(">hi16si16siii")  # field count; id; item uuid; chunk_index; content length
_VECTOR_HEAD = struct.Struct(">iHH")  # field length; pgvector's dimensions and unused int16
_CLIENT_TOKENS = struct.Struct(">i16siii")  # client uuid; token_count; model length
_ROW_TAIL = struct.Struct(">iiiiiii")  # dimensions; char_start; char_end; content_sha256 length
_NULL = struct.pack(">i", -1)  # a NULL field
_LOW_62 = (1 << 62) - 1


def copy_rows_binary(completed: list[CompletedItem], ids: Iterator[bytes] | None = None) -> Iterator[bytes]:
    """The chunk rows of `completed` in PostgreSQL's binary COPY format, in blocks of about
    COPY_BLOCK_BYTES, one row per chunk with the fields of COPY_COLUMNS, each row's id from `ids`
    (default `time_ordered_ids()`). Each field is its byte length, then uuid as 16 raw bytes, int4
    big-endian, text as UTF-8, and the vector in pgvector's binary form (int16 dimensions, int16
    unused, big-endian float32 values), or NULL when the item's generation keeps its vectors in
    `chunk_vectors` (`CompletedItem.in_column`)."""
    block = bytearray(_COPY_SIGNATURE)
    ids = time_ordered_ids() if ids is None else ids
    for c in completed:
        item_id, client_id, model = c.item.id.bytes, c.item.client_id.bytes, c.model.encode()
        in_column = c.in_column
        for chunk in c.chunks:
            text = chunk.content.encode()
            block += _ROW_HEAD.pack(
                len(COPY_COLUMNS), 16, next(ids), 16, item_id, 4, chunk.chunk_index, len(text)
            )
            block += text
            if in_column:
                vector = array("f", chunk.embedding)
                if sys.byteorder == "little":
                    vector.byteswap()
                block += _VECTOR_HEAD.pack(4 + 4 * len(vector), len(vector), 0)
                block += vector.tobytes()
            else:  # the active generation keeps its vectors in chunk_vectors: no embedding here
                block += _NULL
            block += _CLIENT_TOKENS.pack(16, client_id, 4, chunk.token_count, len(model))
            block += model
            digest = chunk.content_sha256.encode()
            block += _ROW_TAIL.pack(4, c.dimensions, 4, chunk.char_start, 4, chunk.char_end, len(digest))
            block += digest
            if len(block) >= COPY_BLOCK_BYTES:
                yield bytes(block)
                block.clear()
    block += _COPY_TRAILER
    yield bytes(block)


def time_ordered_ids(millis: int | None = None, counter: int | None = None) -> Iterator[bytes]:
    """UUIDv7 values (RFC 9562) as 16 bytes, increasing: the Unix time in milliseconds (default
    now), then a start (default random) that counts up. New chunk rows then land at the right edge
    of the primary key instead of on a random leaf page each (as `gen_random_uuid()` would), which
    keeps the key's pages cached and out of the WAL's full-page images."""
    millis = time.time_ns() // 1_000_000 if millis is None else millis
    if counter is None:
        counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 random bits: room to count up in 74
    while True:
        high, low = counter >> 62, counter & _LOW_62
        yield ((millis << 80) | (0x7 << 76) | (high << 64) | (0b10 << 62) | low).to_bytes(16, "big")
        counter += 1
