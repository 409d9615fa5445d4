"""Filling embedding generations with the vectors their chunks lack.

The database is the truth (`embedding_generations`; which one settings may name is
`shared.store.generations.active_generation`): processing writes the active generation's vectors
with the chunks, then fills the other generations being built (`fill`, for the items it just
stored, then for any chunk, after live work, in sweeps).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.providers.embeddings import Embedder, EmbeddingError, embedder_for
from shared.store import Store
from shared.store.rows import Generation, GenerationChunk

__all__ = ["FILL_BATCH_CHUNKS", "FILL_RESERVE_S", "FillReport", "GenerationFill"]

FILL_BATCH_CHUNKS = 1024  # chunks leased per claim of a fill (one or a few embedding requests)
FILL_RESERVE_S = 5.0  # a fill claims no more when less than this is left of the invocation
FILL_LEASE_MARGIN_S = 30.0


@dataclass
class FillReport:
    chunks: int = 0  # vectors stored
    embedded: int = 0  # inputs sent to the provider
    tokens: int = 0


class GenerationFill:
    """Fills generations with the vectors their chunks lack: leases chunks, reuses any vector
    stored for the same text, model and dimensions, embeds the rest once per distinct text, and
    stores them (dropping the leases). A provider failure gives the leases back and is raised."""

    def __init__(self, store: Store, embedder: Embedder, worker: str) -> None:
        self.store = store
        self.embedder = embedder
        self.worker = worker

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
        while remaining_s() > FILL_RESERVE_S:
            lease = min(remaining_s(), 3600.0) + FILL_LEASE_MARGIN_S
            chunks = self.store.claim_generation_chunks(
                generation.id, self.worker, FILL_BATCH_CHUNKS, lease, item_ids
            )
            if not chunks:
                break
            try:
                vectors = self._vectors(generation, embedder, chunks, report)
            except EmbeddingError:
                self.store.release_generation_chunks(generation.id, self.worker)
                raise
            report.chunks += self.store.store_generation_vectors(generation.id, self.worker, chunks, vectors)
            if item_ids is not None and len(chunks) < FILL_BATCH_CHUNKS:
                break  # (a full fill claims until the answer is empty: that look marks it filled)
        return report

    def _vectors(
        self, generation: Generation, embedder: Embedder, chunks: list[GenerationChunk], report: FillReport
    ) -> list[Any]:
        """A vector per chunk: stored ones reused, the others embedded once per distinct text."""
        texts = {c.content_sha256: c for c in chunks}
        found = self.store.find_embeddings(list(texts), generation.model, generation.dimensions)
        missing = [h for h in texts if h not in found]
        if missing:
            embedded = embedder.embed(
                [texts[h].content for h in missing], [texts[h].token_count for h in missing]
            )
            found.update(zip(missing, embedded, strict=True))
            report.embedded += len(missing)
            report.tokens += sum(texts[h].token_count for h in missing)
        return [found[c.content_sha256] for c in chunks]
