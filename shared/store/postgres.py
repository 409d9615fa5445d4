"""The psycopg backend (`DATABASE_URL`): the SQL functions as `select … from public.f(name => …)`.

One connection per process (`ConnectionHolder`), reused across warm invocations; `idempotent`
calls survive a dropped idle connection (`ConnectionHolder.run`). Beyond the calls of
`SqlFunctionStore` it does three things faster: chunks are written by binary COPY
(`shared.store.copy_binary`) after `keep_unchanged_chunks` has said which stored rows stay; a
large batch of chunk writes or index moves is spread over `write_connections` connections (HNSW
inserts are CPU-bound in the server, so parallel writers use more than one core); and pgvector's
type is registered once per connection, so vectors travel in binary.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import PyFormat
from psycopg.types.json import Jsonb

from shared.errors import NexusError, RefusedByDatabase
from shared.store.base import SqlFunctionStore
from shared.store.database import ConnectionHolder
from shared.store.generations import completed_chunks, store_vectors_arguments
from shared.store.rows import CompletedItem, GenerationChunk

__all__ = ["INDEX_SPLIT_MIN_ROWS", "PARALLEL_WRITE_MIN_CHUNKS", "PostgresStore"]

PARALLEL_WRITE_MIN_CHUNKS = 200
INDEX_SPLIT_MIN_ROWS = 32

# Arguments whose SQL type psycopg cannot tell from the Python value (PostgREST reads it from the
# function's signature): JSON documents, and arrays that may be empty or hold strings.
_JSONB_ARGUMENTS = frozenset({"items", "chunks", "usage", "entries", "outlines"})
_CASTS = {
    "save_client_summary": {"folded_processed_at": "timestamptz[]"},
    "usage_report": {"since": "date", "client": "uuid"},
    "requeue_failed_items": {"item": "uuid"},
    "client_overview": {"since": "date"},
    "set_client_budget": {"monthly_usd": "numeric"},
    "keep_unchanged_chunks": {
        "item_ids": "uuid[]",
        "reprocessed": "boolean[]",
        "item_models": "text[]",
        "item_dimensions": "integer[]",
        "chunk_item_ids": "uuid[]",
        "chunk_indexes": "integer[]",
        "chunk_sha256s": "text[]",
        "chunk_token_counts": "integer[]",
        "chunk_char_starts": "integer[]",
        "chunk_char_ends": "integer[]",
    },
    "claim_generation_chunks": {"only_items": "uuid[]"},
    "save_document_pages": {"pages": "integer[]", "texts": "text[]"},
    "store_generation_vectors": {
        "item_ids": "uuid[]",
        "chunk_indexes": "integer[]",
        "hashes": "text[]",
        "embeddings": "text[]",
    },
}
_ROWS = "select * from {}({})"
_VALUE = "select {}({})"


class PostgresStore(SqlFunctionStore):
    """The psycopg backend: one connection per process, reused across warm invocations."""

    def __init__(self, holder: ConnectionHolder, write_connections: int = 2) -> None:
        self.holder = holder
        self.write_connections = max(1, write_connections)
        self._writers: list[PostgresStore] = []
        self._side: PostgresStore | None = None
        self._side_lock = threading.Lock()

    def close(self) -> None:
        for writer in self._writers:
            writer.holder.close()
        if self._side is not None:
            self._side.holder.close()
        self.holder.close()

    def side_store(self) -> PostgresStore:
        """A sibling on a connection of its own (opened once): provider threads take the rate
        limit's capacity there while this connection may be writing a claim."""
        with self._side_lock:
            if self._side is None:
                self._side = PostgresStore(self.holder.sibling(), write_connections=1)
            return self._side

    # --- the two primitives ---

    def _rows(
        self, function: str, arguments: dict[str, Any], *, idempotent: bool = False, vectors: bool = False
    ) -> list[dict[str, Any]]:
        with _refusals():
            if vectors:  # pgvector's binary form both ways: no float formatting or parsing
                return self.holder.run(
                    lambda conn: _rows_on(self._with_vectors(conn).cursor(binary=True), function, arguments),
                    idempotent=idempotent,
                )
            return self.holder.run(lambda conn: _rows_on(conn, function, arguments), idempotent=idempotent)

    def _value(self, function: str, arguments: dict[str, Any], *, idempotent: bool = False) -> Any:
        statement = _statement(_VALUE, function, tuple(arguments))
        with _refusals():
            row = self.holder.run(
                lambda conn: conn.execute(statement, _parameters(arguments)).fetchone(), idempotent=idempotent
            )
        return next(iter(row.values())) if row else None

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

    # --- chunk writes: binary COPY, over parallel writers ---

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
        """Mark the items done, keep their unchanged chunk rows and COPY the rest, in one transaction."""
        if not completed:
            return set()
        with self._vector_connection() as conn, conn.transaction():
            stored = self._finish(conn, worker, completed)
            usage = [entry.to_json() for c in completed if c.item.id in stored for entry in c.usage]
            if usage:
                _rows_on(conn, "record_usage", {"entries": usage})
            if stored:
                changed = self._keep_unchanged_chunks(conn, [c for c in completed if c.item.id in stored])
                self._copy_chunks(conn, changed)
                _store_table_vectors(conn, worker, [c for c in changed if not c.in_column])
        return stored

    @staticmethod
    def _finish(conn: Any, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        """Mark the items done (those this worker still holds, content unchanged) in one call per
        (model, dimensions)."""
        stored: set[uuid.UUID] = set()
        for model, dimensions in {(c.model, c.dimensions) for c in completed}:
            batch = [c for c in completed if (c.model, c.dimensions) == (model, dimensions)]
            arguments = {
                "worker": worker,
                "item_ids": [c.item.id for c in batch],
                "claimed_sha256s": [c.item.content_sha256 for c in batch],
                "item_summaries": [c.summary for c in batch],
                "model": model,
                "dimensions": dimensions,
                "chunk_counts": [len(c.chunks) for c in batch],
                "token_counts": [c.token_count for c in batch],
                "elapsed_mss": [c.elapsed_ms for c in batch],
            }
            rows = _rows_on(conn, "finish_knowledge_items", arguments)
            stored |= {uuid.UUID(str(row["item_id"])) for row in rows}
        return stored

    @staticmethod
    def _keep_unchanged_chunks(conn: Any, completed: list[CompletedItem]) -> list[CompletedItem]:
        """Apply the keep rule (`keep_unchanged_chunks` in the migrations): stale stored rows are
        deleted; returns the items with only their chunks still to write."""
        reprocessed = [c for c in completed if c.item.processed_sha256 is not None]
        new_chunks = [(c.item.id, chunk) for c in reprocessed for chunk in c.chunks]
        arguments = {
            "item_ids": [c.item.id for c in completed],
            "reprocessed": [c.item.processed_sha256 is not None for c in completed],
            "item_models": [c.model for c in completed],
            "item_dimensions": [c.dimensions for c in completed],
            "chunk_item_ids": [item_id for item_id, _ in new_chunks],
            "chunk_indexes": [chunk.chunk_index for _, chunk in new_chunks],
            "chunk_sha256s": [chunk.content_sha256 for _, chunk in new_chunks],
            "chunk_token_counts": [chunk.token_count for _, chunk in new_chunks],
            "chunk_char_starts": [chunk.char_start for _, chunk in new_chunks],
            "chunk_char_ends": [chunk.char_end for _, chunk in new_chunks],
        }
        kept = {
            (row["item_id"], row["chunk_index"]) for row in _rows_on(conn, "keep_unchanged_chunks", arguments)
        }
        if not kept:
            return completed
        changed = []
        for c in completed:
            chunks = [chunk for chunk in c.chunks if (c.item.id, chunk.chunk_index) not in kept]
            if chunks:
                changed.append(replace(c, chunks=chunks))
        return changed

    @staticmethod
    def _copy_chunks(conn: Any, completed: list[CompletedItem]) -> None:
        """Binary COPY of the chunk rows `copy_rows_binary` encodes (imported here: only the process
        function writes chunks, and ingest's cold start need not load the encoder)."""
        from shared.store.copy_binary import COPY_COLUMNS, copy_rows_binary

        statement = sql.SQL("copy public.knowledge_chunks ({}) from stdin (format binary)").format(
            sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
        )
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for block in copy_rows_binary(completed):
                copy.write(block)

    def build_vector_index(self, worker: str, lease_s: float, min_rows: int, max_rows: int) -> int | None:
        """The rebuild the migration `…_bulk_vector_index.sql` describes, of the first vector index
        (the column's, then each generation's) whose rows mostly wait: lease and definition from
        `begin_vector_index_build`, then drop, mark its waiting rows, create concurrently (with
        the server's parallel maintenance workers), end. Searches answer throughout (exactly, over
        rows outside any index). A failure leaves the lease to run out, and the next caller after
        it rebuilds the index from the kept definition."""
        arguments = {
            "worker": worker,
            "lease_s": lease_s,
            "min_rows": min_rows,
            "max_rows": max_rows,
        }
        definition = self._value("begin_vector_index_build", arguments)
        if not definition:
            return None
        name, create = _concurrent_index_statements(str(definition))

        def rebuild(conn: Any) -> int:
            try:
                drop = sql.SQL("drop index concurrently if exists {}").format(sql.Identifier("public", name))
                conn.execute(drop)
                row = conn.execute("select public.mark_vectors_indexed(%s) as moved", (name,)).fetchone()
                conn.execute(create)
                conn.execute("select public.end_vector_index_build(%s)", (worker,))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:  # e.g. no shared memory for the parallel build
                raise NexusError(
                    f"The vector index {name} was not rebuilt ({exc.sqlstate}); searches stay exact "
                    "over its rows, and the next run builds it once the lease runs out."
                ) from None
            return int(row["moved"]) if row else 0

        return self.holder.run(rebuild, idempotent=False)

    def index_chunks(self, max_rows: int) -> int:
        """HNSW inserts are CPU-bound in the server: a large batch is split over the writer
        connections, so each uses its own backend (and core)."""
        if max_rows < 2 * INDEX_SPLIT_MIN_ROWS or self.write_connections == 1:
            return super().index_chunks(max_rows)
        stores = self._connections(self.write_connections)
        share = -(-max_rows // len(stores))
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            return sum(pool.map(lambda store: SqlFunctionStore.index_chunks(store, share), stores))


def _store_table_vectors(conn: Any, worker: str, completed: list[CompletedItem]) -> None:
    """The vectors of items whose active generation keeps them in `chunk_vectors`, stored in
    the transaction that writes their chunks (`store_generation_vectors`)."""
    for generation in {c.generation.id for c in completed if c.generation is not None}:
        chunks: list[GenerationChunk] = []
        vectors: list[Any] = []
        for c in completed:
            if c.generation is not None and c.generation.id == generation:
                item_chunks, item_vectors = completed_chunks(c)
                chunks += item_chunks
                vectors += item_vectors
        arguments = store_vectors_arguments(generation, worker, chunks, vectors)
        conn.execute(_statement(_VALUE, "store_generation_vectors", tuple(arguments)), _parameters(arguments))


@contextmanager
def _refusals() -> Iterator[None]:
    """A SQL function's `raise exception` (SQLSTATE P0001, a sentence for the user) as
    `RefusedByDatabase`."""
    try:
        yield
    except psycopg.errors.RaiseException as exc:
        raise RefusedByDatabase(exc.diag.message_primary or str(exc)) from None


def _concurrent_index_statements(definition: str) -> tuple[str, str]:
    """(index name, its `create index concurrently` statement) from `pg_get_indexdef`'s text,
    e.g. `CREATE INDEX name ON public.t USING hnsw (…) WHERE …`."""
    match = re.match(r"CREATE (UNIQUE )?INDEX (\S+) ON ", definition)
    if match is None:
        raise ValueError(f"not an index definition: {definition[:80]!r}")
    name = match.group(2).split(".")[-1].strip('"')
    return name, f"CREATE {match.group(1) or ''}INDEX CONCURRENTLY {definition[match.start(2) :]}"


def _rows_on(conn: Any, function: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of `public.function(arguments)` on a connection or cursor."""
    rows: list[dict[str, Any]] = conn.execute(
        _statement(_ROWS, function, tuple(arguments)), _parameters(arguments)
    ).fetchall()
    return rows


@functools.cache
def _statement(template: str, function: str, names: tuple[str, ...]) -> bytes:
    """`template` with `public.function` and its named arguments (`name => %(name)s`), rendered
    once. An argument psycopg cannot type is cast, and (its type then fixed) sent in binary, which
    for arrays of uuids and hashes costs a fraction of their text form."""
    casts = _CASTS.get(function, {})
    arguments = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(
            sql.Identifier(name),
            sql.SQL("{}::{}").format(sql.Placeholder(name, PyFormat.BINARY), sql.SQL(casts[name]))
            if name in casts
            else sql.Placeholder(name),
        )
        for name in names
    )
    return sql.SQL(template).format(sql.Identifier("public", function), arguments).as_bytes()


def _parameters(arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        name: Jsonb(value, dumps=_dumps) if name in _JSONB_ARGUMENTS else value
        for name, value in arguments.items()
    }


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
