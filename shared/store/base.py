"""Every store call, written once: which SQL function, with which arguments, and how its answer
reads. A backend only says how to run a SQL function (two primitives):

- `_rows(function, arguments)`: the rows of a set-returning function, as
  `select * from public.function(name => value, …)` gives them (dicts; a set of scalars has one
  column named after the function);
- `_value(function, arguments)`: the single value of a scalar function.

Arguments are Python values: uuids as `uuid.UUID`, arrays as lists, vectors as `array('f')`; the
backend adapts them (psycopg parameters, or PostgREST's JSON). `idempotent=True` marks a call
that may run twice on a dropped idle connection; `vectors=True` one that sends or reads `vector`s.
`max_rows` is how many rows one call may answer (PostgREST's `db-max-rows`; None: no limit):
claims, searches and backlogs are capped to it and look-ups go in pages of it.

`PostgresStore` overrides only what it does faster (completion by binary COPY, parallel writers);
`complete_items` here is the one-call-per-item path through `complete_knowledge_item`.
"""

from __future__ import annotations

import contextlib
import uuid
from array import array
from collections.abc import Sequence
from typing import Any

from shared.errors import NexusError
from shared.store.generations import GenerationCalls, completed_chunks
from shared.store.rows import ClaimedItem, CompletedItem, IngestOutcome, SearchHit, UsageEntry
from shared.store.vectors import from_pgvector_text, to_pgvector_text

__all__ = ["SqlFunctionStore"]


