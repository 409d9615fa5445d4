"""What embedding costs: OpenAI's list prices per million input tokens (standard tier, as
published for these models in 2026), for estimates such as `nexus embeddings plan`. A model not
listed has no estimate (None), never a guessed one."""

from __future__ import annotations

__all__ = ["EMBEDDING_USD_PER_MILLION_TOKENS", "embedding_price_per_million"]

EMBEDDING_USD_PER_MILLION_TOKENS = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
    "local-hash-v1": 0.0,  # the offline embedder
}


def embedding_price_per_million(model: str) -> float | None:
    """USD per million input tokens for `model`, or None when it is not in the table."""
    return EMBEDDING_USD_PER_MILLION_TOKENS.get(model)
