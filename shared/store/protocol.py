"""The `Store` protocol: every read and write the workers make, whatever the backend.

`PostgresStore` (psycopg) and `SupabaseStore` (PostgREST) implement it over the same SQL functions
(`shared.store.base.SqlFunctionStore`); tests may pass any object with these methods.
"""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

from shared.store.rows import (
    ClaimedItem,
    CompletedItem,
    Generation,
    GenerationChunk,
    IngestOutcome,
    SearchHit,
    UsageEntry,
)

__all__ = ["Store"]


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
        """Counts per status, the oldest pending item's time, recent failures, and `budgets`
        (`client_budgets`)."""
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
        usd_per_token: float | None = None,
    ) -> list[ClaimedItem]:
        """Lease up to `max_items` items (and `max_chars` characters) for `worker`, oldest first;
        `probe`: the pending item given back least often for a provider failure (see
        `claim_knowledge_items`). Items of a client at its monthly budget are passed over;
        `usd_per_token` estimates what an item will cost (per content token)."""
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
        """Take tokens and requests from the fleet's bucket for (provider, model) with `limits`
        (tokens and requests per minute, burst seconds): (taken, seconds to wait). Taken: the
        request may go after the wait. Not taken (a backfill that would eat into live work's
        quarter, or a wait over `max_wait_s`): ask again after the wait."""
        ...

    def provider_throttled(self, provider: str, model: str, retry_after_s: float | None) -> float | None:
        """A 429: pause the bucket for everyone and shrink its share; the new scale."""
        ...

    def provider_rate_status(self) -> list[dict[str, Any]]:
        """Each bucket: provider, model, limits, scale, paused_until, throttled (429s)."""
        ...

    def side_store(self) -> Any:
        """A store for short calls from provider threads while this one may be busy."""
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
        usage: Sequence[UsageEntry] = (),
    ) -> bool:
        """Store a folded summary unless another was saved since `expected_version`; marks folded
        only the items still carrying the summary read (their `processed_at` from the backlog).
        `usage` (what the fold cost) is recorded in the same transaction when it is saved."""
        ...

    def record_usage(self, entries: Sequence[UsageEntry]) -> int:
        """Record usage that no stored work carries (an item that failed or was given back)."""
        ...

    def explain_item(self, item_id: uuid.UUID) -> dict[str, Any] | None:
        """Where an item is and the facts of why (`explain_knowledge_item`); None if unknown."""
        ...

    def throughput(self, hours: int = 24) -> list[dict[str, Any]]:
        """Items done per hour over the last `hours` hours, oldest first, empty hours included:
        `hour`, `done`, `chunks`, `tokens` (`knowledge_throughput`)."""
        ...

    def failed_items(self, max_items: int = 50) -> list[dict[str, Any]]:
        """The failed items, last failed first: `id`, `client_id`, `source`, `attempts`,
        `client_name`, `last_error`, `created_at`, `updated_at`, `next_attempt_at`
        (`failed_knowledge_items`)."""
        ...

    def client_overview(self, since: str | None = None, max_clients: int = 50) -> list[dict[str, Any]]:
        """Per client, the `max_clients` that spent most since a UTC day (`YYYY-MM-DD`) first:
        `client_id`, `name`, items per status (`pending`, `processing`, `done`, `failed`) and the
        ledger's `requests`, `tokens`, `usd` (priced tokens), `unpriced_tokens`."""
        ...

    def requeue_failed(self, item_id: uuid.UUID | None = None) -> int:
        """Put a failed item (None: every failed item) back as `pending` with no attempt counted;
        items in other states are left alone. Returns how many were requeued."""
        ...

    def roll_up_usage(self) -> int:
        """Move ledger lines into the daily totals (one caller at a time); how many moved."""
        ...

    def client_budgets(self) -> list[dict[str, Any]]:
        """Each client budget: `client_id`, `monthly_usd`, `month`, `spent_usd`, `over_budget`,
        `waiting_items` (pending items of a client over its budget)."""
        ...

    def set_client_budget(self, client_id: uuid.UUID, monthly_usd: float) -> dict[str, Any]:
        """Set a client's monthly budget (USD); returns it as `client_budgets` shows it."""
        ...

    def clear_client_budget(self, client_id: uuid.UUID) -> bool:
        """Remove a client's budget; whether it had one."""
        ...

    def usage_report(
        self, since: str | None = None, client_id: uuid.UUID | None = None
    ) -> list[dict[str, Any]]:
        """Usage per client, model and kind since a UTC day (`YYYY-MM-DD`), for one client or all."""
        ...

    def clients_with_summary_backlog(self, max_clients: int = 100) -> list[uuid.UUID]:
        """Clients whose done items are not all folded into their summary yet."""
        ...

    def index_chunks(self, max_rows: int) -> int:
        """Move up to `max_rows` stored chunks into the vector index; returns how many moved."""
        ...

    def build_vector_index(self, worker: str, lease_s: float, min_rows: int, max_rows: int) -> int | None:
        """Rebuild the vector index over every stored chunk when most are waiting for it (at least
        `min_rows`) and it covers at most `max_rows` rows (`begin_vector_index_build`); returns
        the rows that joined it, or None when it was not rebuilt (rows are moved one by one)."""
        ...

    # --- embedding generations (`shared.store.generations`) ---

    def ensure_generation(self, model: str, dimensions: int) -> Generation:
        """The active generation; on a database with none yet, one made from these settings."""
        ...

    def generations_status(self) -> list[dict[str, Any]]: ...

    def plan_generation(self, model: str, dimensions: int) -> dict[str, Any]: ...

    def start_generation(self, model: str, dimensions: int) -> Generation: ...

    def cutover_generation(self) -> dict[str, Any]: ...

    def rollback_generation(self) -> dict[str, Any]: ...

    def drop_generation(self, generation_id: int) -> Generation: ...

    def claim_generation_chunks(
        self,
        generation_id: int,
        worker: str,
        max_chunks: int,
        lease_s: float,
        item_ids: list[uuid.UUID] | None = None,
    ) -> list[GenerationChunk]:
        """Lease chunks that have no vector for the generation yet."""
        ...

    def store_generation_vectors(
        self,
        generation_id: int,
        worker: str,
        chunks: list[GenerationChunk],
        vectors: list[array[float]],
        usage: Sequence[UsageEntry] = (),
    ) -> int:
        """Store each chunk's vector for the generation and drop this worker's leases on them;
        `usage` (what the vectors cost) is recorded in the same transaction."""
        ...

    def release_generation_chunks(self, generation_id: int, worker: str) -> int: ...

    def document_pages(self, item_id: uuid.UUID, sha: str) -> dict[int, str]:
        """The pages of the item's content `sha` extracted so far (page number → text)."""
        ...

    def save_document_pages(self, item_id: uuid.UUID, sha: str, pages: dict[int, str]) -> int:
        """Keep a batch of extracted pages (a checkpoint); pages of older content go."""
        ...

    def drop_document_pages(self, item_ids: list[uuid.UUID]) -> int:
        """Forget the extracted pages of items that are done."""
        ...

    def save_outlines(self, outlines: list[dict[str, Any]]) -> int:
        """Keep items' outlines: sections, and the section each chunk starts in."""
        ...

    def chunk_locations(
        self, chunk_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[int | None, tuple[str, ...]]]:
        """Each chunk's page and heading path, for those whose item has an outline."""
        ...

    def search(self, embedding: array[float], k: int, client_id: uuid.UUID | None) -> list[SearchHit]:
        """The `k` chunks nearest to `embedding` (cosine), optionally for one client."""
        ...

    def search_hybrid(
        self, query: str, embedding: array[float] | None, k: int, client_id: uuid.UUID | None
    ) -> list[SearchHit]:
        """The `k` best chunks by reciprocal rank fusion of full-text search for `query` and
        vector search for `embedding` (None: text alone), optionally for one client."""
        ...
