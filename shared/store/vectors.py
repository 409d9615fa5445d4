"""Embedding vectors as `array('f')` (float32), and their pgvector wire format.

float32 arrays are what OpenAI's base64 answers decode to and what pgvector stores, so vectors go
from the HTTP response to a binary COPY without a detour through Python floats or numpy.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo


def to_pgvector_text(value: Any) -> str:
    """pgvector's text form, `[x,y,…]`; 9 significant digits keep float32 values exact."""
    return "[" + ",".join(format(float(v), ".9g") for v in value) + "]"


def from_pgvector_text(text: str) -> array[float]:
    return array("f", (float(v) for v in text.strip("[]").split(",") if v))


def to_pgvector_binary(value: array[float]) -> bytes:
    """pgvector's binary format: dimensions (int16), unused (int16), big-endian float32 values."""
    if sys.byteorder == "little":
        value = array("f", value)
        value.byteswap()
    return struct.pack(">HH", len(value), 0) + value.tobytes()


def from_pgvector_binary(data: bytes | bytearray | memoryview) -> array[float]:
    dimensions, _ = struct.unpack_from(">HH", data)
    value = array("f")
    value.frombytes(bytes(memoryview(data)[4 : 4 + 4 * dimensions]))
    if sys.byteorder == "little":
        value.byteswap()
    return value


class _VectorBinaryDumper(Dumper):
    format = Format.BINARY
    oid: int = 0

    def dump(self, obj: array[float]) -> bytes:
        return to_pgvector_binary(obj)


class _VectorTextDumper(Dumper):
    format = Format.TEXT
    oid: int = 0

    def dump(self, obj: array[float]) -> bytes:
        return to_pgvector_text(obj).encode()


class _VectorBinaryLoader(Loader):
    format = Format.BINARY

    def load(self, data: Any) -> array[float]:
        return from_pgvector_binary(data)


class _VectorTextLoader(Loader):
    format = Format.TEXT

    def load(self, data: Any) -> array[float]:
        return from_pgvector_text(bytes(data).decode())


def register_vector_type(conn: psycopg.Connection[Any]) -> None:
    """Teach a connection to send `array('f')` as pgvector `vector` and load `vector` as `array('f')`.

    Call once per connection (one catalog query); without the extension it raises ProgrammingError.
    """
    info = TypeInfo.fetch(conn, "vector")
    if info is None:
        raise psycopg.ProgrammingError("the pgvector extension is not installed in this database")
    info.register(conn)
    adapters = conn.adapters
    adapters.register_dumper(array, type("VectorText", (_VectorTextDumper,), {"oid": info.oid}))
    adapters.register_dumper(array, type("VectorBinary", (_VectorBinaryDumper,), {"oid": info.oid}))
    adapters.register_loader(info.oid, _VectorTextLoader)
    adapters.register_loader(info.oid, _VectorBinaryLoader)
