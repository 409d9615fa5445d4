"""The PostgREST backend: used when `DATABASE_URL` is absent but `SUPABASE_URL` and
`SUPABASE_SERVICE_ROLE_KEY` are set. It calls only SQL functions from the migrations, via `rpc`,
so both backends run the same SQL and give the same results.

Failures map to one sentence naming what to fix: an unreachable Supabase or a transient database
error is `DatabaseUnavailable` (503, retry); a rejected key or missing function is a `ConfigError`
naming the variable or the migrations; anything else is a `SupabaseError`. PostgREST's own
message goes to the log, not to the caller.

PostgREST returns at most `db-max-rows` rows (1000 on Supabase) of a set-returning function and
drops the rest silently, after the function has run in full. So no call may produce more rows than
`max_rows`: a claim leases at most `max_rows` items (a lease beyond it would come back to nobody),
embedding look-ups go in pages of `max_rows` hashes, and search and backlog sizes are capped.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.errors import ConfigError, DatabaseUnavailable, NexusError
from shared.store.postgres import ClaimedItem, CompletedItem, IngestOutcome, SearchHit
from shared.store.vectors import from_pgvector_text, to_pgvector_text

CONNECT_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 60
DEFAULT_MAX_ROWS = 1000  # Supabase's db-max-rows

# "Try again": PostgREST cannot reach the database (or its pool), or the database failed
# transiently (connection, serialisation or deadlock, resources, operator intervention).
_UNREACHABLE_CODES = ("PGRST000", "PGRST001", "PGRST002", "PGRST003")
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


class SupabaseError(NexusError):
    """Supabase refused a call for a reason that retrying will not fix."""

    status = 500


class SupabaseStore:
    """Runs the store's SQL functions through supabase-py's `rpc` (service role key).

    One HTTP client per store, reused across warm invocations; `close()` releases it. `max_rows`
    must not exceed the project's PostgREST `db-max-rows`.
    """

    def __init__(
        self, url: str, service_role_key: str, client: Any = None, *, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1.")
        self.max_rows = max_rows
        self._http: Any = None
        if client is None:
            client = self._create_client(url, service_role_key)
        self.client = client

    def _create_client(self, url: str, service_role_key: str) -> Any:
        import httpx
        from supabase import ClientOptions, SupabaseException, create_client
        from supabase_auth import SyncMemoryStorage

        # Our own httpx client: supabase-py's default passes a deprecated `timeout` to postgrest
        # (a DeprecationWarning per client) and waits 120 s; this one is bounded and closable.
        self._http = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
        options = ClientOptions(
            httpx_client=self._http,
            storage=SyncMemoryStorage(),
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            return create_client(url, service_role_key, options=options)
        except SupabaseException as exc:  # a malformed URL or an empty key
            self.close()
            raise ConfigError(
                f"SUPABASE_URL or SUPABASE_SERVICE_ROLE_KEY is invalid: {exc.message}."
            ) from None

    def close(self) -> None:
        """Close the HTTP connections (the store can not be used afterwards)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def rpc(self, function: str, params: dict[str, Any]) -> Any:
        import httpx
        from postgrest.exceptions import APIError

        try:
            return self.client.rpc(function, params).execute().data
        except APIError as exc:
            raise _api_error(function, exc) from None
        except httpx.TimeoutException:
            raise DatabaseUnavailable(
                f"Supabase did not answer {function} in time; retry the request."
            ) from None
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(
                f"Supabase could not be reached ({type(exc).__name__}); check SUPABASE_URL and retry."
            ) from None

    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        rows = self.rpc("ingest_knowledge_items", {"items": items})
        return sorted((IngestOutcome.from_row(row) for row in rows), key=lambda o: o.index)

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        self.rpc("ensure_client", {"client_id": str(client_id), "client_name": name})

    def status(self) -> dict[str, Any]:
        return dict(self.rpc("knowledge_status", {}))

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
        rows = self.rpc(
            "claim_knowledge_items",
            {
                "worker": worker,
                "lease_seconds": lease_s,
                "max_items": min(max_items, self.max_rows),
                "max_attempts": max_attempts,
                "item_ids": None if item_ids is None else [str(i) for i in item_ids],
                "max_chars": max_chars,
                "probe": probe,
            },
        )
        return [ClaimedItem.from_row(row) for row in rows or []]

    def find_embeddings(self, hashes: list[str], model: str, dimensions: int) -> dict[str, Any]:
        if not hashes:
            return {}
        found: dict[str, Any] = {}
        for start in range(0, len(hashes), self.max_rows):
            page = hashes[start : start + self.max_rows]
            rows = self.rpc(
                "find_chunk_embeddings", {"hashes": page, "model": model, "dimensions": dimensions}
            )
            found.update((row["content_sha256"], _vector_from_json(row["embedding"])) for row in rows or [])
        return found

    def save_embeddings(self, vectors: dict[str, Any], model: str, dimensions: int) -> int:
        if not vectors:
            return 0
        arguments = {
            "hashes": list(vectors),
            "model": model,
            "dimensions": dimensions,
            "embeddings": [to_pgvector_text(v) for v in vectors.values()],
        }
        return int(self.rpc("save_chunk_embeddings", arguments) or 0)

    def complete_items(self, worker: str, completed: list[CompletedItem]) -> set[uuid.UUID]:
        """One `complete_knowledge_item` call (one transaction) per item."""
        stored: set[uuid.UUID] = set()
        for c in completed:
            chunks = [
                {
                    "chunk_index": chunk.chunk_index,
                    "content": chunk.content,
                    "embedding": to_pgvector_text(chunk.embedding),
                    "token_count": chunk.token_count,
                    "char_start": chunk.char_start,
                    "char_end": chunk.char_end,
                }
                for chunk in c.chunks
            ]
            ok = self.rpc(
                "complete_knowledge_item",
                {
                    "item_id": str(c.item.id),
                    "worker": worker,
                    "claimed_sha256": c.item.content_sha256,
                    "chunks": chunks,
                    "item_summary": c.summary,
                    "model": c.model,
                    "dimensions": c.dimensions,
                    "tokens": c.token_count,
                    "elapsed_ms": c.elapsed_ms,
                },
            )
            if ok:
                stored.add(c.item.id)
        return stored

    def fail_item(
        self,
        item_id: uuid.UUID,
        worker: str,
        error: str,
        max_attempts: int,
        retry_base_s: float,
        permanent: bool,
    ) -> str | None:
        status = self.rpc(
            "fail_knowledge_item",
            {
                "item_id": str(item_id),
                "worker": worker,
                "error": error,
                "max_attempts": max_attempts,
                "retry_base_seconds": retry_base_s,
                "permanent": permanent,
            },
        )
        return str(status) if status else None

    def release_items(self, item_ids: list[uuid.UUID], worker: str) -> int:
        if not item_ids:
            return 0
        return int(
            self.rpc("release_knowledge_items", {"item_ids": [str(i) for i in item_ids], "worker": worker})
        )

    def client_summary(self, client_id: uuid.UUID) -> str | None:
        return self.client_summary_backlog(client_id).get("summary") or None

    def client_summary_backlog(self, client_id: uuid.UUID, max_items: int = 50) -> dict[str, Any]:
        return dict(self.rpc("client_summary_backlog", {"client": str(client_id), "max_items": max_items}))

    def clients_with_summary_backlog(self, max_clients: int = 100) -> list[uuid.UUID]:
        rows = (
            self.rpc("clients_with_summary_backlog", {"max_clients": min(max_clients, self.max_rows)}) or []
        )
        return [uuid.UUID(str(row)) for row in rows]

    def save_client_summary(
        self,
        client_id: uuid.UUID,
        expected_version: int,
        summary: str,
        item_ids: list[uuid.UUID],
        model: str,
        processed_at: list[str] | None = None,
    ) -> bool:
        return bool(
            self.rpc(
                "save_client_summary",
                {
                    "client": str(client_id),
                    "expected_version": expected_version,
                    "new_summary": summary,
                    "folded_item_ids": [str(i) for i in item_ids],
                    "model_name": model,
                    "folded_processed_at": processed_at,
                },
            )
        )

    def defer_items(self, item_ids: list[uuid.UUID], worker: str, error: str, retry_base_s: float) -> int:
        if not item_ids:
            return 0
        params = {
            "item_ids": [str(i) for i in item_ids],
            "worker": worker,
            "error": error,
            "retry_base_seconds": retry_base_s,
        }
        return int(self.rpc("defer_knowledge_items", params) or 0)

    def provider_gate(self, provider: str, worker: str, probe_s: float) -> dict[str, Any]:
        params = {"provider_name": provider, "worker": worker, "probe_seconds": probe_s}
        return dict(self.rpc("provider_gate", params))

    def record_provider_failure(
        self, provider: str, error: str, quota: bool, retry_after_s: float | None, probe_s: float
    ) -> dict[str, Any]:
        params = {
            "provider_name": provider,
            "error": error,
            "quota": quota,
            "retry_after_seconds": retry_after_s,
            "probe_seconds": probe_s,
        }
        return dict(self.rpc("record_provider_failure", params))

    def record_provider_success(self, provider: str) -> bool:
        return bool(self.rpc("record_provider_success", {"provider_name": provider}))

    def find_summaries(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), self.max_rows):
            rows = self.rpc("find_summaries", {"keys": keys[start : start + self.max_rows]}) or []
            found.update({row["input_sha256"]: row["summary"] for row in rows})
        return found

    def save_summaries(self, summaries: dict[str, str]) -> int:
        if not summaries:
            return 0
        params = {"keys": list(summaries), "summaries": list(summaries.values())}
        return int(self.rpc("save_summaries", params) or 0)

    def schema_facts(self) -> dict[str, Any]:
        return dict(self.rpc("knowledge_schema", {}) or {})

    def index_chunks(self, max_rows: int) -> int:
        return int(self.rpc("index_pending_chunks", {"max_rows": max_rows}) or 0)

    def search(self, embedding: Any, k: int, client_id: uuid.UUID | None) -> list[SearchHit]:
        rows = self.rpc(
            "match_knowledge_chunks",
            {
                "query_embedding": to_pgvector_text(embedding),
                "match_count": min(k, self.max_rows),
                "filter_client_id": None if client_id is None else str(client_id),
            },
        )
        return [
            SearchHit(
                id=uuid.UUID(row["id"]),
                knowledge_item_id=uuid.UUID(row["knowledge_item_id"]),
                client_id=uuid.UUID(row["client_id"]),
                chunk_index=int(row["chunk_index"]),
                content=row["content"],
                source=row["source"],
                similarity=float(row["similarity"]),
            )
            for row in rows or []
        ]


