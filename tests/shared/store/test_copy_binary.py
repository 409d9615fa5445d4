"""The binary COPY encoding of chunk rows, byte for byte (pure: no database).

Each case encodes known rows with known ids and compares the bytes with PostgreSQL's binary COPY
format written out by hand: the header, then per row the field count and each field as its
length and big-endian value, then the trailer. `test_chunk_writes.py` shows Postgres reads them.
"""

from __future__ import annotations

import time
import uuid
from array import array
from collections.abc import Iterator

import pytest

from shared.store import copy_binary
from shared.store.copy_binary import COPY_COLUMNS, copy_rows_binary, time_ordered_ids
from shared.store.rows import ChunkRecord, ClaimedItem, CompletedItem

HEADER = "5047434f50590aff0d0a00" + "00000000" + "00000000"  # PGCOPY\n\377\r\n\0, flags, extension
TRAILER = "ffff"
ITEM = uuid.UUID("11111111-1111-1111-1111-111111111111")
OTHER_ITEM = uuid.UUID("33333333-3333-3333-3333-333333333333")
CLIENT = uuid.UUID("22222222-2222-2222-2222-222222222222")


def row_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def ids() -> Iterator[bytes]:
    n = 1
    while True:
        yield row_id(n)
        n += 1


def item(item_id: uuid.UUID = ITEM) -> ClaimedItem:
    return ClaimedItem(item_id, CLIENT, "doc.md", "text", "sha", None, None, None, 0)


def completed(
    chunks: list[ChunkRecord], item_id: uuid.UUID = ITEM, model: str = "m", dimensions: int = 2
) -> CompletedItem:
    return CompletedItem(item(item_id), chunks, "summary", model, dimensions, 0)


def chunk(index: int, text: str, vector: list[float], sha: str = "ff") -> ChunkRecord:
    return ChunkRecord(index, text, array("f", vector), 7, 10, 12, sha)


def field(hex_value: str) -> str:
    """One field: its byte length (int4), then its bytes."""
    return f"{len(hex_value) // 2:08x}" + hex_value


def row(
    n: int,
    item_id: uuid.UUID,
    index: int,
    text_hex: str,
    vector_hex: str,
    model_hex: str = "6d",
    dimensions: int = 2,
    sha_hex: str = "6666",
) -> str:
    return "".join(
        [
            "000c",  # 12 fields
            field(row_id(n).hex()),  # id
            field(item_id.hex),  # knowledge_item_id
            field(f"{index:08x}"),  # chunk_index
            field(text_hex),  # content, UTF-8
            field(vector_hex),  # embedding: int16 dimensions, int16 unused, float32 values
            field(CLIENT.hex),  # client_id
            field("00000007"),  # token_count
            field(model_hex),  # embedding_model
            field(f"{dimensions:08x}"),  # embedding_dimensions
            field("0000000a"),  # char_start
            field("0000000c"),  # char_end
            field(sha_hex),  # content_sha256
        ]
    )


CASES = [
    pytest.param([], HEADER + TRAILER, id="nothing-to-write"),
    pytest.param([completed([])], HEADER + TRAILER, id="an-item-without-chunks"),
    pytest.param(
        [completed([chunk(3, "ab", [1.0, -2.0])])],
        HEADER + row(1, ITEM, 3, "6162", "0002" + "0000" + "3f800000" + "c0000000") + TRAILER,
        id="one-row",
    ),
    pytest.param(
        [completed([chunk(0, "é✓", [0.5, 0.0])])],
        HEADER + row(1, ITEM, 0, "c3a9e29c93", "0002" + "0000" + "3f000000" + "00000000") + TRAILER,
        id="text-length-in-utf8-bytes",
    ),
    pytest.param(
        [completed([chunk(0, "", [])], model="", dimensions=0)],
        HEADER + row(1, ITEM, 0, "", "0000" + "0000", model_hex="", dimensions=0) + TRAILER,
        id="empty-text-model-and-vector",
    ),
    pytest.param(
        [
            completed([chunk(0, "a", [1.0, 1.0]), chunk(1, "b", [2.0, 2.0])]),
            completed([chunk(0, "c", [-1.0, 0.25])], item_id=OTHER_ITEM),
        ],
        HEADER
        + row(1, ITEM, 0, "61", "00020000" + "3f800000" * 2)
        + row(2, ITEM, 1, "62", "00020000" + "40000000" * 2)
        + row(3, OTHER_ITEM, 0, "63", "00020000" + "bf800000" + "3e800000")
        + TRAILER,
        id="rows-in-item-then-chunk-order-ids-in-turn",
    ),
    pytest.param(
        [completed([chunk(70000, "x", [1.0, 0.0], sha="")])],
        HEADER
        + row(
            1,
            ITEM,
            70000,
            "78",
            "00020000" + "3f800000" + "00000000",
            sha_hex=b"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881".hex(),
        )
        + TRAILER,
        id="hash-computed-when-not-given",
    ),
]


@pytest.mark.parametrize(("items", "expected"), CASES)
def test_rows_encode_to_the_expected_bytes(items: list[CompletedItem], expected: str) -> None:
    assert b"".join(copy_rows_binary(items, ids())).hex() == expected


def test_every_row_holds_one_field_per_copied_column() -> None:
    assert len(COPY_COLUMNS) == 12
    encoded = b"".join(copy_rows_binary([completed([chunk(0, "a", [1.0, 1.0])])], ids()))
    assert encoded[len(HEADER) // 2 : len(HEADER) // 2 + 2] == len(COPY_COLUMNS).to_bytes(2, "big")


def test_large_writes_come_in_blocks_that_join_to_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [completed([chunk(i, "text " * 20, [float(i), 1.0]) for i in range(50)])]
    whole = b"".join(copy_rows_binary(items, ids()))
    monkeypatch.setattr(copy_binary, "COPY_BLOCK_BYTES", 1000)
    blocks = list(copy_rows_binary(items, ids()))
    assert b"".join(blocks) == whole
    assert len(blocks) > 5
    assert all(len(b) >= 1000 for b in blocks[:-1]) and blocks[-1].endswith(bytes.fromhex(TRAILER))


@pytest.mark.parametrize(
    ("millis", "counter", "expected"),
    [
        (0x0123456789AB, 0, ["0123456789ab7000", "8000000000000000"]),
        (0x0123456789AB, 1, ["0123456789ab7000", "8000000000000001"]),
        (0x0123456789AB, (1 << 62) - 1, ["0123456789ab7000", "bfffffffffffffff"]),
        (0x0123456789AB, 1 << 62, ["0123456789ab7001", "8000000000000000"]),
        (0, 0xABC << 62, ["0000000000007abc", "8000000000000000"]),
    ],
    ids=["first", "counts-up", "low-bits-full", "carries-into-the-high-bits", "time-zero"],
)
def test_time_ordered_ids_are_uuid7_with_time_then_counter(
    millis: int, counter: int, expected: list[str]
) -> None:
    generated = time_ordered_ids(millis, counter)
    value = next(generated)
    assert value.hex() == "".join(expected)
    parsed = uuid.UUID(bytes=value)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert next(generated) > value  # the next one sorts after it


def test_default_ids_start_now_and_increase() -> None:
    generated = time_ordered_ids()
    values = [next(generated) for _ in range(1000)]
    assert values == sorted(values) and len(set(values)) == 1000
    assert abs(int.from_bytes(values[0][:6], "big") / 1000 - time.time()) < 60
