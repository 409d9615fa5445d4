"""Search: embed the query for the active embedding generation (the configured provider, the
generation's model and dimensions), then `match_knowledge_chunks` (HNSW, cosine), which searches
that generation."""

from __future__ import annotations

import uuid
from typing import Any

from shared.store import SearchHit, Store

MAX_K = 200


def search(
    store: Store, settings: Any, query: str, k: int = 5, client_id: uuid.UUID | None = None
) -> list[SearchHit]:
    """The `k` chunks most similar to `query`, best first; only `client_id`'s when given."""
    from shared.providers.embeddings import embedder_for, embedder_from_settings
    from shared.store.generations import generations_from_facts

    if not query.strip():
        raise ValueError("The query is empty.")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"-k must be between 1 and {MAX_K}.")
    embedder = embedder_from_settings(settings)
    active = next((g for g in generations_from_facts(store.schema_facts()) if g.state == "active"), None)
    if active is not None:  # the query is embedded like the vectors it is compared with
        embedder = embedder_for(embedder, active.model, active.dimensions)
    embedding = embedder.embed([query])[0]
    return store.search(embedding, k, client_id)
