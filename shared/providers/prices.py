"""What the APIs cost: OpenAI's list prices per million tokens (standard tier, as published for
these models in 2026), for estimates (`nexus embeddings plan`, `nexus estimate`) and for the
usage ledger's USD (`PriceTable`, which `NEXUS_PRICES` extends or overrides). A model not listed
has no price (None), never a guessed one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHAT_USD_PER_MILLION_TOKENS",
    "EMBEDDING_USD_PER_MILLION_TOKENS",
    "PriceTable",
    "chat_prices_per_million",
    "embedding_price_per_million",
    "price_table",
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


@dataclass(frozen=True)
class PriceTable:
    """USD per million tokens by model: `overrides` (input, output) over the defaults above."""

    overrides: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def per_million(self, kind: str, model: str) -> tuple[float, float] | None:
        """(input, output) USD per million tokens of `model` used as `kind`, or None: no price."""
        if model in self.overrides:
            return self.overrides[model]
        if kind == "embedding":
            price = embedding_price_per_million(model)
            return None if price is None else (price, 0.0)
        return chat_prices_per_million(model)

    def usd(self, kind: str, model: str, prompt_tokens: int, completion_tokens: int = 0) -> float | None:
        """What these tokens cost, or None when `model` has no price."""
        price = self.per_million(kind, model)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


def price_table(settings: Any) -> PriceTable:
    """The price table of these settings (`NEXUS_PRICES` over the defaults)."""
    return PriceTable(dict(getattr(settings, "prices", None) or {}))
