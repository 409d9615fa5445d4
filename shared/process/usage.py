"""What a claim paid, by item: the ledger lines each item's outcome is stored with.

Embedding requests carry the inputs of several items, and an input shared by items (the same
chunk text) is embedded once: each request's reported tokens are split over its inputs by their
exact counts (`apportion`), and an input is paid for by the first item of the claim that holds
it. Its requests are split the same way, so an item is charged a request when it carried the
largest share of one; the parts add up to what the API reported. Summaries are metered per item.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence

from shared.providers.prices import PriceTable
from shared.providers.usage import UsageMeter, apportion
from shared.store.rows import UsageEntry

__all__ = ["ANSWER_TOKENS_PER_TOKEN", "ClaimUsage", "usage_entries", "usd_per_token"]

# A summary's answer, per token of the item summarised: about 160 tokens for items of a few
# thousand (the answer's size hardly grows with the item), so 0.1 errs high for most.
ANSWER_TOKENS_PER_TOKEN = 0.1


def usd_per_token(prices: PriceTable, embedding_model: str, chat_model: str | None) -> float | None:
    """What processing is estimated to cost per content token: embedding it once, and (with a
    remote summariser, `chat_model`) reading it and answering. None when no price is known."""
    embedding = prices.per_million("embedding", embedding_model)
    chat = prices.per_million("chat", chat_model) if chat_model else None
    if embedding is None and chat is None:
        return None
    total = embedding[0] if embedding else 0.0
    if chat is not None:
        total += chat[0] + chat[1] * ANSWER_TOKENS_PER_TOKEN
    return total / 1_000_000


def usage_entries(
    meter: UsageMeter,
    prices: PriceTable,
    purpose: str,
    client_id: uuid.UUID | None,
    item_id: uuid.UUID | None = None,
) -> list[UsageEntry]:
    """The ledger lines of what `meter` gathered, for one client (and item)."""
    return [
        UsageEntry(
            client_id,
            item_id,
            u.model,
            u.kind,
            purpose,
            u.requests,
            u.prompt_tokens,
            u.completion_tokens,
            prices.usd(u.kind, u.model, u.prompt_tokens, u.completion_tokens),
        )
        for u in meter.totals()
        if u.requests or u.tokens
    ]


class ClaimUsage:
    """The usage of one claim's embedding requests by input (chunk hash), and of each item's
    summaries. Thread-safe: requests finish on the feed's threads."""

    def __init__(self, prices: PriceTable, purpose: str = "item") -> None:
        self.prices = prices
        self.purpose = purpose  # the ledger's purpose: item, or generation for a fill
        self._lock = threading.Lock()
        # chunk hash -> (model, tokens, requests) of the request that embedded it
        self._inputs: dict[str, tuple[str, int, int]] = {}
        self._summaries: dict[uuid.UUID, UsageMeter] = {}

    def embedded(self, hashes: Sequence[str], counts: Sequence[int], meter: UsageMeter) -> None:
        """These inputs (with their exact token counts) were embedded by the requests `meter` saw."""
        for usage in meter.totals():
            if usage.kind != "embedding":
                continue
            tokens = apportion(usage.prompt_tokens, counts)
            requests = apportion(usage.requests, counts)
            with self._lock:
                for digest, paid, asked in zip(hashes, tokens, requests, strict=True):
                    self._inputs[digest] = (usage.model, paid, asked)

    def summarized(self, item_id: uuid.UUID, meter: UsageMeter) -> None:
        with self._lock:
            self._summaries[item_id] = meter

    def by_item(
        self, items: Iterable[tuple[uuid.UUID, uuid.UUID | None, Sequence[str]]]
    ) -> dict[uuid.UUID, list[UsageEntry]]:
        """Each item's ledger lines, from (item id, client id, chunk hashes) in claim order: an
        input embedded for several items is charged to the first. (A client id of None is the
        item's, filled in by the database.)"""
        charged: set[str] = set()
        lines: dict[uuid.UUID, list[UsageEntry]] = {}
        with self._lock:
            for item_id, client_id, hashes in items:
                meter = UsageMeter()
                summaries = self._summaries.get(item_id)
                if summaries is not None:
                    meter.merge(summaries)
                for digest in hashes:
                    paid = self._inputs.get(digest)
                    if paid is None or digest in charged:
                        continue
                    charged.add(digest)
                    meter.add("embedding", paid[0], paid[1], 0, paid[2])
                lines[item_id] = usage_entries(meter, self.prices, self.purpose, client_id, item_id)
        return lines
