"""Search: hybrid (full-text and vector, fused by reciprocal rank: `match_knowledge_chunks_hybrid`),
vector alone (`match_knowledge_chunks`: HNSW, cosine) or text alone. The query is embedded for the
active embedding generation (the configured provider, the generation's model and dimensions);
text alone calls no API. What embedding the query cost goes to the usage ledger (purpose
`search`, the client searched, if one)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Literal

from shared.store import SearchHit, Store

MAX_K = 200
SEARCH_MODES = ("hybrid", "vector", "text")
SearchMode = Literal["hybrid", "vector", "text"]


def search(
    store: Store,
    settings: Any,
    query: str,
    k: int = 5,
    client_id: uuid.UUID | None = None,
    mode: SearchMode = "hybrid",
) -> list[SearchHit]:
    """The `k` best chunks for `query`, best first; only `client_id`'s when given."""
    if not query.strip():
        raise ValueError("The query is empty.")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"-k must be between 1 and {MAX_K}.")
    if mode not in SEARCH_MODES:
        raise ValueError(f"The search mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}.")
    if mode == "text":
        return located(store, store.search_hybrid(query, None, k, client_id))
    embedding = query_embedding(store, settings, query, client_id)
    if mode == "vector":
        return located(store, store.search(embedding, k, client_id))
    return located(store, store.search_hybrid(query, embedding, k, client_id))


def located(store: Store, hits: list[SearchHit]) -> list[SearchHit]:
    """The hits with the page and heading path each chunk starts under, where known."""
    places = store.chunk_locations([hit.id for hit in hits]) if hits else {}
    return [
        replace(hit, page=places[hit.id][0], headings=places[hit.id][1]) if hit.id in places else hit
        for hit in hits
    ]


def query_embedding(store: Store, settings: Any, query: str, client_id: uuid.UUID | None) -> Any:
    """`query` embedded like the vectors it is compared with (the active generation's model and
    dimensions); its usage recorded (a failure to record is logged, never raised)."""
    from shared.errors import NexusError
    from shared.providers.embeddings import embedder_for, embedder_from_settings
    from shared.providers.prices import price_table
    from shared.providers.usage import metered
    from shared.store.generations import generations_from_facts
    from shared.store.rows import UsageEntry

    embedder = embedder_from_settings(settings)
    active = next((g for g in generations_from_facts(store.schema_facts()) if g.state == "active"), None)
    if active is not None:
        embedder = embedder_for(embedder, active.model, active.dimensions)
    with metered() as meter:
        embedding = embedder.embed([query], [_token_bound(query)])[0]
    prices = price_table(settings)
    lines = [
        UsageEntry(
            client_id,
            None,
            u.model,
            u.kind,
            "search",
            u.requests,
            u.prompt_tokens,
            0,
            prices.usd(u.kind, u.model, u.tokens),
        )
        for u in meter.totals()
    ]
    if lines:
        try:
            store.record_usage(lines)
        except NexusError as exc:
            from shared.logs import get_logger

            get_logger().warning("usage of a search query was not recorded", extra={"error": str(exc)})
    return embedding


def _token_bound(query: str) -> int:
    """At least the query's cl100k tokens without loading the tokenizer (a cold start's worth):
    a token is at least one byte of UTF-8. Counted exactly only past the per-input limit."""
    from shared.providers.embeddings import MAX_TOKENS_PER_INPUT

    size = len(query.encode("utf-8"))
    if size <= MAX_TOKENS_PER_INPUT:
        return size
    from shared.text.tokenizer import count_tokens

    return count_tokens(query)
