"""The store: every read and write of the workers, in SQL, over one of two backends.

`PostgresStore` talks to Postgres with psycopg (`DATABASE_URL`). `SupabaseStore`
(`shared.store.supabase`) talks to PostgREST and calls the same SQL functions through `rpc`,
so both run the SQL in `infra/supabase/migrations/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
import uuid
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from psycopg.types.json import Jsonb

from shared.store.database import ConnectionHolder


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one item of an ingest call (see `ingest_knowledge_items` in the migrations)."""

    index: int
    item_id: uuid.UUID | None
    outcome: str  # created | duplicate | updated | unknown_client | idempotency_conflict
    status: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> IngestOutcome:
        item_id = row["item_id"]
        return cls(
            index=int(row["item_index"]),
            item_id=uuid.UUID(str(item_id)) if item_id is not None else None,
            outcome=str(row["outcome"]),
            status=row["item_status"],
        )


@dataclass(frozen=True)
class ClaimedItem:
    """An item this worker holds the lease on, with what processing needs."""

    id: uuid.UUID
    client_id: uuid.UUID
    source: str
    content: str
    content_sha256: str
    processed_sha256: str | None
    embedding_model: str | None
    embedding_dimensions: int | None
    attempts: int
    transient_failures: int = 0  # times given back for a provider failure (no attempt counted)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClaimedItem:
        return cls(
            id=uuid.UUID(str(row["id"])),
            client_id=uuid.UUID(str(row["client_id"])),
            source=row["source"],
            content=row["content"],
            content_sha256=row["content_sha256"],
            processed_sha256=row["processed_sha256"],
            embedding_model=row["embedding_model"],
            embedding_dimensions=row["embedding_dimensions"],
            attempts=int(row["attempts"]),
            transient_failures=int(row.get("transient_failures") or 0),
        )


@dataclass(frozen=True)
class ChunkRecord:
    chunk_index: int
    content: str
    embedding: array[float]
    token_count: int
    char_start: int
    char_end: int
    content_sha256: str = ""  # sha256 hex of content; computed here when not given

    def __post_init__(self) -> None:
        if not self.content_sha256:
            object.__setattr__(self, "content_sha256", hashlib.sha256(self.content.encode()).hexdigest())


@dataclass(frozen=True)
class CompletedItem:
    """A processed item ready to store: its chunks replace the old ones in one transaction."""

    item: ClaimedItem
    chunks: list[ChunkRecord]
    summary: str
    model: str
    dimensions: int
    elapsed_ms: int

    @property
    def token_count(self) -> int:
        return sum(c.token_count for c in self.chunks)


@dataclass(frozen=True)
class SearchHit:
    id: uuid.UUID
    knowledge_item_id: uuid.UUID
    client_id: uuid.UUID
    chunk_index: int
    content: str
    source: str
    similarity: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "knowledge_item_id": str(self.knowledge_item_id),
            "client_id": str(self.client_id),
            "chunk_index": self.chunk_index,
            "content": self.content,
            "source": self.source,
            "similarity": self.similarity,
        }


