"""Summaries as the store keeps them: the memo of chat answers already paid for, and the fold of
new item summaries into each client's running summary.

Both are the pipeline's dealings with the store about summaries, apart from the claim's stages:
the memo makes an unchanged item (or one given back half-way) cost no second call, and the fold
is run after items are stored, by every trigger and by the sweep for what a crash left behind.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from shared.errors import NexusError
from shared.logs import get_logger
from shared.process.budgets import SWEEP_RESERVE_S
from shared.process.usage import usage_entries
from shared.providers.prices import PriceTable
from shared.providers.summaries import Summarizer
from shared.providers.usage import metered
from shared.store import Store, UsageEntry

__all__ = ["MAX_FOLD_ROUNDS", "StoredSummaryMemo", "fold_client_summary"]

MAX_FOLD_ROUNDS = 40  # x the summariser's fold_batch items a round: a large batch folds in one run


class StoredSummaryMemo:
    """Summaries paid for, by input key (`shared.providers.summaries.summary_key`): read from the
    store once per claim (the first round of each item; later rounds on demand), new ones written
    back together by `flush`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, str] = {}
        self._looked_up: set[str] = set()
        self._new: dict[str, str] = {}
        self._lock = threading.Lock()

    def prefetch(self, keys: list[str]) -> None:
        """Read these keys' summaries from the store, those not read yet, in one query."""
        wanted = [k for k in dict.fromkeys(keys) if k not in self._looked_up]
        if wanted:
            found = self.store.find_summaries(wanted)
            with self._lock:
                self._known.update(found)
                self._looked_up.update(wanted)

    def get(self, key: str) -> str | None:
        if key not in self._looked_up:
            self.prefetch([key])
        return self._known.get(key)

    def put(self, key: str, summary: str) -> None:
        with self._lock:
            self._known[key] = summary
            self._new[key] = summary

    def flush(self) -> int:
        """Keep the new summaries (a failure costs those calls again later, loses nothing);
        returns how many calls were answered since the last flush."""
        with self._lock:
            new, self._new = self._new, {}
        try:
            self.store.save_summaries(new)
        except NexusError as exc:
            get_logger().warning("summaries not kept", extra={"error": str(exc)})
        return len(new)


def fold_client_summary(
    store: Store,
    summarizer: Summarizer,
    client_id: uuid.UUID,
    attempts: int = 3,
    remaining_s: Callable[[], float] | None = None,
    prices: PriceTable | None = None,
) -> bool:
    """Fold the client's not-yet-folded item summaries into its summary, `fold_batch` at a time until none
    are left (or, with `remaining_s`, until less than SWEEP_RESERVE_S is left: each round is saved on
    its own, so stopping loses nothing). Optimistic: a round that loses a race is redone from the newer
    summary (at most `attempts` losses). What each round cost is recorded with its summary (or alone,
    for a round that lost). Returns whether anything was saved."""
    prices = prices or PriceTable()
    saved = False
    losses = 0
    for _ in range(MAX_FOLD_ROUNDS):
        if remaining_s is not None and remaining_s() < SWEEP_RESERVE_S:
            break
        backlog = store.client_summary_backlog(client_id, getattr(summarizer, "fold_batch", 50))
        items = backlog.get("items") or []
        if not items:
            break
        with metered() as meter:
            summary = summarizer.fold_client(backlog.get("summary") or "", [i["summary"] for i in items])
        paid = usage_entries(meter, prices, "fold", client_id)
        ids = [uuid.UUID(str(i["id"])) for i in items]
        processed_at = (
            [str(i["processed_at"]) for i in items] if all(i.get("processed_at") for i in items) else None
        )
        if store.save_client_summary(
            client_id, int(backlog.get("version") or 0), summary, ids, summarizer.model, processed_at, paid
        ):
            saved = True
            continue
        _record_lost_round(store, paid)
        losses += 1
        if losses >= attempts:
            break
    return saved


def _record_lost_round(store: Store, paid: list[UsageEntry]) -> None:
    """Record what a fold round that lost its race cost (a failure to record is logged)."""
    try:
        store.record_usage(paid)
    except NexusError as exc:
        get_logger().warning(
            "usage of a fold round that lost its race was not recorded", extra={"error": str(exc)}
        )
