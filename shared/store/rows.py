"""The typed rows the store hands out and takes in: plain frozen dataclasses, no database types.

`from_row` reads a row the way either backend returns it (psycopg's dict rows with uuid objects,
or PostgREST's JSON with uuids as strings).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from array import array
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ChunkRecord",
    "ClaimedItem",
    "CompletedItem",
    "Generation",
    "GenerationChunk",
    "IngestOutcome",
    "SearchHit",
    "UsageEntry",
]


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
class Generation:
    """An embedding generation (`embedding_generations`): one (model, dimensions) pair, where its
    vectors live (`column`: knowledge_chunks.embedding; `table`: chunk_vectors), its state, and
    whether some chunk may still lack its vector (`unfilled`)."""

    id: int
    model: str
    dimensions: int
    state: str  # active | building | ready | retired
    storage: str  # column | table
    unfilled: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Generation:
        return cls(
            id=int(row["id"]),
            model=str(row["model"]),
            dimensions=int(row["dimensions"]),
            state=str(row["state"]),
            storage=str(row["storage"]),
            unfilled=bool(row.get("unfilled", False)),
        )

    @property
    def label(self) -> str:
        return f"{self.model} at {self.dimensions} dimensions"


@dataclass(frozen=True)
class GenerationChunk:
    """A stored chunk leased for embedding into a generation that has no vector for it yet."""

    knowledge_item_id: uuid.UUID
    chunk_index: int
    content: str
    content_sha256: str
    token_count: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> GenerationChunk:
        return cls(
            knowledge_item_id=uuid.UUID(str(row["knowledge_item_id"])),
            chunk_index=int(row["chunk_index"]),
            content=row["content"],
            content_sha256=row["content_sha256"],
            token_count=int(row["token_count"] or 0),
        )


@dataclass(frozen=True)
class UsageEntry:
    """One line of the usage ledger: what API answers of one kind and model cost for a piece of
    work (`purpose`: item, fold, generation or search), as the API reported it. `usd` is None
    when the model has no price."""

    client_id: uuid.UUID | None
    knowledge_item_id: uuid.UUID | None
    model: str
    kind: str  # embedding | chat
    purpose: str
    requests: int
    prompt_tokens: int
    completion_tokens: int = 0
    usd: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": None if self.client_id is None else str(self.client_id),
            "knowledge_item_id": None if self.knowledge_item_id is None else str(self.knowledge_item_id),
            "model": self.model,
            "kind": self.kind,
            "purpose": self.purpose,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usd": self.usd,
        }


@dataclass(frozen=True)
class CompletedItem:
    """A processed item ready to store: its chunks replace the old ones in one transaction.
    `generation`: the active generation the chunks' vectors are for; when it keeps its vectors in
    `chunk_vectors` (storage `table`), the chunk rows get no `embedding` and the vectors go there,
    in the same transaction (None: the column, as before generations)."""

    item: ClaimedItem
    chunks: list[ChunkRecord]
    summary: str
    model: str
    dimensions: int
    elapsed_ms: int
    generation: Generation | None = None
    usage: tuple[UsageEntry, ...] = ()  # what the item's work cost, recorded with it

    @property
    def in_column(self) -> bool:
        """Whether the vectors go into `knowledge_chunks.embedding`."""
        return self.generation is None or self.generation.storage == "column"

    @property
    def token_count(self) -> int:
        return sum(c.token_count for c in self.chunks)


def _similarity(value: Any) -> float | None:
    """A hit's similarity; None when there is none (a text search) or it is undefined (a query
    vector of all zeros, from a query with no word the local embedder knows, gives NaN)."""
    if value is None:
        return None
    similarity = float(value)
    return None if math.isnan(similarity) else similarity


@dataclass(frozen=True)
class SearchHit:
    id: uuid.UUID
    knowledge_item_id: uuid.UUID
    client_id: uuid.UUID
    chunk_index: int
    content: str
    source: str
    similarity: float | None  # the vector similarity (None: a search by text alone)
    page: int | None = None  # where the chunk starts in its document, when the format has pages
    headings: tuple[str, ...] = ()  # the heading path above the chunk, outermost first

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SearchHit:
        return cls(
            id=uuid.UUID(str(row["id"])),
            knowledge_item_id=uuid.UUID(str(row["knowledge_item_id"])),
            client_id=uuid.UUID(str(row["client_id"])),
            chunk_index=int(row["chunk_index"]),
            content=row["content"],
            source=row["source"],
            similarity=_similarity(row["similarity"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "knowledge_item_id": str(self.knowledge_item_id),
            "client_id": str(self.client_id),
            "chunk_index": self.chunk_index,
            "content": self.content,
            "source": self.source,
            "similarity": self.similarity,
            "page": self.page,
            "headings": list(self.headings),
        }
