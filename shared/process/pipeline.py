"""Processing: claimed items → chunks → embeddings (reused where the text was seen before) →
summaries → stored atomically, then each affected client's summary folded.

Every trigger (webhook, queue message, schedule, CLI) ends here. Delivery is at-least-once:
claims are leased (`FOR UPDATE SKIP LOCKED`), completion checks the lease and the content hash,
and embeddings are looked up by chunk text hash first, so a repeat costs no second embedding pass.

This module is the orchestration: `Processor` gates on the fleet's back-off, claims, runs a claim
through its stages (`stages`), settles what became of each item (`outcomes`, judged by
`troubles`), and spends what time is left on the vector index. How much time each step gets is
`budgets`; what a run did is `report`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shared.errors import ConfigError, NexusError
from shared.logs import get_logger
from shared.process.budgets import (
    CHARS_PER_TOKEN,
    INDEX_AFTER_ITEM_S,
    INDEX_BUILD_MIN_ROWS,
    INDEX_BUILDS_PER_RUN,
    ITEM_CHUNK_MIN_S,
    SWEEP_RESERVE_S,
    calls_deadline,
    claim_size,
    countdown,
    index_batch_rows,
    index_build_rows,
    index_time_s,
    is_local,
    lease_s,
    probe_wait_s,
    waits_for_probe,
)
from shared.process.documents import DocumentReader
from shared.process.generations import GenerationFill
from shared.process.limits import FleetRateLimiter
from shared.process.outcomes import ItemOutcomes
from shared.process.report import ProcessingReport, new_worker_id
from shared.process.stages import ClaimStages, PreparedItem
from shared.process.troubles import is_quota, summary_troubles
from shared.process.usage import ClaimUsage, usd_per_token
from shared.providers.deadlines import call_scope
from shared.providers.embeddings import Embedder, EmbeddingError, embedder_for, embedder_from_settings
from shared.providers.limits import rate_limited
from shared.providers.prices import PriceTable, price_table
from shared.providers.summaries import Summarizer, summarizer_from_settings
from shared.store import ClaimedItem, Store, UsageEntry, store_from_settings
from shared.store.generations import active_generation, generations_from_facts, generations_to_fill
from shared.store.rows import Generation
from shared.text.chunking import Chunk, split_text

__all__ = ["PROBE_ATTEMPTS", "SWITCH_INTERVAL_S", "Processor", "processor_from_settings"]

# While a claim is processed, threads that mostly wait (HTTP reads, tokenizer calls, which give up
# the GIL) run beside threads running Python; getting the GIL back after each wait takes up to the
# interpreter's switch interval (5 ms by default), so processing shortens it.
SWITCH_INTERVAL_S = 0.0005
# A provider backed off (see `provider_gate` in the migrations) is probed with a claim of one item
# whose provider calls try at most PROBE_ATTEMPTS times each.
PROBE_ATTEMPTS = 2


class Processor(ClaimStages, ItemOutcomes):
    """Processes items with one store, embedder and summariser (collaborators are parameters)."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        summarizer: Summarizer,
        *,
        chunk_tokens: int = 350,
        chunk_overlap: int = 0,
        max_attempts: int = 5,
        retry_base_s: float = 30.0,
        batch_tokens: int = 600_000,
        summary_concurrency: int = 8,
        probe_s: float = 120.0,
        item_chunk_min_s: float = ITEM_CHUNK_MIN_S,
        chunker: Callable[..., list[Chunk]] = split_text,
        sleep: Callable[[float], None] = time.sleep,
        worker: str | None = None,
        progress: Callable[[int], None] | None = None,
        prices: PriceTable | None = None,
        rate_limits: Mapping[str, tuple[float, float, float]] | None = None,
        pdf_page_batch: int = 25,
        chunk_headings: bool = False,
    ) -> None:
        self.store = store
        self.chunk_headings = chunk_headings
        self.documents = DocumentReader(store, pdf_page_batch)
        self.prices = prices or PriceTable()
        self.embedder = embedder  # for the active generation once `check_settings` has read it
        self.settings_embedder = embedder
        self.summarizer = summarizer
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.batch_chars = batch_tokens * CHARS_PER_TOKEN
        self.summary_concurrency = summary_concurrency
        self.probe_s = probe_s
        self.item_chunk_min_s = item_chunk_min_s
        self.chunker = chunker
        self.sleep = sleep
        # The fleet's back-off is kept per API; offline providers (and stand-ins without a key) have none.
        self.provider = next(
            (key for key in (getattr(p, "provider_key", None) for p in (embedder, summarizer)) if key), None
        )
        # The fleet's rate limit (NEXUS_RATE_LIMITS), for the API's models it names.
        self.limiter = (
            FleetRateLimiter(store, self.provider, rate_limits) if rate_limits and self.provider else None
        )
        self.worker = worker or new_worker_id()
        self.progress = progress
        self.logger = get_logger()
        # Measured by the sweep: seconds a claim took per item and per character of content.
        self._seconds_per_item: float | None = None
        self._seconds_per_char: float | None = None
        # The database's embedding generations, as `check_settings` last read them.
        self.active: Generation | None = None
        self.generations: list[Generation] = []
        self._warned: str | None = None
        # What an item is estimated to cost per content token (for budgets), once settings are read.
        self.usd_per_token: float | None = None

    def for_worker(self, worker: str) -> Processor:
        """The same processor (same store, embedder, summariser) acting as another worker."""
        twin = copy.copy(self)
        twin.worker = worker
        return twin

    # -- entry points -------------------------------------------------------------------------

    def process_ids(
        self, item_ids: Iterable[uuid.UUID], remaining_s: Callable[[], float] | float
    ) -> ProcessingReport:
        """Claim and process these items (those already done, gone, or leased elsewhere are
        skipped), then spend up to INDEX_AFTER_ITEM_S moving stored chunks into the vector index.
        `remaining_s` is the invocation's time left (a number: that many seconds from now).
        While the fleet is backed off from the provider nothing is claimed (`backed_off` in the
        report; the sweep takes the items later), except one item when a probe is due."""
        remaining = countdown(remaining_s)
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return ProcessingReport()
        self.check_settings()
        gate = self._gate()
        if not gate["claim"]:
            return ProcessingReport(backed_off=gate)
        claimed = self.store.claim_items(
            self.worker,
            lease_s(remaining()),
            1 if gate["probe"] else len(ids),
            self.max_attempts,
            item_ids=ids,
            usd_per_token=self.usd_per_token,
        )
        report = self.process_claimed(claimed, remaining, probe=gate["probe"])
        if report.done:
            report.indexed_chunks += self.index_pending(remaining, budget_s=INDEX_AFTER_ITEM_S)
        return report

    def sweep(self, remaining_s: Callable[[], float], *, wait_for_probe: bool = False) -> ProcessingReport:
        """Claim and process batches until nothing is left, the time is nearly up, or the fleet
        is backed off from the provider. With `wait_for_probe` (the scheduled sweep), a back-off
        whose next probe is due while PROBE_WAIT_MIN_WORK_S would still be left is waited for,
        and this sweep probes: the fleet probes as often as the back-off says even when sweeps
        are scheduled further apart.

        Each claim's lease is the remaining time plus LEASE_MARGIN_S, so a crashed invocation's
        items become claimable again shortly after it must have ended.
        """
        self.check_settings()
        report = ProcessingReport()
        while remaining_s() > SWEEP_RESERVE_S:
            gate = self._gate()
            if not gate["claim"]:
                report.backed_off = gate
                wait_s = float(gate.get("probe_in_s") or 0.0)
                if wait_for_probe and waits_for_probe(wait_s, remaining_s()):
                    self.sleep(probe_wait_s(wait_s))
                    continue
                break
            report.backed_off = None
            max_items, max_chars = self.claim_size(remaining_s())
            if max_items < 1:
                break
            claimed = self.store.claim_items(
                self.worker,
                lease_s(remaining_s()),
                1 if gate["probe"] else max_items,
                self.max_attempts,
                max_chars=max_chars,
                probe=gate["probe"],
                usd_per_token=self.usd_per_token,
            )
            if not claimed:
                break
            started = time.monotonic()
            report.merge(self.process_claimed(claimed, remaining_s, probe=gate["probe"]))
            elapsed = time.monotonic() - started
            self._seconds_per_item = elapsed / len(claimed)
            self._seconds_per_char = elapsed / max(sum(len(item.content) for item in claimed), 1)
        if remaining_s() > SWEEP_RESERVE_S and report.backed_off is None:
            # Folds a crash or a failed fold left behind (items stored, client summary not updated).
            self._fold_clients(set(self.store.clients_with_summary_backlog()), remaining_s)
            self._fill_generations(remaining_s, report)
        self._roll_up_usage()
        report.indexed_chunks += self.index_pending(remaining_s)
        return report

    def check_settings(self) -> None:
        """Read the database's embedding generations and name settings that disagree with them
        in one sentence, before any provider is called (`generations.active_generation`); on a
        database with none yet, the settings' model and size become the first. From then on
        this processor embeds for the active generation. Every run starts with it: a read that
        is safe to repeat, so a connection the database dropped while the function sat idle is
        replaced here, before the claim."""
        generations = generations_from_facts(self.store.schema_facts())
        base = self.settings_embedder
        active, warning = active_generation(generations, base.model, base.dimensions)
        if active is None:
            active = self.store.ensure_generation(base.model, base.dimensions)
            generations = [active]
        if warning and warning != self._warned:
            self.logger.warning(warning)
        self._warned = warning
        self.active, self.generations = active, generations
        self.embedder = embedder_for(base, active.model, active.dimensions)
        chat_model = None if is_local(self.summarizer) else getattr(self.summarizer, "model", None)
        self.usd_per_token = usd_per_token(self.prices, active.model, chat_model)

    def _fill_generations(
        self,
        remaining_s: Callable[[], float] | None,
        report: ProcessingReport,
        item_ids: list[uuid.UUID] | None = None,
    ) -> None:
        """Store the vectors other generations lack: for `item_ids` (just stored; live items go
        first), every generation being built; without, every generation that may lack vectors,
        the active one first (a sweep, after live work). A provider failure stops it (the chunks
        go back to the sweeps) and counts toward the fleet's back-off like any other."""
        if item_ids is not None:
            targets = [g for g in self.generations if g.state in ("building", "ready")]
        else:
            targets = generations_to_fill(self.generations)
        if not targets:
            return
        left = countdown(remaining_s if remaining_s is not None else math.inf)
        fill = GenerationFill(self.store, self.settings_embedder, self.worker, self.prices)
        # live items' vectors go at live priority; a sweep's backfill leaves room to live work
        limiter = (
            self.limiter if item_ids is not None or self.limiter is None else self.limiter.for_backfill()
        )
        for generation in targets:
            try:
                with rate_limited(limiter):
                    done = fill.fill(generation, left, item_ids)
            except (EmbeddingError, ConfigError) as exc:
                self.logger.warning(
                    "embedding generation not filled",
                    extra={"generation": generation.id, "error": str(exc)},
                )
                if isinstance(exc, EmbeddingError) and exc.retryable and self.provider is not None:
                    retry_after = getattr(exc, "retry_after_s", None)
                    report.backed_off = self.store.record_provider_failure(
                        self.provider, str(exc), is_quota(exc), retry_after, self.probe_s
                    )
                break
            report.generation_chunks += done.chunks
            report.generation_embedded += done.embedded
            report.embedded_tokens += done.tokens

    def _gate(self) -> dict[str, Any]:
        """Whether this worker may claim now (and whether as the provider's probe)."""
        if self.provider is None:
            return {"state": "closed", "claim": True, "probe": False}
        gate = self.store.provider_gate(self.provider, self.worker, self.probe_s)
        if not gate.get("claim"):
            self.logger.info(
                "not claiming: the provider is backed off",
                extra={
                    "provider": self.provider,
                    "state": gate.get("state"),
                    "probe_at": gate.get("probe_at"),
                },
            )
        return gate

    def claim_size(self, remaining_s: float) -> tuple[int, int]:
        """(items, characters) a sweep may claim with `remaining_s` left (`budgets.claim_size`,
        from what this processor's earlier claims took). (0, 0): no time for another claim."""
        return claim_size(
            remaining_s,
            self.batch_chars,
            seconds_per_item=self._seconds_per_item,
            seconds_per_char=self._seconds_per_char,
            remote_summaries_at_once=0 if is_local(self.summarizer) else self.summary_concurrency,
        )

    def index_pending(self, remaining_s: Callable[[], float], budget_s: float | None = None) -> int:
        """Move stored chunks into the vector index until none are waiting, `budget_s` is spent,
        or INDEX_RESERVE_S of the invocation is left. Batches are sized from the measured time
        per row so the last one ends in time. Search is exact for chunks not yet moved, so this
        only keeps it fast; a failure is logged and left to the next run."""
        started = time.monotonic()
        indexed = self._build_index(index_time_s(remaining_s(), budget_s, 0.0))
        per_row_s: float | None = None
        while True:
            left = index_time_s(remaining_s(), budget_s, time.monotonic() - started)
            rows = index_batch_rows(left, per_row_s)
            if not rows:
                break
            batch_started = time.monotonic()
            try:
                moved = self.store.index_chunks(rows)
            except NexusError as exc:
                self.logger.warning("chunks not moved into the vector index", extra={"error": str(exc)})
                break
            indexed += moved
            if moved < rows:
                break
            per_row_s = max((time.monotonic() - batch_started) / moved, 1e-6)
        return indexed

    def _build_index(self, left_s: float) -> int:
        """Rebuild the vector index in bulk when most chunks wait for it and the rebuild fits in
        `left_s` (`budgets.index_build_rows`); returns the rows it brought in (0: none, or rows
        are better moved one by one)."""
        started, added = time.monotonic(), 0
        for _ in range(INDEX_BUILDS_PER_RUN):  # the column's index, then each generation's
            left = left_s - (time.monotonic() - started)
            max_rows = index_build_rows(left)
            if not max_rows:
                break
            try:
                built = self.store.build_vector_index(
                    self.worker, lease_s(left), INDEX_BUILD_MIN_ROWS, max_rows
                )
            except NexusError as exc:
                self.logger.warning("a vector index was not rebuilt", extra={"error": str(exc)})
                break
            if built is None:
                break
            self.logger.info("vector index rebuilt", extra={"rows_added": built})
            added += built
        return added

    # -- the pipeline -------------------------------------------------------------------------

    def process_claimed(
        self,
        items: list[ClaimedItem],
        remaining_s: Callable[[], float] | None = None,
        *,
        probe: bool = False,
    ) -> ProcessingReport:
        """Process items this worker has claimed. Never raises for an item's failure.

        Each item's trouble stays its own: an item that its own input makes fail (the provider
        refusing it, chunking past its share of the time) records an attempt (last_error,
        attempts) and is reported in `failed_ids`; an item a provider failure stopped (429, 5xx,
        timeout, connection, no quota) is deferred with no attempt counted, and the fleet's
        back-off is opened. With `remaining_s` (the invocation's time left), provider calls end
        before the invocation does and no summary starts once FINISH_RESERVE_S is all that is
        left: the items still without one are released (`released` in the report) and the rest
        are stored in time. `probe`: this claim tests a backed-off provider (each call tries at
        most PROBE_ATTEMPTS times; success lifts the back-off)."""
        report = ProcessingReport(claimed=len(items))
        if not items:
            return report
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)  # for the process from now on: it processes
        end = math.inf if remaining_s is None else time.monotonic() + remaining_s()
        usage = ClaimUsage(self.prices)
        with call_scope(calls_deadline(end), PROBE_ATTEMPTS if probe else None), rate_limited(self.limiter):
            prepared, troubles, vectors, outcomes, memo = self._run_stages(items, end, report, probe, usage)
        chat_answers = memo.flush() if memo is not None else 0
        chunked = [p.item for p in prepared]
        troubles.update(summary_troubles(chunked, outcomes, troubles, probe, chat_answers > 0))
        self._settle_troubles(prepared, troubles, vectors, report)
        summaries = {
            p.item.id: outcome
            for p in prepared
            if p.item.id not in troubles and isinstance((outcome := outcomes.get(p.item.id)), str)
        }
        paid = usage.by_item((p.item.id, p.item.client_id, p.hashes) for p in prepared)
        completed = [
            self._completed(p, vectors, summaries[p.item.id], paid[p.item.id])
            for p in prepared
            if p.item.id in summaries
        ]
        self._save_outlines([p for p in prepared if p.item.id in summaries])
        stored = self.store.complete_items(self.worker, completed)
        if stored:
            self._drop_pages([c.item for c in completed if c.item.id in stored])
        self._record_unstored_usage(
            [line for item_id, lines in paid.items() if item_id not in stored for line in lines]
        )
        for c in completed:
            self._record_completion(c, stored, report)
        if stored:
            self._fill_generations(remaining_s, report, item_ids=sorted(stored))
        # A probe proves the provider back only if it answered something (an item whose vectors
        # and summary were all kept from before called nobody).
        answered = {"embeddings": report.embedded_chunks > 0, "chat": chat_answers > 0}
        self._provider_outcome(troubles, probe, answered, report)
        if report.backed_off is None:
            self._fold_clients({c.item.client_id for c in completed if c.item.id in stored}, remaining_s)
        return report

    def _save_outlines(self, prepared: list[PreparedItem]) -> None:
        """Keep where each chunk sits (page, headings) for the items about to be stored. Written
        before them: an outline is tied to the content it was made from, so one whose item is not
        stored is never read. A failure only loses the locations, and is logged."""
        outlines = [outline for p in prepared if (outline := p.outline()) is not None]
        try:
            self.store.save_outlines(outlines)
        except NexusError as exc:
            self.logger.warning("chunk locations not kept", extra={"error": str(exc)})

    def _drop_pages(self, items: list[ClaimedItem]) -> None:
        """Forget the pages kept while long PDFs were extracted, now that they are stored."""
        try:
            self.documents.finished(items)
        except NexusError as exc:  # the rows cost only space; the item's next processing replaces them
            self.logger.warning("extracted pages not dropped", extra={"error": str(exc)})

    def _roll_up_usage(self) -> None:
        """Fold the ledger's new lines into its daily totals (what budgets and reports read); a
        failure is logged, and the next sweep does it."""
        try:
            self.store.roll_up_usage()
        except NexusError as exc:
            self.logger.warning("usage not rolled up", extra={"error": str(exc)})

    def _record_unstored_usage(self, lines: list[UsageEntry]) -> None:
        """Record what items that were not stored cost (they failed, were given back, or lost
        their lease): spent all the same. A failure to record is logged, never raised."""
        if not lines:
            return
        try:
            self.store.record_usage(lines)
        except NexusError as exc:
            self.logger.warning("usage of items not stored was not recorded", extra={"error": str(exc)})


def processor_from_settings(settings: Any, store: Store | None = None, **kwargs: Any) -> Processor:
    """A Processor wired from settings (providers chosen once, in config)."""
    return Processor(
        store if store is not None else store_from_settings(settings),
        embedder_from_settings(settings),
        summarizer_from_settings(settings),
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        max_attempts=settings.max_attempts,
        retry_base_s=settings.retry_base_s,
        batch_tokens=settings.batch_tokens,
        summary_concurrency=settings.summary_concurrency,
        probe_s=settings.provider_probe_s,
        prices=price_table(settings),
        rate_limits=settings.rate_limits,
        pdf_page_batch=settings.pdf_page_batch,
        chunk_headings=settings.chunk_headings,
        **kwargs,
    )
