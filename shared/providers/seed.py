"""The seed's provider functions, kept with their names and calls for code written against the
original workers: `embed_text(text)` and `generate_summary(client_id, text)`, on the providers
the settings choose. New code takes an `Embedder` or a `Summarizer` as a parameter instead."""

from __future__ import annotations

from shared.config import get_settings
from shared.providers.embeddings import Embedder, embedder_from_settings
from shared.providers.summaries import Summarizer, summarizer_from_settings
from shared.text.chunking import chunk_text

__all__ = ["embed_text", "generate_summary"]


def embed_text(text: str, embedder: Embedder | None = None) -> list[float]:
    """The embedding of one text as a list of floats (kept from the seed)."""
    if embedder is None:
        embedder = embedder_from_settings(get_settings())
    return embedder.embed([text])[0].tolist()


def generate_summary(client_id: str, text: str, summarizer: Summarizer | None = None) -> str:
    """A summary of `text` (kept from the seed; `client_id` is accepted for compatibility)."""
    if summarizer is None:
        summarizer = summarizer_from_settings(get_settings())
    return summarizer.summarize_item(chunk_text(text))