class SqlFunctionStore(GenerationCalls):
    """The store's calls over a backend's `_rows` and `_value` (see the module docstring)."""

    max_rows: int | None = None

    def close(self) -> None:
        raise NotImplementedError

    def _capped(self, count: int) -> int:
        return count if self.max_rows is None else min(count, self.max_rows)

    def _pages(self, values: list[str]) -> list[list[str]]:
        size = self.max_rows or max(len(values), 1)
        return [values[start : start + size] for start in range(0, len(values), size)]

    # --- ingest and clients ---

    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        rows = self._rows("ingest_knowledge_items", {"items": items})
        return sorted((IngestOutcome.from_row(row) for row in rows), key=lambda o: o.index)

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        self._value("ensure_client", {"client_id": client_id, "client_name": name}, idempotent=True)

    def status(self) -> dict[str, Any]:
        status = dict(self._value("knowledge_status", {}, idempotent=True) or {})
        status["budgets"] = self.client_budgets()
        status["rate_limits"] = self.provider_rate_status()
        status["freshness"] = dict(self._value("knowledge_freshness", {}, idempotent=True) or {})
        return status

    def schema_facts(self) -> dict[str, Any]:
        return dict(self._value("knowledge_schema", {}, idempotent=True) or {})

    # --- processing ---

    def claim_items(
        self,
        worker: str,
        lease_s: float,
        max_items: int,
        max_attempts: int,
        item_ids: list[uuid.UUID] | None = None,
        max_chars: int | None = None,
        probe: bool = False,
        usd_per_token: float | None = None,
    ) -> list[ClaimedItem]:
        arguments = {
            "worker": worker,
            "lease_seconds": lease_s,
            "max_items": self._capped(max_items),  # a lease beyond the answer would come back to nobody
            "max_attempts": max_attempts,
            "item_ids": item_ids,
            "max_chars": max_chars,
            "probe": probe,
            "usd_per_token": usd_per_token,
        }
        return [ClaimedItem.from_row(row) for row in self._rows("claim_knowledge_items", arguments)]

    def find_embeddings(self, hashes: list[str], model: str, dimensions: int) -> dict[str, array[float]]:
        found: dict[str, array[float]] = {}
        for page in self._pages(hashes):
            arguments = {"hashes": page, "model": model, "dimensions": dimensions}
            rows = self._rows("find_chunk_embeddings", arguments, idempotent=True, vectors=True)
            found.update((row["content_sha256"], _vector(row["embedding"])) for row in rows)
        return found

    def save_embeddings(self, vectors: dict[str, array[float]], model: str, dimensions: int) -> int:
        if not vectors:
            return 0
        arguments = {
            "hashes": list(vectors),
            "model": model,
            "dimensions": dimensions,
            "embeddings": [to_pgvector_text(v) for v in vectors.values()],
        }
        return int(self._value("save_chunk_embeddings", arguments) or 0)

    def complete_items(self, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        """One `complete_knowledge_item` call (one transaction) per item."""
        stored: set[uuid.UUID] = set()
        for c in completed:
            chunks = [
                {
                    "chunk_index": chunk.chunk_index,
                    "content": chunk.content,
                    "embedding": to_pgvector_text(chunk.embedding) if c.in_column else None,
                    "token_count": chunk.token_count,
                    "char_start": chunk.char_start,
                    "char_end": chunk.char_end,
                }
                for chunk in c.chunks
            ]
            arguments = {
                "item_id": c.item.id,
                "worker": worker,
                "claimed_sha256": c.item.content_sha256,
                "chunks": chunks,
                "item_summary": c.summary,
                "model": c.model,
                "dimensions": c.dimensions,
                "tokens": c.token_count,
                "elapsed_ms": c.elapsed_ms,
            }
            if c.usage:  # the overload that records what the item cost, in the same transaction
                arguments["usage"] = [entry.to_json() for entry in c.usage]
            if self._value("complete_knowledge_item", arguments):
                stored.add(c.item.id)
                if not c.in_column and c.generation is not None:
                    self._store_vectors_after(worker, c)
        return stored

    def _store_vectors_after(self, worker: str, c: CompletedItem) -> None:
        """The item's vectors for its active generation, when that keeps them in chunk_vectors: a
        second call here (PostgREST runs one function per transaction). If it fails, the
        generation is marked as lacking vectors, and the sweeps fill them."""
        assert c.generation is not None
        try:
            self.store_generation_vectors(c.generation.id, worker, *completed_chunks(c))
        except NexusError as exc:  # the item is stored: the rest of the claim must be too
            from shared.logs import get_logger

            get_logger().warning(
                "vectors not stored with their item; the sweeps fill them",
                extra={"knowledge_item_id": str(c.item.id), "error": str(exc)},
            )
            with contextlib.suppress(NexusError):
                self.release_generation_chunks(c.generation.id, worker)

    def fail_item(
        self,
        item_id: uuid.UUID,
        worker: str,
        error: str,
        max_attempts: int,
        retry_base_s: float,
        permanent: bool,
    ) -> str | None:
        arguments = {
            "item_id": item_id,
            "worker": worker,
            "error": error,
            "max_attempts": max_attempts,
            "retry_base_seconds": retry_base_s,
            "permanent": permanent,
        }
        status = self._value("fail_knowledge_item", arguments)
        return str(status) if status else None

    def release_items(self, item_ids: list[uuid.UUID], worker: str) -> int:
        if not item_ids:
            return 0
        return int(self._value("release_knowledge_items", {"item_ids": item_ids, "worker": worker}) or 0)

    def defer_items(self, item_ids: list[uuid.UUID], worker: str, error: str, retry_base_s: float) -> int:
        if not item_ids:
            return 0
        arguments = {
            "item_ids": item_ids,
            "worker": worker,
            "error": error,
            "retry_base_seconds": retry_base_s,
        }
        return int(self._value("defer_knowledge_items", arguments) or 0)

    def index_chunks(self, max_rows: int) -> int:
        return int(self._value("index_pending_chunks", {"max_rows": max_rows}) or 0)

    def build_vector_index(self, worker: str, lease_s: float, min_rows: int, max_rows: int) -> int | None:
        """None: a rebuild drops and creates the index concurrently, outside any transaction,
        which a call through PostgREST cannot do (the psycopg backend can)."""
        return None

    # --- the fleet's provider back-off ---

    def provider_gate(self, provider: str, worker: str, probe_s: float) -> dict[str, Any]:
        arguments = {"provider_name": provider, "worker": worker, "probe_seconds": probe_s}
        return dict(self._value("provider_gate", arguments, idempotent=True))

    def record_provider_failure(
        self, provider: str, error: str, quota: bool, retry_after_s: float | None, probe_s: float
    ) -> dict[str, Any]:
        arguments = {
            "provider_name": provider,
            "error": error,
            "quota": quota,
            "retry_after_seconds": retry_after_s,
            "probe_seconds": probe_s,
        }
        return dict(self._value("record_provider_failure", arguments))

    def record_provider_success(self, provider: str) -> bool:
        return bool(self._value("record_provider_success", {"provider_name": provider}))

    # --- the fleet's rate limits ---

    def side_store(self) -> SqlFunctionStore:
        """A store for short calls made from provider threads while this one may be busy (the
        rate limit's): this one, unless a backend holds a single connection."""
        return self

    def take_provider_capacity(
        self,
        provider: str,
        model: str,
        tokens: float,
        requests: float,
        limits: tuple[float, float, float],
        backfill: bool = False,
        max_wait_s: float | None = None,
    ) -> tuple[bool, float]:
        arguments = {
            "provider_name": provider,
            "model_name": model,
            "tokens": float(tokens),
            "requests": float(requests),
            "tokens_per_minute": limits[0],
            "requests_per_minute": limits[1],
            "burst_seconds": limits[2],
            "backfill": backfill,
            "max_wait_seconds": max_wait_s,
        }
        answer = dict(self._value("take_provider_capacity", arguments) or {})
        return bool(answer.get("taken")), float(answer.get("wait_s") or 0.0)

    def provider_throttled(self, provider: str, model: str, retry_after_s: float | None) -> float | None:
        arguments = {"provider_name": provider, "model_name": model, "retry_after_seconds": retry_after_s}
        scale = self._value("provider_throttled", arguments)
        return None if scale is None else float(scale)

    def provider_rate_status(self) -> list[dict[str, Any]]:
        rows = self._rows("provider_rate_status", {}, idempotent=True)
        return [dict(row["provider_rate_status"]) for row in rows]

    # --- summaries ---

    def find_summaries(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for page in self._pages(keys):
            rows = self._rows("find_summaries", {"keys": page})
            found.update({row["input_sha256"]: row["summary"] for row in rows})
        return found

    def save_summaries(self, summaries: dict[str, str]) -> int:
        if not summaries:
            return 0
        arguments = {"keys": list(summaries), "summaries": list(summaries.values())}
        return int(self._value("save_summaries", arguments) or 0)

    def client_summary(self, client_id: uuid.UUID) -> str | None:
        return self.client_summary_backlog(client_id).get("summary") or None

    def client_summary_backlog(self, client_id: uuid.UUID, max_items: int = 50) -> dict[str, Any]:
        arguments = {"client": client_id, "max_items": max_items}
        backlog = self._value("client_summary_backlog", arguments, idempotent=True)
        return dict(backlog) if backlog else {"summary": "", "version": 0, "items": []}

    def save_client_summary(
        self,
        client_id: uuid.UUID,
        expected_version: int,
        summary: str,
        item_ids: list[uuid.UUID],
        model: str,
        processed_at: list[str] | None = None,
        usage: Sequence[UsageEntry] = (),
    ) -> bool:
        arguments: dict[str, Any] = {
            "client": client_id,
            "expected_version": expected_version,
            "new_summary": summary,
            "folded_item_ids": item_ids,
            "model_name": model,
            "folded_processed_at": processed_at,
        }
        if usage:  # the overload that records what the fold cost, in the same transaction
            arguments["usage"] = [entry.to_json() for entry in usage]
        return bool(self._value("save_client_summary", arguments))

    # --- usage ---

    def record_usage(self, entries: Sequence[UsageEntry]) -> int:
        if not entries:
            return 0
        return int(self._value("record_usage", {"entries": [e.to_json() for e in entries]}) or 0)

    def explain_item(self, item_id: uuid.UUID) -> dict[str, Any] | None:
        facts = self._value("explain_knowledge_item", {"item": item_id}, idempotent=True)
        return dict(facts) if facts else None

    # --- the operator page ---

    def throughput(self, hours: int = 24) -> list[dict[str, Any]]:
        answer = self._value("knowledge_throughput", {"window_hours": hours}, idempotent=True)
        return [dict(row) for row in answer or []]

    def failed_items(self, max_items: int = 50) -> list[dict[str, Any]]:
        answer = self._value("failed_knowledge_items", {"max_items": max_items}, idempotent=True)
        return [dict(row) for row in answer or []]

    def client_overview(self, since: str | None = None, max_clients: int = 50) -> list[dict[str, Any]]:
        arguments = {"since": since, "max_clients": max_clients}
        return [dict(row) for row in self._value("client_overview", arguments, idempotent=True) or []]

    def requeue_failed(self, item_id: uuid.UUID | None = None) -> int:
        arguments = {"item": item_id, "all_failed": item_id is None}
        return int(self._value("requeue_failed_items", arguments) or 0)

    def roll_up_usage(self) -> int:
        return int(self._value("roll_up_usage", {}) or 0)

    def client_budgets(self) -> list[dict[str, Any]]:
        rows = self._rows("client_budget_status", {}, idempotent=True)
        return [dict(row["client_budget_status"]) for row in rows]

    def set_client_budget(self, client_id: uuid.UUID, monthly_usd: float) -> dict[str, Any]:
        return dict(self._value("set_client_budget", {"client": client_id, "monthly_usd": monthly_usd}))

    def clear_client_budget(self, client_id: uuid.UUID) -> bool:
        return bool(self._value("clear_client_budget", {"client": client_id}))

    def usage_report(
        self, since: str | None = None, client_id: uuid.UUID | None = None
    ) -> list[dict[str, Any]]:
        return self._rows("usage_report", {"since": since, "client": client_id})

    def clients_with_summary_backlog(self, max_clients: int = 100) -> list[uuid.UUID]:
        function = "clients_with_summary_backlog"
        rows = self._rows(function, {"max_clients": self._capped(max_clients)}, idempotent=True)
        return [uuid.UUID(str(row[function])) for row in rows]

    # --- documents ---

    def document_pages(self, item_id: uuid.UUID, sha: str) -> dict[int, str]:
        """In pages of rows of at most `max_rows` (PostgREST's cap), from after the last one read."""
        pages: dict[int, str] = {}
        size = self.max_rows or 100_000
        while True:
            arguments = {
                "item_id": item_id,
                "sha": sha,
                "after_page": max(pages, default=0),
                "max_pages": size,
            }
            rows = self._rows("document_pages", arguments, idempotent=True)
            pages.update((int(row["page"]), str(row["text"])) for row in rows)
            if len(rows) < size:
                return pages

    def save_document_pages(self, item_id: uuid.UUID, sha: str, pages: dict[int, str]) -> int:
        arguments = {"item_id": item_id, "sha": sha, "pages": list(pages), "texts": list(pages.values())}
        return int(self._value("save_document_pages", arguments, idempotent=True) or 0)

    def drop_document_pages(self, item_ids: list[uuid.UUID]) -> int:
        if not item_ids:
            return 0
        return int(self._value("drop_document_pages", {"item_ids": item_ids}, idempotent=True) or 0)

    def save_outlines(self, outlines: list[dict[str, Any]]) -> int:
        if not outlines:
            return 0
        return int(self._value("save_item_outlines", {"outlines": outlines}, idempotent=True) or 0)

    def chunk_locations(
        self, chunk_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[int | None, tuple[str, ...]]]:
        if not chunk_ids:
            return {}
        rows = self._rows("chunk_locations", {"chunk_ids": chunk_ids}, idempotent=True)
        return {
            uuid.UUID(str(row["id"])): (
                None if row["page"] is None else int(row["page"]),
                tuple(row["headings"] or ()),
            )
            for row in rows
        }

    # --- search ---

    def search(self, embedding: array[float], k: int, client_id: uuid.UUID | None) -> list[SearchHit]:
        arguments = {
            "query_embedding": embedding,
            "match_count": self._capped(k),
            "filter_client_id": client_id,
        }
        rows = self._rows("match_knowledge_chunks", arguments, idempotent=True, vectors=True)
        return [SearchHit.from_row(row) for row in rows]

    def search_hybrid(
        self, query: str, embedding: array[float] | None, k: int, client_id: uuid.UUID | None
    ) -> list[SearchHit]:
        arguments = {
            "query_text": query,
            "query_embedding": embedding,
            "match_count": self._capped(k),
            "filter_client_id": client_id,
        }
        rows = self._rows("match_knowledge_chunks_hybrid", arguments, idempotent=True, vectors=True)
        return [SearchHit.from_row(row) for row in rows]


def _vector(value: Any) -> array[float]:
    """A vector as read: `array('f')` from psycopg, pgvector's text form (or a JSON array) from PostgREST."""
    if isinstance(value, array):
        return value
    return from_pgvector_text(value) if isinstance(value, str) else array("f", value)