class Store(Protocol):
    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        """Store items atomically (all or, on unknown client / key conflict, none)."""
        ...

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        """Create the client when it does not exist."""
        ...

    def close(self) -> None:
        """Close the store's connections (a warm function keeps its store open instead)."""
        ...

    def status(self) -> dict[str, Any]:
        """Counts per status, the oldest pending item's time, and recent failures."""
        ...

    def claim_items(
        self,
        worker: str,
        lease_s: float,
        max_items: int,
        max_attempts: int,
        item_ids: list[uuid.UUID] | None = None,
        max_chars: int | None = None,
        probe: bool = False,
    ) -> list[ClaimedItem]:
        """Lease up to `max_items` items (and `max_chars` characters) for `worker`, oldest first;
        `probe`: the pending item given back least often for a provider failure (see
        `claim_knowledge_items`)."""
        ...

    def find_embeddings(self, hashes: list[str], model: str, dimensions: int) -> dict[str, array[float]]:
        """Stored embeddings by chunk text sha256 for this model and dimensions (from stored chunks
        and from the embedding cache)."""
        ...

    def save_embeddings(self, vectors: dict[str, array[float]], model: str, dimensions: int) -> int:
        """Keep vectors by chunk text sha256 that no stored chunk holds yet (for items given back
        unfinished), so `find_embeddings` finds them; returns how many were new."""
        ...

    def complete_items(self, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        """Replace each item's chunks and mark it done, atomically; returns the ids stored
        (an item whose lease was lost or whose content changed meanwhile is left alone)."""
        ...

    def fail_item(
        self,
        item_id: uuid.UUID,
        worker: str,
        error: str,
        max_attempts: int,
        retry_base_s: float,
        permanent: bool,
    ) -> str | None:
        """Record a failed attempt; returns the new status (None if the lease was lost)."""
        ...

    def release_items(self, item_ids: list[uuid.UUID], worker: str) -> int:
        """Give unstarted claims back without counting an attempt."""
        ...

    def defer_items(self, item_ids: list[uuid.UUID], worker: str, error: str, retry_base_s: float) -> int:
        """Give claims back after a provider failure: no attempt counted, a short deferral of their
        own (lifted when the provider recovers); see `defer_knowledge_items`."""
        ...

    def provider_gate(self, provider: str, worker: str, probe_s: float) -> dict[str, Any]:
        """Whether `worker` may claim now given the fleet's back-off for `provider`:
        {"state", "claim", "probe", ...} (see `provider_gate` in the migrations)."""
        ...

    def record_provider_failure(
        self, provider: str, error: str, quota: bool, retry_after_s: float | None, probe_s: float
    ) -> dict[str, Any]:
        """Open (or extend) the fleet's back-off for `provider`."""
        ...

    def record_provider_success(self, provider: str) -> bool:
        """Close the back-off for `provider` and free the items it deferred; whether one was open."""
        ...

    def find_summaries(self, keys: list[str]) -> dict[str, str]:
        """Summaries kept by their input key (`shared.providers.summaries.summary_key`)."""
        ...

    def save_summaries(self, summaries: dict[str, str]) -> int:
        """Keep summaries by their input key; returns how many were new."""
        ...

    def schema_facts(self) -> dict[str, Any]:
        """Facts settings must agree with, e.g. {"embedding_dimensions": 1536}."""
        ...

    def client_summary(self, client_id: uuid.UUID) -> str | None:
        """The client's current summary, if it has one."""
        ...

    def client_summary_backlog(self, client_id: uuid.UUID, max_items: int = 50) -> dict[str, Any]:
        """{"summary", "version", "items": [{"id", "summary"}]} still to fold for a client, at most
        `max_items` items (oldest first)."""
        ...

    def save_client_summary(
        self,
        client_id: uuid.UUID,
        expected_version: int,
        summary: str,
        item_ids: list[uuid.UUID],
        model: str,
        processed_at: list[str] | None = None,
    ) -> bool:
        """Store a folded summary unless another was saved since `expected_version`; marks folded
        only the items still carrying the summary read (their `processed_at` from the backlog)."""
        ...

    def clients_with_summary_backlog(self, max_clients: int = 100) -> list[uuid.UUID]:
        """Clients whose done items are not all folded into their summary yet."""
        ...

    def index_chunks(self, max_rows: int) -> int:
        """Move up to `max_rows` stored chunks into the vector index; returns how many moved."""
        ...

    def search(self, embedding: array[float], k: int, client_id: uuid.UUID | None) -> list[SearchHit]:
        """The `k` chunks nearest to `embedding` (cosine), optionally for one client."""
        ...


class PostgresStore:
    """The psycopg backend: one connection per process, reused across warm invocations.

    Chunk writes of a large batch are spread over `write_connections` connections: HNSW index
    inserts are CPU-bound in the server, so parallel writers use more than one core.
    """

    def __init__(self, holder: ConnectionHolder, write_connections: int = 2) -> None:
        self.holder = holder
        self.write_connections = max(1, write_connections)
        self._writers: list[PostgresStore] = []

    def close(self) -> None:
        for writer in self._writers:
            writer.holder.close()
        self.holder.close()

    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        with self.holder.connection() as conn:
            rows = conn.execute(
                "select * from public.ingest_knowledge_items(%s)", (Jsonb(items, dumps=_dumps),)
            ).fetchall()
        return sorted((IngestOutcome.from_row(row) for row in rows), key=lambda o: o.index)

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        self._value("select public.ensure_client(%s, %s)", (client_id, name), idempotent=True)

    def status(self) -> dict[str, Any]:
        return dict(self._value("select public.knowledge_status()", (), idempotent=True) or {})

    def _with_vectors(self, conn: Any) -> Any:
        """`conn`, with pgvector's type registered on it (once per connection)."""
        from shared.store.vectors import register_vector_type

        if "vector" not in self.holder.prepared:
            register_vector_type(conn)
            self.holder.prepared.add("vector")
        return conn

    @contextmanager
    def _vector_connection(self) -> Iterator[Any]:
        """The connection, with pgvector's type registered on it once."""
        with self.holder.connection() as conn:
            yield self._with_vectors(conn)

    def claim_items(
        self,
        worker: str,
        lease_s: float,
        max_items: int,
        max_attempts: int,
        item_ids: list[uuid.UUID] | None = None,
        max_chars: int | None = None,
        probe: bool = False,
    ) -> list[ClaimedItem]:
        with self.holder.connection() as conn:
            rows = conn.execute(
                "select * from public.claim_knowledge_items(%s, %s, %s, %s, %s, %s, %s)",
                (worker, lease_s, max_items, max_attempts, item_ids, max_chars, probe),
            ).fetchall()
        return [ClaimedItem.from_row(row) for row in rows]

    def find_embeddings(self, hashes: list[str], model: str, dimensions: int) -> dict[str, array[float]]:
        if not hashes:
            return {}
        statement = "select content_sha256, embedding from public.find_chunk_embeddings(%s, %s, %s)"
        rows = self.holder.run(
            lambda conn: (
                self._with_vectors(conn)
                .cursor(binary=True)
                .execute(statement, (hashes, model, dimensions))
                .fetchall()
            ),
            idempotent=True,
        )
        return {row["content_sha256"]: row["embedding"] for row in rows}

    def save_embeddings(self, vectors: dict[str, array[float]], model: str, dimensions: int) -> int:
        if not vectors:
            return 0
        from shared.store.vectors import to_pgvector_text

        with self.holder.connection() as conn:
            row = conn.execute(
                "select public.save_chunk_embeddings(%s, %s, %s, %s) as n",
                (list(vectors), model, dimensions, [to_pgvector_text(v) for v in vectors.values()]),
            ).fetchone()
        return int(row["n"]) if row else 0

    def _connections(self, count: int) -> list[PostgresStore]:
        """This store and count - 1 siblings on connections of their own (opened once, reused)."""
        while len(self._writers) < count - 1:
            self._writers.append(PostgresStore(self.holder.sibling(), write_connections=1))
        return [self, *self._writers[: count - 1]]

    def complete_items(self, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        total_chunks = sum(len(c.chunks) for c in completed)
        if self.write_connections == 1 or len(completed) < 2 or total_chunks < PARALLEL_WRITE_MIN_CHUNKS:
            return self._complete(worker, completed)
        groups = _balanced_groups(completed, self.write_connections)
        stores = self._connections(len(groups))
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            results = pool.map(
                lambda pair: pair[0]._complete(worker, pair[1]), zip(stores, groups, strict=False)
            )
            return set().union(*results)

    def _complete(self, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        if not completed:
            return set()
        with self._vector_connection() as conn, conn.transaction():
            stored = self._finish(conn, worker, completed)
            if stored:
                changed = self._drop_changed_chunks(conn, [c for c in completed if c.item.id in stored])
                self._copy_chunks(conn, changed)
        return stored

    @staticmethod
    def _drop_changed_chunks(conn: Any, completed: list[CompletedItem]) -> list[CompletedItem]:
        """Delete the stored chunks the new ones do not match; return the items with only their
        chunks still to write. A stored row stays when its index, text hash, embedding model and
        dimensions, token count and character span are all the same: reprocessing unchanged content
        writes nothing, and an edit rewrites (and re-indexes) only the chunks from the edit on."""
        known = [c.item.id for c in completed if c.item.processed_sha256 is not None]
        stored: dict[tuple[uuid.UUID, int], tuple[Any, ...]] = {}
        if known:
            rows = conn.execute(
                f"select knowledge_item_id, chunk_index, {', '.join(_CHUNK_IDENTITY)} "
                "from knowledge_chunks where knowledge_item_id = any(%s)",
                (known,),
            ).fetchall()
            for r in rows:
                stored[(r["knowledge_item_id"], r["chunk_index"])] = tuple(r[k] for k in _CHUNK_IDENTITY)
        kept: set[tuple[uuid.UUID, int]] = set()
        changed: list[CompletedItem] = []
        for c in completed:
            chunks = []
            for chunk in c.chunks:
                key = (c.item.id, chunk.chunk_index)
                same = (
                    chunk.content_sha256,
                    c.model,
                    c.dimensions,
                    chunk.token_count,
                    chunk.char_start,
                    chunk.char_end,
                )
                if stored.get(key) == same:
                    kept.add(key)
                else:
                    chunks.append(chunk)
            if chunks:
                changed.append(replace(c, chunks=chunks))
        stale = [key for key in stored if key not in kept]
        if stale:
            conn.execute(
                "delete from knowledge_chunks c using unnest(%s::uuid[], %s::integer[]) as s (item_id, idx) "
                "where c.knowledge_item_id = s.item_id and c.chunk_index = s.idx",
                ([k[0] for k in stale], [k[1] for k in stale]),
            )
        new = [c.item.id for c in completed if c.item.processed_sha256 is None]
        if new:  # never processed: no chunks expected, but rows written by hand are replaced too
            conn.execute("delete from knowledge_chunks where knowledge_item_id = any(%s)", (new,))
        return changed

    @staticmethod
    def _finish(conn: Any, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        """Mark the items done (those this worker still holds, content unchanged) in one call."""
        stored: set[uuid.UUID] = set()
        for model, dimensions in {(c.model, c.dimensions) for c in completed}:
            batch = [c for c in completed if (c.model, c.dimensions) == (model, dimensions)]
            rows = conn.execute(
                "select item_id from public.finish_knowledge_items(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    worker,
                    [c.item.id for c in batch],
                    [c.item.content_sha256 for c in batch],
                    [c.summary for c in batch],
                    model,
                    dimensions,
                    [len(c.chunks) for c in batch],
                    [c.token_count for c in batch],
                    [c.elapsed_ms for c in batch],
                ),
            ).fetchall()
            stored |= {uuid.UUID(str(row["item_id"])) for row in rows}
        return stored

    @staticmethod
    def _copy_chunks(conn: Any, completed: list[CompletedItem]) -> None:
        """Binary COPY of the rows `copy_rows_binary` encodes (psycopg's per-field dumpers cost
        several times more CPU per row than packing the known layout directly)."""
        columns = (
            "id, knowledge_item_id, chunk_index, content, embedding, client_id, token_count, "
            "embedding_model, embedding_dimensions, char_start, char_end, content_sha256"
        )
        statement = f"copy public.knowledge_chunks ({columns}) from stdin (format binary)"
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for block in copy_rows_binary(completed):
                copy.write(block)

    def fail_item(
        self,
        item_id: uuid.UUID,
        worker: str,
        error: str,
        max_attempts: int,
        retry_base_s: float,
        permanent: bool,
    ) -> str | None:
        with self.holder.connection() as conn:
            row = conn.execute(
                "select public.fail_knowledge_item(%s, %s, %s, %s, %s, %s) as status",
                (item_id, worker, error, max_attempts, retry_base_s, permanent),
            ).fetchone()
        return row["status"] if row else None

    def release_items(self, item_ids: list[uuid.UUID], worker: str) -> int:
        if not item_ids:
            return 0
        with self.holder.connection() as conn:
            row = conn.execute(
                "select public.release_knowledge_items(%s, %s) as n", (item_ids, worker)
            ).fetchone()
        return int(row["n"]) if row else 0

    def client_summary(self, client_id: uuid.UUID) -> str | None:
        backlog = self.client_summary_backlog(client_id)
        return backlog.get("summary") or None

    def client_summary_backlog(self, client_id: uuid.UUID, max_items: int = 50) -> dict[str, Any]:
        statement = "select public.client_summary_backlog(%s, %s)"
        backlog = self._value(statement, (client_id, max_items), idempotent=True)
        return dict(backlog) if backlog else {"summary": "", "version": 0, "items": []}

    def save_client_summary(
        self,
        client_id: uuid.UUID,
        expected_version: int,
        summary: str,
        item_ids: list[uuid.UUID],
        model: str,
        processed_at: list[str] | None = None,
    ) -> bool:
        with self.holder.connection() as conn:
            row = conn.execute(
                "select public.save_client_summary(%s, %s, %s, %s, %s, %s::timestamptz[]) as ok",
                (client_id, expected_version, summary, item_ids, model, processed_at),
            ).fetchone()
        return bool(row and row["ok"])

    def defer_items(self, item_ids: list[uuid.UUID], worker: str, error: str, retry_base_s: float) -> int:
        if not item_ids:
            return 0
        return int(
            self._value(
                "select public.defer_knowledge_items(%s, %s, %s, %s)", (item_ids, worker, error, retry_base_s)
            )
            or 0
        )

    def provider_gate(self, provider: str, worker: str, probe_s: float) -> dict[str, Any]:
        statement = "select public.provider_gate(%s, %s, %s)"
        return dict(self._value(statement, (provider, worker, probe_s), idempotent=True))

    def record_provider_failure(
        self, provider: str, error: str, quota: bool, retry_after_s: float | None, probe_s: float
    ) -> dict[str, Any]:
        statement = "select public.record_provider_failure(%s, %s, %s, %s, probe_seconds => %s)"
        return dict(self._value(statement, (provider, error, quota, retry_after_s, probe_s)))

    def record_provider_success(self, provider: str) -> bool:
        return bool(self._value("select public.record_provider_success(%s)", (provider,)))

    def find_summaries(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        with self.holder.connection() as conn:
            rows = conn.execute("select * from public.find_summaries(%s)", (keys,)).fetchall()
        return {row["input_sha256"]: row["summary"] for row in rows}

    def save_summaries(self, summaries: dict[str, str]) -> int:
        if not summaries:
            return 0
        statement = "select public.save_summaries(%s, %s)"
        return int(self._value(statement, (list(summaries), list(summaries.values()))) or 0)

    def schema_facts(self) -> dict[str, Any]:
        return dict(self._value("select public.knowledge_schema()", (), idempotent=True) or {})

    def _value(self, statement: str, params: tuple[Any, ...], idempotent: bool = False) -> Any:
        """The single value `statement` selects; `idempotent` calls survive a dropped idle
        connection (`ConnectionHolder.run`)."""
        row = self.holder.run(lambda conn: conn.execute(statement, params).fetchone(), idempotent=idempotent)
        return next(iter(row.values())) if row else None

    def clients_with_summary_backlog(self, max_clients: int = 100) -> list[uuid.UUID]:
        statement = "select public.clients_with_summary_backlog(%s) as client_id"
        rows = self.holder.run(
            lambda conn: conn.execute(statement, (max_clients,)).fetchall(), idempotent=True
        )
        return [uuid.UUID(str(row["client_id"])) for row in rows]

    def index_chunks(self, max_rows: int) -> int:
        """HNSW inserts are CPU-bound in the server: a large batch is split over the writer
        connections, so each uses its own backend (and core)."""
        if max_rows < 2 * INDEX_SPLIT_MIN_ROWS or self.write_connections == 1:
            return self._index_chunks(max_rows)
        stores = self._connections(self.write_connections)
        share = -(-max_rows // len(stores))
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            return sum(pool.map(lambda store: store._index_chunks(share), stores))

    def _index_chunks(self, max_rows: int) -> int:
        with self.holder.connection() as conn:
            row = conn.execute("select public.index_pending_chunks(%s) as n", (max_rows,)).fetchone()
        return int(row["n"]) if row else 0

    def search(self, embedding: array[float], k: int, client_id: uuid.UUID | None) -> list[SearchHit]:
        statement = "select * from public.match_knowledge_chunks(%s, %s, %s)"
        rows = self.holder.run(
            lambda conn: self._with_vectors(conn).execute(statement, (embedding, k, client_id)).fetchall(),
            idempotent=True,
        )
        return [SearchHit(**row) for row in rows]


PARALLEL_WRITE_MIN_CHUNKS = 200
# What must match for a stored chunk row to stay when its item is processed again.
_CHUNK_IDENTITY = (
    "content_sha256",
    "embedding_model",
    "embedding_dimensions",
    "token_count",
    "char_start",
    "char_end",
)
INDEX_SPLIT_MIN_ROWS = 32


COPY_BLOCK_BYTES = 1 << 20
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
_ROW_HEAD = struct.Struct(">hi16si16siii")  # field count; id; item uuid; chunk_index; content length
_VECTOR_HEAD = struct.Struct(">iHH")  # field length; pgvector's dimensions and unused int16
_CLIENT_TOKENS = struct.Struct(">i16siii")  # client uuid; token_count; model length
_ROW_TAIL = struct.Struct(">iiiiiii")  # dimensions; char_start; char_end; content_sha256 length


def copy_rows_binary(completed: list[CompletedItem]) -> Iterator[bytes]:
    """The chunk rows of `completed` in PostgreSQL's binary COPY format, in blocks of about
    COPY_BLOCK_BYTES, columns as `_copy_chunks` names them: (id, item uuid, chunk_index, content,
    embedding, client uuid, token_count, model, dimensions, char_start, char_end, content_sha256),
    each row's id from `time_ordered_ids`. Each field is its byte length, then uuid as 16 raw
    bytes, int4 big-endian, text as UTF-8, and the vector in pgvector's binary form (int16
    dimensions, int16 unused, big-endian float32 values)."""
    block = bytearray(_COPY_SIGNATURE)
    ids = time_ordered_ids()
    for c in completed:
        item_id, client_id, model = c.item.id.bytes, c.item.client_id.bytes, c.model.encode()
        for chunk in c.chunks:
            text = chunk.content.encode()
            vector = array("f", chunk.embedding)
            if sys.byteorder == "little":
                vector.byteswap()
            block += _ROW_HEAD.pack(12, 16, next(ids), 16, item_id, 4, chunk.chunk_index, len(text))
            block += text
            block += _VECTOR_HEAD.pack(4 + 4 * len(vector), len(vector), 0)
            block += vector.tobytes()
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


def time_ordered_ids() -> Iterator[bytes]:
    """UUIDv7 values (RFC 9562) as 16 bytes, increasing: the Unix time in milliseconds, then a
    random start that counts up. New chunk rows then land at the right edge of the primary key
    instead of on a random leaf page each (as `gen_random_uuid()` would), which keeps the key's
    pages cached and out of the WAL's full-page images."""
    millis = time.time_ns() // 1_000_000
    counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 random bits: room to count up in 74
    while True:
        high, low = counter >> 62, counter & _LOW_62
        yield ((millis << 80) | (0x7 << 76) | (high << 64) | (0b10 << 62) | low).to_bytes(16, "big")
        counter += 1


_LOW_62 = (1 << 62) - 1


def _balanced_groups(completed: list[CompletedItem], count: int) -> list[list[CompletedItem]]:
    """Split items into `count` groups of about equal chunk counts (largest first, greedy)."""
    groups: list[list[CompletedItem]] = [[] for _ in range(count)]
    sizes = [0] * count
    for c in sorted(completed, key=lambda c: -len(c.chunks)):
        smallest = sizes.index(min(sizes))
        groups[smallest].append(c)
        sizes[smallest] += len(c.chunks)
    return [g for g in groups if g]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def default_store(settings: Any) -> Store:
    """The backend the settings choose: psycopg for `DATABASE_URL`, else PostgREST for Supabase."""
    from shared.errors import ConfigError

    if settings.database_url:
        return PostgresStore(ConnectionHolder(settings.database_url))
    if settings.supabase_url and settings.supabase_service_role_key:
        from shared.store.supabase import SupabaseStore

        return SupabaseStore(settings.supabase_url, settings.supabase_service_role_key)
    raise ConfigError("DATABASE_URL is not set (nor SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY).")
