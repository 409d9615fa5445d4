"""The stages of one claim: chunk, embed, summarise, overlapping in time.

Split from `pipeline` (which claims, settles and stores) because these are the work itself: given
the claimed items and the invocation's end, they return what each item became (chunks, vectors,
a summary) or the trouble that stopped it, and touch the store only to reuse what was paid for.
`Processor` inherits them, so each stage stays a method a benchmark or a test can wrap.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeAlias

from shared.errors import NexusError
from shared.logs import get_logger
from shared.process.budgets import (
    FINISH_RESERVE_S,
    SWEEP_RESERVE_S,
    is_local,
    item_chunk_budget_s,
    summaries_deadline,
)
from shared.process.documents import DocumentReader, ExtractionPaused
from shared.process.feed import EmbeddingFeed
from shared.process.report import ProcessingReport
from shared.process.summaries import StoredSummaryMemo
from shared.process.troubles import Trouble, blamed, is_suspect, kind_of
from shared.process.usage import ClaimUsage
from shared.providers.deadlines import call_scope, submit
from shared.providers.embeddings import Embedder, EmbeddingError
from shared.providers.prices import PriceTable
from shared.providers.summaries import Summarizer, SummaryError, memoizes
from shared.providers.usage import metered
from shared.store import ChunkRecord, ClaimedItem, CompletedItem, Store, UsageEntry
from shared.store.rows import Generation
from shared.text.chunking import Chunk
from shared.text.context import chunk_document
from shared.text.documents import Document, DocumentError, locate
from shared.text.hashing import sha256_hex

__all__ = ["CHUNK_THREADS", "ClaimStages", "PreparedItem", "SummaryOutcome"]

# The tokenizer releases the GIL, so a second thread chunks while the first waits on it.
CHUNK_THREADS = 2
# The part of an item's chunking time a long PDF's extraction may take before it keeps its pages
# and gives the item back (`shared.process.documents`).
EXTRACTION_SHARE = 0.6

SummaryOutcome: TypeAlias = str | SummaryError | None  # the summary, what prevented it, or None: no time


@dataclass
class PreparedItem:
    """A claimed item once chunked: its chunks, their content hashes, and when its work began."""

    item: ClaimedItem
    chunks: list[Chunk]
    hashes: list[str]
    started: float
    document: Document  # what was chunked (an HTML item's visible text, a file's text) and its sections

    @property
    def text(self) -> str:
        return self.document.text

    def outline(self) -> dict[str, Any] | None:
        """The item's outline as the store keeps it (None: no sections): the sections, and the
        one each chunk starts in."""
        document = self.document
        if not document.sections:
            return None
        index = {id(section): i for i, section in enumerate(document.sections)}
        found = locate(document.sections, [c.char_start for c in self.chunks])
        return {
            "knowledge_item_id": str(self.item.id),
            "client_id": str(self.item.client_id),
            "content_sha256": self.item.content_sha256,
            "sections": document.outline(),
            "chunk_sections": [-1 if s is None else index[id(s)] for s in found],
            "pages": document.pages,
            "pages_without_text": list(document.pages_without_text),
        }


class ClaimStages:
    """Chunking, embedding and summarising a claim (mixed into `Processor`, which sets these)."""

    store: Store
    embedder: Embedder
    summarizer: Summarizer
    chunk_tokens: int
    chunk_overlap: int
    summary_concurrency: int
    item_chunk_min_s: float
    chunker: Callable[..., list[Chunk]]  # (text, max_tokens, overlap[, boundaries])
    chunk_headings: bool  # each chunk's text led by its heading path (`shared.text.context`)
    documents: DocumentReader
    active: Generation | None
    prices: PriceTable

    def _run_stages(
        self, items: list[ClaimedItem], end: float, report: ProcessingReport, probe: bool, usage: ClaimUsage
    ) -> tuple[
        list[PreparedItem],
        dict[uuid.UUID, Trouble],
        dict[str, Any],
        dict[uuid.UUID, SummaryOutcome],
        StoredSummaryMemo | None,
    ]:
        """Chunk, embed and summarise, the stages overlapping: embedding requests go out while
        the rest of the claim is still being chunked, and summaries are made while the last
        requests fly. Returns the items chunked, the troubles met so far by item, the vectors by
        chunk hash, each item's summary outcome, and the summary memo; what the answers cost
        is gathered in `usage`."""
        claim_chars = sum(len(item.content) for item in items)
        troubles: dict[uuid.UUID, Trouble] = {}
        memo = StoredSummaryMemo(self.store) if memoizes(self.summarizer) else None
        with EmbeddingFeed(self.store, self.embedder, report, claim_chars, usage) as feed:
            prepared = []
            for item, outcome in self._chunk_all(items, end, claim_chars):
                if isinstance(outcome, Trouble):
                    troubles[item.id] = outcome
                    continue
                prepared.append(outcome)
                feed.add(outcome.chunks, outcome.hashes, len(outcome.item.content))
            with ThreadPoolExecutor(max_workers=1) as background:
                summarizing = submit(background, self._summarize_all, prepared, end, memo, usage)
                vectors, failures = self._embeddings(prepared, feed, report, probe, usage)
                outcomes = summarizing.result()
        troubles.update(failures)
        return prepared, troubles, vectors, outcomes, memo

    def _chunk_all(
        self, items: list[ClaimedItem], end: float, claim_chars: int
    ) -> Iterator[tuple[ClaimedItem, PreparedItem | Trouble]]:
        """Each item chunked (in claim order, CHUNK_THREADS at a time), or the trouble that
        stopped it: an item still chunking after its share of the claim's time (by characters,
        at least ITEM_CHUNK_MIN_S) fails alone and is not waited for."""
        pool = ThreadPoolExecutor(CHUNK_THREADS)
        try:
            left_s = end - time.monotonic()
            futures = [
                pool.submit(self._chunk, item, self._extraction_deadline(item, left_s, claim_chars))
                for item in items
            ]
            for item, future in zip(items, futures, strict=True):
                budget = item_chunk_budget_s(left_s, len(item.content), claim_chars, self.item_chunk_min_s)
                yield item, self._chunked(future, budget, len(item.content))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _chunked(future: Future[PreparedItem], budget: float, chars: int) -> PreparedItem | Trouble:
        """The item chunked, or its trouble: its file cannot be read (or a long PDF goes on at
        the next claim), chunking outlasted `budget` (not waited for), or chunking its content
        raised an error of no service of ours (a bug its text triggers: that item fails alone,
        its attempt counted, instead of every item of the claim waiting out its lease)."""
        try:
            return future.result(timeout=None if budget == math.inf else budget)
        except (DocumentError, ExtractionPaused) as exc:  # the file's own, or the clock's
            return Trouble(exc, kind_of(exc))
        except NexusError:  # the database's, say: the claim's, not this item's
            raise
        except TimeoutError:
            future.cancel()
            return Trouble(
                NexusError(
                    f"Chunking took longer than this item's share of the invocation "
                    f"({budget:.0f} s for {chars} characters)."
                ),
                "item",
            )
        except Exception as exc:
            get_logger().exception("chunking an item failed", extra={"error": type(exc).__name__})
            reason = " ".join(str(exc).split())[:200]
            return Trouble(NexusError(f"Chunking failed: {type(exc).__name__}: {reason}"), "item")

    def _extraction_deadline(self, item: ClaimedItem, left_s: float, claim_chars: int) -> float:
        """When a long PDF's extraction stops and keeps its pages for the next claim: after most
        of the item's share of the invocation (the rest is for chunking it), and while the
        invocation still has the time to embed, summarise and store it."""
        budget = item_chunk_budget_s(left_s, len(item.content), claim_chars, self.item_chunk_min_s)
        if budget == math.inf:
            return math.inf
        now = time.monotonic()
        return min(now + EXTRACTION_SHARE * budget, now + left_s - FINISH_RESERVE_S - SWEEP_RESERVE_S)

    def _chunk(self, item: ClaimedItem, extraction_deadline: float = math.inf) -> PreparedItem:
        started = time.monotonic()
        # HTML never reaches the embedder with its tags; a file gives its text
        document = self.documents.read(item, extraction_deadline)
        chunks = chunk_document(
            document,
            self.chunk_tokens,
            self.chunk_overlap,
            headings=self.chunk_headings,
            chunker=self.chunker,
        )
        return PreparedItem(item, chunks, [sha256_hex(c.text) for c in chunks], started, document)

    def _embeddings(
        self,
        prepared: list[PreparedItem],
        feed: EmbeddingFeed,
        report: ProcessingReport,
        probe: bool,
        usage: ClaimUsage,
    ) -> tuple[dict[str, Any], dict[uuid.UUID, Trouble]]:
        """Vectors by chunk hash (stored ones reused, the rest embedded once each), and the
        troubles of the items that could not be embedded.

        A refused packed request is retried item by item, so one poison item fails alone instead
        of taking its batch with it. So is a transient failure, once an item of the batch was
        given back for one before: a first failure is more likely an outage than a bad input,
        and splitting then would multiply the requests. An item alone is judged by `blamed`."""
        vectors, error = feed.finish()
        texts = feed.texts
        missing = [h for h in texts if h not in vectors]
        try:
            if error is not None:
                raise error
            self._embed_into(vectors, missing, texts, report, usage)
            return vectors, {}
        except EmbeddingError as exc:
            suspects = not exc.retryable or any(is_suspect(p.item) for p in prepared)
            if exc.code in ("insufficient_quota", "deadline") or len(prepared) == 1 or not suspects:
                kind = blamed(prepared[0].item, exc, probe, True) if len(prepared) == 1 else kind_of(exc)
                trouble = Trouble(exc, kind)
                return vectors, {
                    p.item.id: trouble for p in prepared if any(h not in vectors for h in p.hashes)
                }
        return vectors, self._embed_each(prepared, vectors, texts, report, usage)

    def _embed_each(
        self,
        prepared: list[PreparedItem],
        vectors: dict[str, Any],
        texts: dict[str, Chunk],
        report: ProcessingReport,
        usage: ClaimUsage,
    ) -> dict[uuid.UUID, Trouble]:
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
                self._embed_into(vectors, wanted, texts, report, usage)
                transient_in_a_row = 0
                embedded_any = True
            except EmbeddingError as exc:
                failures[p.item.id] = last = exc
                transient_in_a_row = transient_in_a_row + 1 if exc.retryable else 0
        return {
            item_id: Trouble(exc, "item" if embedded_any and exc.retryable else kind_of(exc))
            for item_id, exc in failures.items()
        }

    def _embed_into(
        self,
        vectors: dict[str, Any],
        hashes: list[str],
        texts: dict[str, Chunk],
        report: ProcessingReport,
        usage: ClaimUsage,
    ) -> None:
        if not hashes:
            return
        counts = [texts[h].token_count for h in hashes]
        with metered() as meter:
            embedded = self.embedder.embed(
                [texts[h].text for h in hashes], counts, [texts[h].token_ids for h in hashes]
            )
        usage.embedded(hashes, counts, meter)
        vectors.update(zip(hashes, embedded, strict=True))
        report.embedded_chunks += len(hashes)
        report.embedded_tokens += sum(texts[h].token_count for h in hashes)

    def _summarize_all(
        self, prepared: list[PreparedItem], end: float, memo: StoredSummaryMemo | None, usage: ClaimUsage
    ) -> dict[uuid.UUID, SummaryOutcome]:
        """Each item's summary, the error that prevented it, or None when it was not made before
        FINISH_RESERVE_S before `end` (several calls at a time for a remote summariser; a call
        still running then is not waited for, and its answer is dropped). Provider calls end by
        then too, so an item alone in its claim cannot outlive the invocation; the parts of a
        long item summarised so far are kept in `memo`."""
        stop = summaries_deadline(end)
        summarizer = self.summarizer
        if memo is not None and memoizes(summarizer):
            memo.prefetch(
                [
                    key
                    for p in prepared
                    for key in summarizer.first_keys(
                        self._summary_input(p), p.item.source, self._summary_counts(p)
                    )
                ]
            )

        def summarize(p: PreparedItem) -> SummaryOutcome:
            if time.monotonic() >= stop:
                return None
            with metered() as meter:
                usage.summarized(p.item.id, meter)
                try:
                    if memo is not None and memoizes(summarizer):
                        return summarizer.summarize_item(
                            self._summary_input(p),
                            p.item.source,
                            memo=memo,
                            token_counts=self._summary_counts(p),
                        )
                    return summarizer.summarize_item(self._summary_input(p), p.item.source)
                except SummaryError as exc:
                    return exc

        results: list[SummaryOutcome]
        with call_scope(stop):
            if self.summary_concurrency > 1 and len(prepared) > 1 and not is_local(summarizer):
                pool = ThreadPoolExecutor(max_workers=self.summary_concurrency)
                futures = [submit(pool, summarize, p) for p in prepared]
                wait(futures, timeout=None if stop == math.inf else max(stop - time.monotonic(), 0.0))
                pool.shutdown(wait=False, cancel_futures=True)
                results = [f.result() if f.done() and not f.cancelled() else None for f in futures]
            else:
                results = [summarize(p) for p in prepared]
        return {p.item.id: outcome for p, outcome in zip(prepared, results, strict=True)}

    def _summary_input(self, p: PreparedItem) -> list[str]:
        return [c.text for c in p.chunks] if self.chunk_overlap == 0 else [p.text]

    def _summary_counts(self, p: PreparedItem) -> list[int] | None:
        """The token counts of `_summary_input`, when the chunks are it (no overlap)."""
        return [c.token_count for c in p.chunks] if self.chunk_overlap == 0 else None

    def _completed(
        self, p: PreparedItem, vectors: dict[str, Any], summary: str, usage: list[UsageEntry]
    ) -> CompletedItem:
        records = [
            ChunkRecord(c.index, c.text, vectors[h], c.token_count, c.char_start, c.char_end, h)
            for c, h in zip(p.chunks, p.hashes, strict=True)
        ]
        elapsed_ms = int((time.monotonic() - p.started) * 1000)
        return CompletedItem(
            p.item,
            records,
            summary,
            self.embedder.model,
            self.embedder.dimensions,
            elapsed_ms,
            self.active,
            tuple(usage),
        )
