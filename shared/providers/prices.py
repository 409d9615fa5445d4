"""What embedding costs: OpenAI's list prices per million input tokens (standard tier, as
published for these models in 2026), for estimates such as `nexus embeddings plan`. A model not
listed has no estimate (None), never a guessed one."""

from __future__ import annotations

__all__ = [
    "CHAT_USD_PER_MILLION_TOKENS",
    "EMBEDDING_USD_PER_MILLION_TOKENS",
    "chat_prices_per_million",
    "embedding_price_per_million",
]

EMBEDDING_USD_PER_MILLION_TOKENS = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
    "local-hash-v1": 0.0,  # the offline embedder
}


def embedding_price_per_million(model: str) -> float | None:
    """USD per million input tokens for `model`, or None when it is not in the table."""
    return EMBEDDING_USD_PER_MILLION_TOKENS.get(model)


# (input, output) USD per million tokens
CHAT_USD_PER_MILLION_TOKENS = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


def chat_prices_per_million(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for a chat `model`, or None when not in the table."""
    return CHAT_USD_PER_MILLION_TOKENS.get(model)
