"""What becomes of each claimed item, written down: done, failed (an attempt counted), deferred
(the provider's fault), released (the clock's), and the fleet's back-off opened or lifted.

Split from `pipeline` (which runs a claim from gate to store) because these are the records a
claim leaves: every write here is the store's answer to one judgement from `troubles`, plus the
log line and the progress tick that go with it. `Processor` inherits them.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.errors import NexusError
from shared.process.budgets import SWEEP_RESERVE_S, calls_deadline
from shared.process.limits import FleetRateLimiter
from shared.process.report import ProcessingReport
from shared.process.stages import PreparedItem
from shared.process.summaries import fold_client_summary
from shared.process.troubles import Trouble, fleet_failures, is_quota, kind_of
from shared.providers.deadlines import call_scope
from shared.providers.embeddings import Embedder
from shared.providers.limits import rate_limited
from shared.providers.prices import PriceTable
from shared.providers.summaries import Summarizer, SummaryError
from shared.store import ClaimedItem, CompletedItem, Store

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger

__all__ = ["ItemOutcomes"]


class ItemOutcomes:
    """Recording each item's outcome and the provider's (mixed into `Processor`, which sets these)."""

    store: Store
    embedder: Embedder
    summarizer: Summarizer
    worker: str
    max_attempts: int
    retry_base_s: float
    probe_s: float
    provider: str | None
    logger: Logger
    progress: Callable[[int], None] | None
    prices: PriceTable
    limiter: FleetRateLimiter | None

    def _settle_troubles(
        self,
        prepared: list[PreparedItem],
        troubles: dict[uuid.UUID, Trouble],
        vectors: dict[str, Any],
        report: ProcessingReport,
    ) -> None:
        """Record each trouble on its item: its own (attempt counted), the provider's (deferred,
        no attempt), or the clock's (released, no attempt). Vectors of items given back are kept
        first, so whoever claims them next does not pay for them again."""
        by_kind: dict[str, list[uuid.UUID]] = {"item": [], "provider": [], "time": []}
        for item_id, trouble in troubles.items():
            by_kind[trouble.kind].append(item_id)
        given_back = set(by_kind["provider"]) | set(by_kind["time"])
        kept = (
            self._keep_vectors([p for p in prepared if p.item.id in given_back], vectors) if given_back else 0
        )
        items = {p.item.id: p.item for p in prepared}
        for item_id in by_kind["item"]:
            self._fail(items.get(item_id) or item_id, troubles[item_id].error, report)
        if by_kind["provider"]:
            error = next(troubles[i].error for i in by_kind["provider"])
            report.deferred += self.store.defer_items(
                by_kind["provider"], self.worker, str(error), self.retry_base_s
            )
            report.deferred_ids.update(by_kind["provider"])
            self.logger.warning(
                "claimed items given back: the provider failed",
                extra={"items": len(by_kind["provider"]), "error": str(error), "vectors_kept": kept},
            )
        if by_kind["time"]:
            report.released += self.store.release_items(by_kind["time"], self.worker)
            report.released_ids.update(by_kind["time"])
            self.logger.warning(
                "claimed items given back: no time left to finish them",
                extra={"items": len(by_kind["time"]), "vectors_kept": kept},
            )

    def _keep_vectors(self, prepared: list[PreparedItem], vectors: dict[str, Any]) -> int:
        """Keep the vectors of items given back (the store's embedding cache); how many."""
        kept = {h: vectors[h] for p in prepared for h in p.hashes if h in vectors}
        try:
            self.store.save_embeddings(kept, self.embedder.model, self.embedder.dimensions)
        except NexusError as exc:  # costs a second embedding pass later, loses nothing
            self.logger.warning("embeddings of items given back not kept", extra={"error": str(exc)})
            return 0
        return len(kept)

    def _provider_outcome(
        self,
        troubles: dict[uuid.UUID, Trouble],
        probe: bool,
        answered: dict[str, bool],
        report: ProcessingReport,
    ) -> None:
        """Open (or extend) the fleet's back-off after a provider failure of an API that answered
        nothing in this claim (or no quota); lift it after a probe that met none and was answered
        (an item whose vectors and summary were all kept from before called nobody)."""
        if self.provider is None:
            return
        errors = fleet_failures(troubles, answered)
        if errors:
            quota = any(is_quota(e) for e in errors)
            error = next((e for e in errors if is_quota(e)), errors[0])
            retry_after = max((getattr(e, "retry_after_s", None) or 0.0 for e in errors), default=0.0)
            state = self.store.record_provider_failure(
                self.provider, str(error), quota, retry_after or None, self.probe_s
            )
            report.backed_off = state
            self.logger.warning(
                "provider backed off for the whole fleet",
                extra={"provider": self.provider, "error": str(error), **state},
            )
        elif (
            probe
            and not any(t.kind == "provider" for t in troubles.values())
            and any(answered.values())
            and self.store.record_provider_success(self.provider)
        ):
            self.logger.info(
                "provider answered the probe: back-off lifted", extra={"provider": self.provider}
            )

    def _record_completion(self, c: CompletedItem, stored: set[uuid.UUID], report: ProcessingReport) -> None:
        if c.item.id in stored:
            report.done += 1
            report.done_ids.add(c.item.id)
            report.chunks += len(c.chunks)
            outcome = "done"
        else:
            report.lost += 1
            outcome = "lease lost or content changed; left to its new owner"
        self.logger.info(
            "knowledge item processed",
            extra={
                "knowledge_item_id": str(c.item.id),
                "client_id": str(c.item.client_id),
                "attempt": c.item.attempts,
                "chunks": len(c.chunks),
                "tokens": c.token_count,
                "outcome": outcome,
            },
        )
        if self.progress is not None:
            self.progress(1)

    def _fail(self, item: ClaimedItem | uuid.UUID, error: NexusError, report: ProcessingReport) -> None:
        """Record an attempt the item's own input failed (a refusal uses up its attempts)."""
        item_id = item if isinstance(item, uuid.UUID) else item.id
        permanent = not getattr(error, "retryable", True)
        status = self.store.fail_item(
            item_id, self.worker, str(error), self.max_attempts, self.retry_base_s, permanent
        )
        report.failed += 1
        report.failed_ids.add(item_id)
        self.logger.warning(
            "knowledge item failed",
            extra={
                "knowledge_item_id": str(item_id),
                **(
                    {}
                    if isinstance(item, uuid.UUID)
                    else {"client_id": str(item.client_id), "attempt": item.attempts}
                ),
                "error": str(error),
                "status": status,
            },
        )
        if self.progress is not None:
            self.progress(1)

    def _fold_clients(
        self, client_ids: set[uuid.UUID], remaining_s: Callable[[], float] | None = None
    ) -> None:
        """Fold each client's new item summaries; with `remaining_s`, no fold round starts with
        less than SWEEP_RESERVE_S left (the backlog stays for the next run). A provider failure
        backs the fleet off and stops the folds."""
        end = math.inf if remaining_s is None else time.monotonic() + remaining_s()
        for client_id in sorted(client_ids):
            if remaining_s is not None and remaining_s() < SWEEP_RESERVE_S:
                break
            try:
                with call_scope(calls_deadline(end)), rate_limited(self.limiter):
                    fold_client_summary(
                        self.store, self.summarizer, client_id, remaining_s=remaining_s, prices=self.prices
                    )
            except SummaryError as exc:  # the backlog stays; the next run for this client folds it
                self.logger.warning(
                    "client summary not updated", extra={"client_id": str(client_id), "error": str(exc)}
                )
                if kind_of(exc) == "provider":
                    self._provider_outcome(
                        {client_id: Trouble(exc, "provider")},
                        False,
                        {"embeddings": False, "chat": False},
                        ProcessingReport(),
                    )
                    break
