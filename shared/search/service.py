"""Search: embed the query with the configured embedder, then `match_knowledge_chunks` (HNSW, cosine)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.store import SearchHit, Store

MAX_K = 200


def search(
    store: Store, settings: Any, query: str, k: int = 5, client_id: uuid.UUID | None = None
) -> list[SearchHit]:
    """The `k` chunks most similar to `query`, best first; only `client_id`'s when given."""
    from shared.providers.embeddings import embedder_from_settings

    if not query.strip():
        raise ValueError("The query is empty.")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"-k must be between 1 and {MAX_K}.")
    embedding = embedder_from_settings(settings).embed([query])[0]
    return store.search(embedding, k, client_id)