def _api_error(function: str, exc: Any) -> NexusError:
    """Map a PostgREST error to the exception callers act on; log PostgREST's own words."""
    from shared.logs import get_logger

    code = str(exc.code or "")
    get_logger().error(
        "supabase rpc failed",
        extra={"function": function, "code": code, "error": exc.message, "hint": exc.hint},
    )
    # postgrest-py puts the HTTP status in `code` when the body is not PostgREST's (a proxy's page);
    # Supabase's gateway refuses an unknown `apikey` with a body that has a message but no code.
    is_http_status = len(code) == 3 and code.isdigit()
    is_sqlstate = len(code) == 5 and not code.startswith("PGRST")
    if (not code and "api key" in str(exc.message or "").lower()) or code in ("401", "403", "42501"):
        return ConfigError(
            f"Supabase refused the key calling {function}; "
            "check that SUPABASE_SERVICE_ROLE_KEY is the project's service_role (secret) key."
        )
    if code.startswith("PGRST3"):  # PostgREST's JWT errors
        return ConfigError(f"Supabase refused SUPABASE_SERVICE_ROLE_KEY calling {function} ({code}).")
    if code in ("PGRST202", "PGRST203", "42883", "404"):
        return ConfigError(
            f"Supabase has no usable function public.{function} ({code}); "
            "apply the migrations in infra/supabase/migrations (supabase db push)."
        )
    if (
        code.startswith(_UNREACHABLE_CODES)
        or (is_sqlstate and code.startswith(_TRANSIENT_SQLSTATE_CLASSES))
        or (is_http_status and code.startswith("5"))
    ):
        return DatabaseUnavailable(f"Supabase could not run {function} right now ({code}); retry.")
    return SupabaseError(f"Supabase could not run {function} ({code or 'no error code'}); see the logs.")


def _vector_from_json(value: Any) -> Any:
    """PostgREST sends a vector as its text form; accept a JSON array too."""
    from array import array

    return from_pgvector_text(value) if isinstance(value, str) else array("f", value)
