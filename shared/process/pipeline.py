"""Processing: claimed items → chunks → embeddings (reused where the text was seen before) →
summaries → stored atomically, then each affected client's summary folded.

Every trigger (webhook, queue message, schedule, CLI) ends here. Delivery is at-least-once:
claims are leased (`FOR UPDATE SKIP LOCKED`), completion checks the lease and the content hash,
and embeddings are looked up by chunk text hash first, so a repeat costs no second embedding pass.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ConfigError, NexusError
from shared.logs import get_logger
from shared.providers.deadlines import call_scope, submit
from shared.providers.embeddings import (
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    Embedder,
    EmbeddingError,
)
from shared.providers.summaries import Summarizer, SummaryError
from shared.store.postgres import ChunkRecord, ClaimedItem, CompletedItem, Store
from shared.text.chunking import Chunk, split_text

LEASE_MARGIN_S = 30.0  # a lease outlives its invocation by this much, no more
SWEEP_RESERVE_S = 5.0  # stop claiming when less than this is left
# A claim must be stored before its invocation ends, or everything paid for it (embeddings,
# summaries) is lost and paid again by whoever reclaims it. So summaries stop starting this long
# before the end (items left unsummarised go back to the queue, no attempt counted), and a sweep
# sizes each claim to take at most CLAIM_TIME_SHARE of the time left, from what its previous
# claims took per item and per character; before any is measured, a remote summariser is assumed
# to take REMOTE_SUMMARY_S per call (gpt-4o-mini writing ~120 words), the local one nothing.
FINISH_RESERVE_S = 10.0
CLAIM_TIME_SHARE = 0.6
REMOTE_SUMMARY_S = 3.0
MAX_CLAIM_ITEMS = 2000
FIND_BATCH = 1000
CHARS_PER_TOKEN = 4
CHUNK_THREADS = 2
INDEX_BATCH_ROWS = 256  # rows moved into the vector index per transaction (row locks held meanwhile)
INDEX_MIN_BATCH_ROWS = 16
INDEX_RESERVE_S = 2.0  # indexing stops with at least this much of the invocation left
INDEX_AFTER_ITEM_S = 3.0  # what a webhook, queue or CLI item trigger spends on indexing afterwards
# While a claim is processed, threads that mostly wait (HTTP reads, tokenizer calls, which give up
# the GIL) run beside threads running Python; getting the GIL back after each wait takes up to the
# interpreter's switch interval (5 ms by default). 0.5 ms: measured on the benchmark's claims,
# about +10% chunks/s, median of 9 sweeps each (1,091 against 1,006 with larger HTTP reads alone).
SWITCH_INTERVAL_S = 0.0005
# A provider backed off (see `provider_gate` in the migrations) is probed with a claim of one item
# whose provider calls try at most PROBE_ATTEMPTS times each.
PROBE_ATTEMPTS = 2
# A scheduled sweep waits for a backed-off provider's next probe only if this much of its time
# would be left for work afterwards; it rechecks at least this often.
PROBE_WAIT_MIN_WORK_S = 30.0
PROBE_WAIT_STEP_S = 0.05
# Each item's chunking may take its share (by characters) of the claim's time, and at least this.
ITEM_CHUNK_MIN_S = 10.0


@dataclass
class ProcessingReport:
    """What a processing run did; `failed_ids` lets queue triggers report partial failures."""

    claimed: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    chunks: int = 0
    reused_chunks: int = 0
    embedded_chunks: int = 0
    embedded_tokens: int = 0
    indexed_chunks: int = 0
    released: int = 0  # claimed, then given back unprocessed (no attempt counted): time ran out
    deferred: int = 0  # claimed, then given back after a provider failure (no attempt counted)
    done_ids: set[uuid.UUID] = field(default_factory=set)
    failed_ids: set[uuid.UUID] = field(default_factory=set)
    released_ids: set[uuid.UUID] = field(default_factory=set)
    deferred_ids: set[uuid.UUID] = field(default_factory=set)
    # The fleet's back-off when it stopped this run from claiming ({"state", "probe_at", ...}).
    backed_off: dict[str, Any] | None = None

    def merge(self, other: ProcessingReport) -> None:
        for name in (
            "claimed",
            "done",
            "failed",
            "lost",
            "chunks",
            "reused_chunks",
            "embedded_chunks",
            "embedded_tokens",
            "indexed_chunks",
            "released",
            "deferred",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.done_ids |= other.done_ids
        self.failed_ids |= other.failed_ids
        self.released_ids |= other.released_ids
        self.deferred_ids |= other.deferred_ids
        self.backed_off = other.backed_off or self.backed_off

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "done": self.done,
            "failed": self.failed,
            "lost": self.lost,
            "chunks": self.chunks,
            "reused_chunks": self.reused_chunks,
            "embedded_chunks": self.embedded_chunks,
            "embedded_tokens": self.embedded_tokens,
            "indexed_chunks": self.indexed_chunks,
            "released": self.released,
            "deferred": self.deferred,
            **({"backed_off": self.backed_off} if self.backed_off else {}),
        }


def new_worker_id(invocation_id: str | None = None) -> str:
    """Who holds a lease: host, pid and the invocation (or a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{invocation_id or uuid.uuid4().hex[:12]}"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class _Prepared:
    item: ClaimedItem
    chunks: list[Chunk]
    hashes: list[str]
    started: float


@dataclass(frozen=True)
class _Trouble:
    """Why an item of a claim is not stored: its own input ("item": an attempt is counted), the
    provider ("provider": deferred, no attempt), or the clock ("time": released, no attempt)."""

    error: NexusError
    kind: str


def _kind_of(error: NexusError) -> str:
    code = getattr(error, "code", "")
    if code == "deadline":
        return "time"
    if code == "insufficient_quota" or getattr(error, "retryable", False):
        return "provider"
    return "item"


def _suspect(item: ClaimedItem) -> bool:
    """Whether a transient failure of a batch holding this item may be the item's doing: it was
    given back for a provider failure before, or charged for a failure of its own."""
    return item.transient_failures > 0 or item.attempts > 1


def _blamed(item: ClaimedItem, error: NexusError, probe: bool, evidence: bool) -> str:
    """The kind of an item's failure. A transient one is the item's own when the item is a
    suspect (given back or charged before), the claim is not a probe (so the fleet was not backed
    off: the provider answered since), and there is `evidence` that the item, not the provider,
    fails: the same API answered the claim's other items, or the item was alone in its claim.
    Otherwise as `_kind_of` says. A long outage claims only through probes: it charges nobody."""
    kind = _kind_of(error)
    if (
        kind == "provider"
        and getattr(error, "retryable", False)
        and not probe
        and evidence
        and _suspect(item)
    ):
        return "item"
    return kind


def _summary_troubles(
    prepared: list[_Prepared],
    outcomes: dict[uuid.UUID, str | SummaryError | None],
    troubles: dict[uuid.UUID, _Trouble],
    probe: bool = False,
    chat_answered: bool = False,
) -> dict[uuid.UUID, _Trouble]:
    """The troubles of items whose summary was not made (None: no time was left to start it).
    `chat_answered`: the chat API answered calls of this claim."""
    found: dict[uuid.UUID, _Trouble] = {}
    evidence = chat_answered or len(prepared) == 1
    for p in prepared:
        if p.item.id in troubles:
            continue
        outcome = outcomes.get(p.item.id)
        if isinstance(outcome, SummaryError):
            found[p.item.id] = _Trouble(outcome, _blamed(p.item, outcome, probe, evidence))
        elif outcome is None:
            found[p.item.id] = _Trouble(NexusError("No time was left to summarise the item."), "time")
    return found


class _SummaryMemo:
    """Summaries paid for, by input key: read from the store once per claim (the first round of
    each item; later rounds on demand), new ones written back together by `flush`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, str] = {}
        self._looked_up: set[str] = set()
        self._new: dict[str, str] = {}
        self._lock = threading.Lock()

    def prefetch(self, keys: list[str]) -> None:
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


class Processor:
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
        batch_tokens: int = 1_200_000,
        summary_concurrency: int = 8,
        probe_s: float = 120.0,
        item_chunk_min_s: float = ITEM_CHUNK_MIN_S,
        chunker: Callable[[str, int, int], list[Chunk]] = split_text,
        sleep: Callable[[float], None] = time.sleep,
        worker: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
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
        # The fleet's back-off is kept per API; offline providers have none.
        self.provider = next(
            (key for key in (getattr(p, "provider_key", None) for p in (embedder, summarizer)) if key), None
        )
        self.worker = worker or new_worker_id()
        self.progress = progress
        self.logger = get_logger()
        # Measured by the sweep: seconds a claim took per item and per character of content.
        self._seconds_per_item: float | None = None
        self._seconds_per_char: float | None = None

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
        remaining = _remaining_fn(remaining_s)
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return ProcessingReport()
        self.check_settings()
        gate = self._gate()
        if not gate["claim"]:
            return ProcessingReport(backed_off=gate)
        claimed = self.store.claim_items(
            self.worker,
            remaining() + LEASE_MARGIN_S,
            1 if gate["probe"] else len(ids),
            self.max_attempts,
            item_ids=ids,
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
                if wait_for_probe and wait_s + PROBE_WAIT_MIN_WORK_S < remaining_s() - SWEEP_RESERVE_S:
                    self.sleep(max(wait_s, PROBE_WAIT_STEP_S))
                    continue
                break
            report.backed_off = None
            max_items, max_chars = self.claim_size(remaining_s())
            if max_items < 1:
                break
            claimed = self.store.claim_items(
                self.worker,
                remaining_s() + LEASE_MARGIN_S,
                1 if gate["probe"] else max_items,
                self.max_attempts,
                max_chars=max_chars,
                probe=gate["probe"],
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
        report.indexed_chunks += self.index_pending(remaining_s)
        return report

    def check_settings(self) -> None:
        """Settings that disagree with the database, named in one sentence before any provider is
        called. Every run starts with it: a read that is safe to repeat, so a connection the
        database dropped while the function sat idle is replaced here, before the claim."""
        stored = self.store.schema_facts().get("embedding_dimensions")
        if stored and int(stored) != self.embedder.dimensions:
            raise ConfigError(
                f"NEXUS_EMBEDDING_DIMENSIONS is {self.embedder.dimensions}, but the database stores "
                f"{stored}-dimension embeddings (knowledge_chunks.embedding); set it to {stored}."
            )

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
        """(items, characters) a sweep may claim with `remaining_s` left: a claim should take at
        most CLAIM_TIME_SHARE of the time left after the reserves, judged by what earlier claims
        took per item and per character (each alone, so both bounds are cautious). (0, 0) means
        there is no time for another claim."""
        budget_s = (remaining_s - SWEEP_RESERVE_S - FINISH_RESERVE_S) * CLAIM_TIME_SHARE
        if budget_s <= 0:
            return 0, 0
        items, chars = MAX_CLAIM_ITEMS, self.batch_chars
        per_item = self._seconds_per_item
        if per_item is None and not _is_local(self.summarizer):
            per_item = REMOTE_SUMMARY_S / self.summary_concurrency
        if per_item:
            items = min(items, int(budget_s / per_item))
        if self._seconds_per_char:
            chars = min(chars, max(int(budget_s / self._seconds_per_char), 1))
        return items, chars

    def index_pending(self, remaining_s: Callable[[], float], budget_s: float | None = None) -> int:
        """Move stored chunks into the vector index until none are waiting, `budget_s` is spent,
        or INDEX_RESERVE_S of the invocation is left. Batches are sized from the measured time
        per row so the last one ends in time. Search is exact for chunks not yet moved, so this
        only keeps it fast; a failure is logged and left to the next run."""
        started = time.monotonic()
        indexed = 0
        per_row_s: float | None = None
        while True:
            left = remaining_s() - INDEX_RESERVE_S
            if budget_s is not None:
                left = min(left, budget_s - (time.monotonic() - started))
            rows = INDEX_BATCH_ROWS if per_row_s is None else min(INDEX_BATCH_ROWS, int(left / per_row_s))
            if left <= 0 or rows < INDEX_MIN_BATCH_ROWS:
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
        with call_scope(end - SWEEP_RESERVE_S, PROBE_ATTEMPTS if probe else None):
            prepared, troubles, vectors, outcomes, memo = self._run_stages(items, end, report, probe)
        chat_answers = memo.flush() if memo is not None else 0
        troubles.update(_summary_troubles(prepared, outcomes, troubles, probe, chat_answers > 0))
        self._settle_troubles(prepared, troubles, vectors, report)
        summaries = {
            p.item.id: outcome
            for p in prepared
            if p.item.id not in troubles and isinstance((outcome := outcomes.get(p.item.id)), str)
        }
        completed = [
            self._completed(p, vectors, summaries[p.item.id]) for p in prepared if p.item.id in summaries
        ]
        stored = self.store.complete_items(self.worker, completed)
        for c in completed:
            self._record_completion(c, stored, report)
        # A probe proves the provider back only if it answered something (an item whose vectors
        # and summary were all kept from before called nobody).
        answered = {"embeddings": report.embedded_chunks > 0, "chat": chat_answers > 0}
        self._provider_outcome(troubles, probe, answered, report)
        if report.backed_off is None:
            self._fold_clients({c.item.client_id for c in completed if c.item.id in stored}, remaining_s)
        return report

    def _run_stages(
        self, items: list[ClaimedItem], end: float, report: ProcessingReport, probe: bool
    ) -> tuple[
        list[_Prepared],
        dict[uuid.UUID, _Trouble],
        dict[str, Any],
        dict[uuid.UUID, str | SummaryError | None],
        _SummaryMemo | None,
    ]:
        """Chunk, embed and summarise, the stages overlapping: embedding requests go out while
        the rest of the claim is still being chunked, and summaries are made while the last
        requests fly. Returns the items chunked, the troubles met so far by item, the vectors by
        chunk hash, each item's summary outcome, and the summary memo."""
        claim_chars = sum(len(item.content) for item in items)
        troubles: dict[uuid.UUID, _Trouble] = {}
        memo = _SummaryMemo(self.store) if hasattr(self.summarizer, "first_keys") else None
        with _EmbeddingFeed(self, report, claim_chars) as feed:
            prepared = []
            for item, outcome in self._chunk_all(items, end, claim_chars):
                if isinstance(outcome, _Trouble):
                    troubles[item.id] = outcome
                    continue
                prepared.append(outcome)
                feed.add(outcome)
            with ThreadPoolExecutor(max_workers=1) as background:
                summarizing = submit(background, self._summarize_all, prepared, end, memo)
                vectors, failures = self._embeddings(prepared, feed, report, probe)
                outcomes = summarizing.result()
        troubles.update(failures)
        return prepared, troubles, vectors, outcomes, memo

    def _chunk_all(
        self, items: list[ClaimedItem], end: float, claim_chars: int
    ) -> Iterator[tuple[ClaimedItem, _Prepared | _Trouble]]:
        """Each item chunked (in claim order, CHUNK_THREADS at a time), or the trouble that
        stopped it: an item still chunking after its share of the claim's time (by characters,
        at least ITEM_CHUNK_MIN_S) fails alone and is not waited for."""
        # The tokenizer releases the GIL: two threads chunk about 1.4x as fast as one.
        pool = ThreadPoolExecutor(CHUNK_THREADS)
        try:
            futures = [pool.submit(self._chunk, item) for item in items]
            available = end - time.monotonic() - FINISH_RESERVE_S - SWEEP_RESERVE_S
            for item, future in zip(items, futures, strict=True):
                share = available * len(item.content) / max(claim_chars, 1)
                budget = max(self.item_chunk_min_s, share)
                try:
                    yield item, future.result(timeout=None if budget == math.inf else budget)
                except TimeoutError:
                    future.cancel()
                    yield (
                        item,
                        _Trouble(
                            NexusError(
                                f"Chunking took longer than this item's share of the invocation "
                                f"({budget:.0f} s for {len(item.content)} characters)."
                            ),
                            "item",
                        ),
                    )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _settle_troubles(
        self,
        prepared: list[_Prepared],
        troubles: dict[uuid.UUID, _Trouble],
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

    def _keep_vectors(self, prepared: list[_Prepared], vectors: dict[str, Any]) -> int:
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
        troubles: dict[uuid.UUID, _Trouble],
        probe: bool,
        answered: dict[str, bool],
        report: ProcessingReport,
    ) -> None:
        """Open (or extend) the fleet's back-off after a provider failure of an API that answered
        nothing in this claim (or no quota); lift it after a probe that met none and was answered
        (an item whose vectors and summary were all kept from before called nobody)."""
        if self.provider is None:
            return
        errors = [
            t.error
            for t in troubles.values()
            if t.kind == "provider"
            and (
                getattr(t.error, "code", "") == "insufficient_quota"
                or not answered["chat" if isinstance(t.error, SummaryError) else "embeddings"]
            )
        ]
        if errors:
            quota = any(getattr(e, "code", "") == "insufficient_quota" for e in errors)
            error = next((e for e in errors if getattr(e, "code", "") == "insufficient_quota"), errors[0])
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

    def _chunk(self, item: ClaimedItem) -> _Prepared:
        started = time.monotonic()
        chunks = self.chunker(item.content, self.chunk_tokens, self.chunk_overlap)
        return _Prepared(item, chunks, [sha256_hex(c.text) for c in chunks], started)

    def _embeddings(
        self, prepared: list[_Prepared], feed: _EmbeddingFeed, report: ProcessingReport, probe: bool
    ) -> tuple[dict[str, Any], dict[uuid.UUID, _Trouble]]:
        """Vectors by chunk hash (stored ones reused, the rest embedded once each), and the
        troubles of the items that could not be embedded.

        A refused packed request is retried item by item, so one poison item fails alone instead
        of taking its batch with it. So is a transient failure, once an item of the batch was
        given back for one before: a first failure is more likely an outage than a bad input,
        and splitting then would multiply the requests. An item alone is judged by `_blamed`."""
        vectors, error = feed.finish()
        texts = feed.texts
        missing = [h for h in texts if h not in vectors]
        try:
            if error is not None:
                raise error
            self._embed_into(vectors, missing, texts, report)
            return vectors, {}
        except EmbeddingError as exc:
            suspects = not exc.retryable or any(_suspect(p.item) for p in prepared)
            if exc.code in ("insufficient_quota", "deadline") or len(prepared) == 1 or not suspects:
                kind = _blamed(prepared[0].item, exc, probe, True) if len(prepared) == 1 else _kind_of(exc)
                trouble = _Trouble(exc, kind)
                return vectors, {
                    p.item.id: trouble for p in prepared if any(h not in vectors for h in p.hashes)
                }
        return vectors, self._embed_each(prepared, vectors, texts, report)

    def _embed_each(
        self,
        prepared: list[_Prepared],
        vectors: dict[str, Any],
        texts: dict[str, Chunk],
        report: ProcessingReport,
    ) -> dict[uuid.UUID, _Trouble]:
        """Embed item by item. After two transient failures in a row (an outage, not one bad
        input) the rest are given back without spending more requests; an item whose transient
        failure came while others were embedded is taken to cause it itself."""
        failures: dict[uuid.UUID, EmbeddingError] = {}
        transient_in_a_row = 0
        embedded_any = False
        last: EmbeddingError | None = None
        for p in prepared:
            wanted = [h for h in dict.fromkeys(p.hashes) if h not in vectors]
            if not wanted:
                continue
            if transient_in_a_row >= 2 and last is not None:
                failures[p.item.id] = last
                continue
            try:
                self._embed_into(vectors, wanted, texts, report)
                transient_in_a_row = 0
                embedded_any = True
            except EmbeddingError as exc:
                failures[p.item.id] = last = exc
                transient_in_a_row = transient_in_a_row + 1 if exc.retryable else 0
        return {
            item_id: _Trouble(exc, "item" if embedded_any and exc.retryable else _kind_of(exc))
            for item_id, exc in failures.items()
        }

    def _embed_into(
        self,
        vectors: dict[str, Any],
        hashes: list[str],
        texts: dict[str, Chunk],
        report: ProcessingReport,
    ) -> None:
        if not hashes:
            return
        embedded = self.embedder.embed(
            [texts[h].text for h in hashes],
            [texts[h].token_count for h in hashes],
            [texts[h].token_ids for h in hashes],
        )
        vectors.update(zip(hashes, embedded, strict=True))
        report.embedded_chunks += len(hashes)
        report.embedded_tokens += sum(texts[h].token_count for h in hashes)

    def _summarize_all(
        self, prepared: list[_Prepared], end: float, memo: _SummaryMemo | None
    ) -> dict[uuid.UUID, str | SummaryError | None]:
        """Each item's summary, the error that prevented it, or None when it was not made before
        FINISH_RESERVE_S before `end` (several calls at a time for a remote summariser; a call
        still running then is not waited for, and its answer is dropped). Provider calls end by
        then too, so an item alone in its claim cannot outlive the invocation; the parts of a
        long item summarised so far are kept in `memo`."""
        stop = end - FINISH_RESERVE_S
        if memo is not None:
            memo.prefetch(
                [
                    key
                    for p in prepared
                    for key in self.summarizer.first_keys(  # type: ignore[attr-defined]
                        self._summary_input(p), p.item.source, self._summary_counts(p)
                    )
                ]
            )

        def summarize(p: _Prepared) -> str | SummaryError | None:
            if time.monotonic() >= stop:
                return None
            try:
                if memo is not None:
                    return self.summarizer.summarize_item(  # type: ignore[call-arg]
                        self._summary_input(p), p.item.source, memo=memo, token_counts=self._summary_counts(p)
                    )
                return self.summarizer.summarize_item(self._summary_input(p), p.item.source)
            except SummaryError as exc:
                return exc

        results: list[str | SummaryError | None]
        with call_scope(stop):
            if self.summary_concurrency > 1 and len(prepared) > 1 and not _is_local(self.summarizer):
                pool = ThreadPoolExecutor(max_workers=self.summary_concurrency)
                futures = [submit(pool, summarize, p) for p in prepared]
                wait(futures, timeout=None if stop == math.inf else max(stop - time.monotonic(), 0.0))
                pool.shutdown(wait=False, cancel_futures=True)
                results = [f.result() if f.done() and not f.cancelled() else None for f in futures]
            else:
                results = [summarize(p) for p in prepared]
        return {p.item.id: outcome for p, outcome in zip(prepared, results, strict=True)}

    def _summary_input(self, p: _Prepared) -> list[str]:
        return [c.text for c in p.chunks] if self.chunk_overlap == 0 else [p.item.content]

    def _summary_counts(self, p: _Prepared) -> list[int] | None:
        """The token counts of `_summary_input`, when the chunks are it (no overlap)."""
        return [c.token_count for c in p.chunks] if self.chunk_overlap == 0 else None

    def _completed(self, p: _Prepared, vectors: dict[str, Any], summary: str) -> CompletedItem:
        records = [
            ChunkRecord(c.index, c.text, vectors[h], c.token_count, c.char_start, c.char_end, h)
            for c, h in zip(p.chunks, p.hashes, strict=True)
        ]
        elapsed_ms = int((time.monotonic() - p.started) * 1000)
        return CompletedItem(
            p.item, records, summary, self.embedder.model, self.embedder.dimensions, elapsed_ms
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
                with call_scope(end - SWEEP_RESERVE_S):
                    fold_client_summary(self.store, self.summarizer, client_id, remaining_s=remaining_s)
            except SummaryError as exc:  # the backlog stays; the next run for this client folds it
                self.logger.warning(
                    "client summary not updated", extra={"client_id": str(client_id), "error": str(exc)}
                )
                if _kind_of(exc) == "provider":
                    self._provider_outcome(
                        {client_id: _Trouble(exc, "provider")},
                        False,
                        {"embeddings": False, "chat": False},
                        ProcessingReport(),
                    )
                    break


class _EmbeddingFeed:
    """Embedding requests sent while a claim is still being chunked.

    Chunk hashes are looked up (stored embeddings are reused) in batches as items are chunked;
    the texts still missing fill requests in order, and each request goes out on a background
    thread (up to the embedder's concurrency) as soon as it is filled, so the server works while
    the worker chunks. A request is filled to its even share of the claim, not to the limit:
    the whole claim's tokens to embed are extrapolated from the part chunked so far, and a
    request goes out at that share when the rest, even 25% larger than estimated, still fits
    in the requests left. The count stays the fewest the limits allow (as `pack_requests` would
    give for the whole claim), and what is left to send when chunking ends, the part nothing can
    overlap, is one share instead of a full request plus the remainder. A claim much less
    uniform than the part seen can cost one request more; never a token more.

    After a failed request nothing more is sent: the texts left are the pipeline's to embed or
    fail (`Processor._embeddings`). A local embedder (CPU-bound, in this process) gets no
    background requests: it runs at the end.
    """

    LOOKUP_BATCH = 256
    ESTIMATE_MARGIN = 1.25  # how much larger than estimated the rest of a claim may turn out

    def __init__(self, processor: Processor, report: ProcessingReport, claim_chars: int) -> None:
        self.processor = processor
        self.report = report
        self.texts: dict[str, Chunk] = {}  # a chunk of every distinct text, by its hash
        self.vectors: dict[str, Any] = {}
        self.error: EmbeddingError | None = None
        embedder = processor.embedder
        self.max_tokens = getattr(embedder, "max_request_tokens", MAX_TOKENS_PER_REQUEST)
        self._claim_chars = claim_chars
        self._chars_added = 0
        self._chars_looked_up = 0
        self._unlooked: list[str] = []
        self._pack: list[str] = []
        self._pack_tokens = 0
        self._wanted_tokens = self._wanted_inputs = 0  # of the chunks looked up and found missing
        self._sent_tokens = self._sent_inputs = 0  # of those, already sent
        self._sent: list[tuple[list[str], Future[list[Any]]]] = []
        self._pool = (
            None
            if _is_local(embedder)
            else ThreadPoolExecutor(max_workers=max(1, getattr(embedder, "concurrency", 1)))
        )

    def __enter__(self) -> _EmbeddingFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, prepared: _Prepared) -> None:
        for chunk, digest in zip(prepared.chunks, prepared.hashes, strict=True):
            if digest not in self.texts:
                self.texts[digest] = chunk
                self._unlooked.append(digest)
        self._chars_added += len(prepared.item.content)
        if len(self._unlooked) >= self.LOOKUP_BATCH:
            self._look_up()

    def finish(self) -> tuple[dict[str, Any], EmbeddingError | None]:
        """Send what is left, wait for every request; the vectors known, and the first error."""
        self._look_up()
        if self._pack:
            self._send(len(self._pack))
        for hashes, future in self._sent:
            try:
                vectors = future.result()
            except EmbeddingError as exc:
                self.error = self.error or exc
                continue
            self.vectors.update(zip(hashes, vectors, strict=True))
            self.report.embedded_chunks += len(hashes)
            self.report.embedded_tokens += sum(self.texts[h].token_count for h in hashes)
        self._sent = []
        return self.vectors, self.error

    def _look_up(self) -> None:
        """Find stored embeddings for the chunks added since the last look-up; queue the rest."""
        hashes, self._unlooked = self._unlooked, []
        embedder = self.processor.embedder
        for start in range(0, len(hashes), FIND_BATCH):
            found = self.processor.store.find_embeddings(
                hashes[start : start + FIND_BATCH], embedder.model, embedder.dimensions
            )
            self.vectors.update(found)
            self.report.reused_chunks += len(found)
        missing = [h for h in hashes if h not in self.vectors]
        self._chars_looked_up = self._chars_added
        self._wanted_tokens += sum(self.texts[h].token_count for h in missing)
        self._wanted_inputs += len(missing)
        for digest in missing:
            tokens = self.texts[digest].token_count
            if self._overflows(tokens):
                self._send_shares()
                if self._overflows(tokens):
                    self._send(len(self._pack))
            self._pack.append(digest)
            self._pack_tokens += tokens
        self._send_shares()

    def _overflows(self, tokens: int) -> bool:
        """Whether one more input of `tokens` would break a request limit."""
        if not self._pack:
            return False
        return len(self._pack) >= MAX_INPUTS_PER_REQUEST or self._pack_tokens + tokens > self.max_tokens

    def _send_shares(self) -> None:
        """Send the front of the pack while it holds an even share of the requests left."""
        if self._pool is None or not self._chars_looked_up:
            return
        scale = max(1.0, self._claim_chars / self._chars_looked_up)
        while self._pack:
            tokens_left = self._wanted_tokens * scale - self._sent_tokens
            inputs_left = self._wanted_inputs * scale - self._sent_inputs
            requests_left = self._requests_for(tokens_left, inputs_left)
            if requests_left < 2:
                return
            token_share, input_share = tokens_left / requests_left, inputs_left / requests_left
            count, taken = 0, 0
            while count < len(self._pack) and taken < token_share and count < input_share:
                taken += self.texts[self._pack[count]].token_count
                count += 1
            if taken < token_share and count < input_share:
                return  # not a share yet
            margin = self.ESTIMATE_MARGIN if scale > 1 else 1.0  # once all is looked up, it is exact
            if (
                self._requests_for(margin * (tokens_left - taken), margin * (inputs_left - count))
                >= requests_left
            ):
                return  # the rest might not fit in the requests left: fill this one further
            self._send(count)

    def _requests_for(self, tokens: float, inputs: float) -> int:
        return max(math.ceil(tokens / self.max_tokens), math.ceil(inputs / MAX_INPUTS_PER_REQUEST))

    def _send(self, count: int) -> None:
        pack, self._pack = self._pack[:count], self._pack[count:]
        tokens = [self.texts[h].token_count for h in pack]
        self._pack_tokens -= sum(tokens)
        self._sent_tokens += sum(tokens)
        self._sent_inputs += len(pack)
        if self._pool is None or any(f.done() and f.exception() for _, f in self._sent):
            return  # embedded (or failed) by the pipeline afterwards
        texts = [self.texts[h].text for h in pack]
        ids = [self.texts[h].token_ids for h in pack]
        self._sent.append((pack, submit(self._pool, self.processor.embedder.embed, texts, tokens, ids)))


def _remaining_fn(remaining_s: Callable[[], float] | float) -> Callable[[], float]:
    if callable(remaining_s):
        return remaining_s
    deadline = time.monotonic() + float(remaining_s)
    return lambda: deadline - time.monotonic()


def _is_local(provider: Embedder | Summarizer) -> bool:
    """The offline providers: CPU-bound in this process, so threads would not speed them up."""
    return provider.model.startswith("local")


MAX_FOLD_ROUNDS = 40  # x the summariser's fold_batch items a round: a large batch folds in one run


def fold_client_summary(
    store: Store,
    summarizer: Summarizer,
    client_id: uuid.UUID,
    attempts: int = 3,
    remaining_s: Callable[[], float] | None = None,
) -> bool:
    """Fold the client's not-yet-folded item summaries into its summary, `fold_batch` at a time until none
    are left (or, with `remaining_s`, until less than SWEEP_RESERVE_S is left: each round is saved on
    its own, so stopping loses nothing). Optimistic: a round that loses a race is redone from the newer
    summary (at most `attempts` losses). Returns whether anything was saved."""
    saved = False
    losses = 0
    for _ in range(MAX_FOLD_ROUNDS):
        if remaining_s is not None and remaining_s() < SWEEP_RESERVE_S:
            break
        backlog = store.client_summary_backlog(client_id, getattr(summarizer, "fold_batch", 50))
        items = backlog.get("items") or []
        if not items:
            break
        summary = summarizer.fold_client(backlog.get("summary") or "", [i["summary"] for i in items])
        ids = [uuid.UUID(str(i["id"])) for i in items]
        processed_at = (
            [str(i["processed_at"]) for i in items] if all(i.get("processed_at") for i in items) else None
        )
        if store.save_client_summary(
            client_id, int(backlog.get("version") or 0), summary, ids, summarizer.model, processed_at
        ):
            saved = True
            continue
        losses += 1
        if losses >= attempts:
            break
    return saved


def processor_from_settings(settings: Any, store: Store | None = None, **kwargs: Any) -> Processor:
    """A Processor wired from settings (providers chosen once, in config)."""
    from shared.providers.embeddings import embedder_from_settings
    from shared.providers.summaries import summarizer_from_settings
    from shared.store.postgres import default_store

    return Processor(
        store if store is not None else default_store(settings),
        embedder_from_settings(settings),
        summarizer_from_settings(settings),
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        max_attempts=settings.max_attempts,
        retry_base_s=settings.retry_base_s,
        batch_tokens=settings.batch_tokens,
        summary_concurrency=settings.summary_concurrency,
        probe_s=settings.provider_probe_s,
        **kwargs,
    )
