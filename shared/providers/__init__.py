"""Providers: embeddings and summaries, from OpenAI (or any compatible endpoint) or offline.

`embeddings` (`Embedder`: texts → vectors, packed into as few requests as the API allows) and
`summaries` (`Summarizer`: a summary per item, a running one per client) each have an OpenAI and
a local implementation, chosen once from settings; `openai_http` is their one retried HTTP call,
`deadlines` the invocation's deadline as the calls see it (`call_scope`, and `submit` to carry it
into worker threads), `seed` the seed's `embed_text` and `generate_summary`."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "Embedder": "embeddings",
    "EmbeddingError": "embeddings",
    "LocalEmbedder": "embeddings",
    "OpenAIEmbedder": "embeddings",
    "embed_text": "seed",
    "embedder_from_settings": "embeddings",
    "embedder_for": "embeddings",
    "embedding_price_per_million": "prices",
    "LocalSummarizer": "summaries",
    "OpenAISummarizer": "summaries",
    "Summarizer": "summaries",
    "SummaryError": "summaries",
    "generate_summary": "seed",
    "summarizer_from_settings": "summaries",
    "call_scope": "deadlines",
    "submit": "deadlines",
}
__all__ = [
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "LocalSummarizer",
    "OpenAIEmbedder",
    "OpenAISummarizer",
    "Summarizer",
    "SummaryError",
    "call_scope",
    "embed_text",
    "embedder_for",
    "embedder_from_settings",
    "embedding_price_per_million",
    "generate_summary",
    "submit",
    "summarizer_from_settings",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.providers.deadlines import call_scope, submit
    from shared.providers.embeddings import (
        Embedder,
        EmbeddingError,
        LocalEmbedder,
        OpenAIEmbedder,
        embedder_for,
        embedder_from_settings,
    )
    from shared.providers.prices import embedding_price_per_million
    from shared.providers.seed import embed_text, generate_summary
    from shared.providers.summaries import (
        LocalSummarizer,
        OpenAISummarizer,
        Summarizer,
        SummaryError,
        summarizer_from_settings,
    )
