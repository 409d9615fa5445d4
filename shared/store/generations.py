"""The store's calls for embedding generations (migration `…_embedding_generations.sql`): which
generations exist, what a new one would cost, starting, filling, cutting over, rolling back and
dropping them. Mixed into `SqlFunctionStore`, so both backends run them through their two
primitives. A refusal (a generation still building, none to roll back to) is `RefusedByDatabase`
with the database's own sentence.
"""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Sequence
from typing import Any

from shared.errors import ConfigError
from shared.store.primitives import FunctionCalls
from shared.store.rows import CompletedItem, Generation, GenerationChunk, UsageEntry
from shared.store.vectors import to_pgvector_text

__all__ = [
    "GenerationCalls",
    "active_generation",
    "completed_chunks",
    "generations_from_facts",
    "generations_to_fill",
    "store_vectors_arguments",
]


def generations_from_facts(facts: dict[str, Any]) -> list[Generation]:
    return [Generation.from_row(row) for row in facts.get("generations") or []]


def active_generation(
    generations: Sequence[Generation], model: str, dimensions: int
) -> tuple[Generation | None, str | None]:
    """(the active generation, or None on a database with none yet; a warning naming settings
    that name a kept generation other than the active one, or None). Raises ConfigError, naming
    the variables, when the settings name no generation of the database."""
    active = next((g for g in generations if g.state == "active"), None)
    if active is None or (active.model, active.dimensions) == (model, dimensions):
        return active, None
    named = next((g for g in generations if (g.model, g.dimensions) == (model, dimensions)), None)
    if named is None:
        raise ConfigError(
            f"NEXUS_EMBEDDING_MODEL / NEXUS_EMBEDDING_DIMENSIONS are {model} / {dimensions}, but the "
            f"database's active embedding generation is {active.label}: set them to "
            f"{active.model} / {active.dimensions}, or move the database with "
            f"nexus embeddings start --model {model} --dimensions {dimensions}."
        )
    return active, (
        f"NEXUS_EMBEDDING_MODEL / NEXUS_EMBEDDING_DIMENSIONS name generation {named.id} ({named.label}, "
        f"{named.state}); the active one is {active.label}, which processing and search use: "
        f"set them to {active.model} / {active.dimensions}."
    )


def generations_to_fill(generations: Sequence[Generation]) -> list[Generation]:
    """The generations a sweep fills, the active one first: every one not retired that may lack
    vectors."""
    wanted = [g for g in generations if g.state != "retired" and g.unfilled]
    return sorted(wanted, key=lambda g: g.state != "active")


def completed_chunks(completed: CompletedItem) -> tuple[list[GenerationChunk], list[array[float]]]:
    """A completed item's chunks and their vectors, as `store_generation_vectors` takes them."""
    chunks = [
        GenerationChunk(completed.item.id, c.chunk_index, c.content, c.content_sha256, c.token_count)
        for c in completed.chunks
    ]
    return chunks, [c.embedding for c in completed.chunks]


def store_vectors_arguments(
    generation_id: int,
    worker: str,
    chunks: list[GenerationChunk],
    vectors: list[array[float]],
    usage: Sequence[UsageEntry] = (),
) -> dict[str, Any]:
    """The arguments of `store_generation_vectors` (vectors in pgvector's text form, which
    PostgREST's JSON and psycopg both pass; with `usage`, the overload that records it)."""
    arguments: dict[str, Any] = {
        "generation": generation_id,
        "worker": worker,
        "item_ids": [c.knowledge_item_id for c in chunks],
        "chunk_indexes": [c.chunk_index for c in chunks],
        "hashes": [c.content_sha256 for c in chunks],
        "embeddings": [to_pgvector_text(v) for v in vectors],
    }
    if usage:
        arguments["usage"] = [entry.to_json() for entry in usage]
    return arguments


class GenerationCalls(FunctionCalls):
    """Generation calls over a backend's `_rows` and `_value` (see `shared.store.base`)."""

    def ensure_generation(self, model: str, dimensions: int) -> Generation:
        """The active generation; on a database with none yet, one made from these settings."""
        row = self._value("ensure_embedding_generation", {"model": model, "dimensions": dimensions})
        return Generation.from_row(row)

    def generations_status(self) -> list[dict[str, Any]]:
        """Every generation with `chunks_embedded`, `chunks_total` and `chunks_awaiting_index`."""
        return list(self._value("embedding_generations_status", {}, idempotent=True) or [])

    def plan_generation(self, model: str, dimensions: int) -> dict[str, Any]:
        """Chunks, distinct texts, and the inputs and tokens a generation of (model, dimensions)
        would embed after reusing every vector stored for them; changes nothing."""
        arguments = {"model": model, "dimensions": dimensions}
        return dict(self._value("plan_embedding_generation", arguments, idempotent=True) or {})

    def start_generation(self, model: str, dimensions: int) -> Generation:
        row = self._value("start_embedding_generation", {"model": model, "dimensions": dimensions})
        return Generation.from_row(row)

    def cutover_generation(self) -> dict[str, Any]:
        """{"active", "retired"}, or {"missing", "building"} when chunks still lack vectors."""
        return dict(self._value("cutover_embedding_generation", {}))

    def rollback_generation(self) -> dict[str, Any]:
        return dict(self._value("rollback_embedding_generation", {}))

    def drop_generation(self, generation_id: int) -> Generation:
        return Generation.from_row(self._value("drop_embedding_generation", {"generation": generation_id}))

    def claim_generation_chunks(
        self,
        generation_id: int,
        worker: str,
        max_chunks: int,
        lease_s: float,
        item_ids: list[uuid.UUID] | None = None,
    ) -> list[GenerationChunk]:
        """Lease up to `max_chunks` chunks (of `item_ids` when given) that have no vector for the
        generation yet. An empty answer to a full look marks the generation filled (and ready)."""
        arguments = {
            "generation": generation_id,
            "worker": worker,
            "max_chunks": max_chunks,
            "lease_seconds": lease_s,
            "only_items": item_ids,
        }
        return [GenerationChunk.from_row(row) for row in self._rows("claim_generation_chunks", arguments)]

    def store_generation_vectors(
        self,
        generation_id: int,
        worker: str,
        chunks: list[GenerationChunk],
        vectors: list[array[float]],
        usage: Sequence[UsageEntry] = (),
    ) -> int:
        """Store each chunk's vector for the generation (if the chunk still holds that text) and
        drop this worker's leases on them, recording `usage` (what they cost) in the same
        transaction; returns how many were stored."""
        if not chunks:
            return 0
        arguments = store_vectors_arguments(generation_id, worker, chunks, vectors, usage)
        return int(self._value("store_generation_vectors", arguments) or 0)

    def release_generation_chunks(self, generation_id: int, worker: str) -> int:
        """Give this worker's leases back and mark the generation as lacking vectors."""
        return int(
            self._value("release_generation_chunks", {"generation": generation_id, "worker": worker}) or 0
        )
