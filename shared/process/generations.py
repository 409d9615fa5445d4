"""Filling embedding generations with the vectors their chunks lack.

The database is the truth (`embedding_generations`; which one settings may name is
`shared.store.generations.active_generation`): processing writes the active generation's vectors
with the chunks, then fills the other generations being built (`fill`, for the items it just
stored, then for any chunk, after live work, in sweeps).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shared.process.budgets import lease_s
from shared.process.usage import ClaimUsage
from shared.providers.embeddings import (
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    Embedder,
    EmbeddingError,
    embedder_for,
)
from shared.providers.prices import PriceTable
from shared.providers.usage import metered
from shared.store import Store
from shared.store.rows import Generation, GenerationChunk, UsageEntry

__all__ = [
    "FILL_BATCH_CHUNKS",
    "FILL_RESERVE_S",
    "FillReport",
    "GenerationFill",
    "fill_batch",
    "fill_requests",
]

FILL_BATCH_CHUNKS = 1024  # chunks per store call; a claim leases up to twice as many
FILL_RESERVE_S = 5.0  # a fill claims no more when less than this is left of the invocation


def fill_batch(concurrency: int) -> int:
    """Chunks one claim of a fill leases: about two full requests' worth, sent at once."""
    return FILL_BATCH_CHUNKS * min(max(concurrency, 1), 2)


def fill_requests(inputs: int, tokens: int, concurrency: int = 4) -> int:
    """About how many embedding requests a fill of `inputs` texts of `tokens` in all sends: each
    claim's inputs packed within the API's limits (`pack_requests`)."""
    if inputs <= 0:
        return 0
    claims = math.ceil(inputs / fill_batch(concurrency))
    per_claim = math.ceil(tokens / claims)
    inputs_per_claim = math.ceil(inputs / claims)
    per_request = max(
        math.ceil(per_claim / MAX_TOKENS_PER_REQUEST), math.ceil(inputs_per_claim / MAX_INPUTS_PER_REQUEST)
    )
    return claims * per_request


@dataclass
class FillReport:
    chunks: int = 0  # vectors stored
    embedded: int = 0  # inputs sent to the provider
    tokens: int = 0


class GenerationFill:
    """Fills generations with the vectors their chunks lack: leases chunks, reuses any vector
    stored for the same text, model and dimensions, embeds the rest once per distinct text, and
    stores them (dropping the leases). One batch is stored while the next is embedded. A provider
    failure stores what was embedded, gives the other leases back, and is raised."""

    def __init__(
        self, store: Store, embedder: Embedder, worker: str, prices: PriceTable | None = None
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.worker = worker
        self.prices = prices or PriceTable()

    def fill(
        self,
        generation: Generation,
        remaining_s: Callable[[], float],
        item_ids: list[uuid.UUID] | None = None,
        report: FillReport | None = None,
    ) -> FillReport:
        """Fill until nothing is missing (of `item_ids` when given) or FILL_RESERVE_S is left."""
        report = report or FillReport()
        embedder = embedder_for(self.embedder, generation.model, generation.dimensions)
        batch = fill_batch(embedder.concurrency)
        with ThreadPoolExecutor(max_workers=1) as storer:
            storing: Future[int] | None = None
            try:
                while remaining_s() > FILL_RESERVE_S:
                    lease = lease_s(remaining_s())
                    chunks = self.store.claim_generation_chunks(
                        generation.id, self.worker, batch, lease, item_ids
                    )
                    if not chunks:
                        if storing is None:
                            break
                        report.chunks += storing.result()
                        storing = None
                        continue  # look once more with nothing in flight: that look marks it filled
                    found = self._reused(generation, chunks)
                    report.chunks += storing.result() if storing is not None else 0
                    storing = None
                    try:
                        vectors, paid = self._embedded(embedder, chunks, found, report)
                    except EmbeddingError:
                        self.store.release_generation_chunks(generation.id, self.worker)
                        raise
                    storing = storer.submit(self._store, generation, chunks, vectors, paid)
                    if item_ids is not None and len(chunks) < batch:
                        break  # (a full fill claims until the answer is empty: that look marks it filled)
            finally:
                if storing is not None:
                    report.chunks += storing.result()
        return report

    def _reused(self, generation: Generation, chunks: list[GenerationChunk]) -> dict[str, Any]:
        """Vectors already stored for these chunks' texts (this model and dimensions)."""
        hashes = list(dict.fromkeys(c.content_sha256 for c in chunks))
        return self.store.find_embeddings(hashes, generation.model, generation.dimensions)

    def _embedded(
        self, embedder: Embedder, chunks: list[GenerationChunk], found: dict[str, Any], report: FillReport
    ) -> tuple[list[Any], list[UsageEntry]]:
        """A vector per chunk (the reused ones, the others embedded once per distinct text), and
        what the embedding cost, by item: a text is charged to the first chunk holding it."""
        texts = {c.content_sha256: c for c in chunks}
        missing = [h for h in texts if h not in found]
        if not missing:
            return [found[c.content_sha256] for c in chunks], []
        counts = [texts[h].token_count for h in missing]
        with metered() as meter:
            embedded = embedder.embed([texts[h].content for h in missing], counts)
        found.update(zip(missing, embedded, strict=True))
        report.embedded += len(missing)
        report.tokens += sum(counts)
        usage = ClaimUsage(self.prices, "generation")
        usage.embedded(missing, counts, meter)
        by_item: dict[uuid.UUID, list[str]] = {}
        for chunk in chunks:
            by_item.setdefault(chunk.knowledge_item_id, []).append(chunk.content_sha256)
        lines = usage.by_item((item_id, None, hashes) for item_id, hashes in by_item.items())
        paid = [line for item_lines in lines.values() for line in item_lines]
        return [found[c.content_sha256] for c in chunks], paid

    def _store(
        self,
        generation: Generation,
        chunks: list[GenerationChunk],
        vectors: list[Any],
        paid: list[UsageEntry],
    ) -> int:
        """Store in slices of FILL_BATCH_CHUNKS (each call's vectors travel as text); what the
        batch cost is recorded with the first."""
        stored = 0
        for start in range(0, len(chunks), FILL_BATCH_CHUNKS):
            end = start + FILL_BATCH_CHUNKS
            stored += self.store.store_generation_vectors(
                generation.id, self.worker, chunks[start:end], vectors[start:end], paid if start == 0 else ()
            )
        return stored
