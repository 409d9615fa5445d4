"""Processing's pure policy, table by table (no database, no HTTP): how much a sweep claims, how
long each step and each item may take, how the embedding feed counts requests, and whose fault a
failure is."""

from __future__ import annotations

import math
import time
import uuid

import pytest

from shared.errors import NexusError
from shared.process.budgets import (
    INDEX_BATCH_ROWS,
    MAX_CLAIM_ITEMS,
    PROBE_WAIT_STEP_S,
    calls_deadline,
    claim_size,
    countdown,
    index_batch_rows,
    index_time_s,
    is_local,
    item_chunk_budget_s,
    lease_s,
    probe_wait_s,
    summaries_deadline,
    waits_for_probe,
)
from shared.process.feed import requests_needed
from shared.process.pipeline import Processor
from shared.process.report import ProcessingReport
from shared.process.troubles import Trouble, blamed, fleet_failures, kind_of, summary_troubles
from shared.providers.embeddings import EmbeddingError, LocalEmbedder
from shared.providers.summaries import LocalSummarizer, SummaryError
from shared.store import ClaimedItem

CHARS = 4_800_000  # a claim's default cap in characters (1.2 M tokens)

# --- claims and deadlines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining_s", "max_chars", "per_item_s", "per_char_s", "remote_at_once", "size"),
    [
        (300, CHARS, None, None, 0, (MAX_CLAIM_ITEMS, CHARS)),  # local summaries, nothing measured
        (15, CHARS, None, None, 0, (0, 0)),  # only the reserves left
        (14, CHARS, None, None, 8, (0, 0)),
        (300, CHARS, None, None, 8, (456, CHARS)),  # 171 s at 3 s a call, 8 at a time
        (300, CHARS, None, None, 1, (57, CHARS)),
        (300, CHARS, 2.0, 0.001, 8, (85, 171_000)),  # measured: the measure wins
        (300, CHARS, 0.01, None, 0, (MAX_CLAIM_ITEMS, CHARS)),  # fast: the item cap holds
        (300, 100, None, 0.001, 0, (MAX_CLAIM_ITEMS, 100)),  # the character cap holds
        (16, CHARS, None, 1.0, 0, (MAX_CLAIM_ITEMS, 1)),  # never less than one character
        (300, CHARS, 0.0, None, 8, (MAX_CLAIM_ITEMS, CHARS)),  # measured as nothing: no bound
    ],
)
def test_claim_size(
    remaining_s: float,
    max_chars: int,
    per_item_s: float | None,
    per_char_s: float | None,
    remote_at_once: int,
    size: tuple[int, int],
) -> None:
    got = claim_size(
        remaining_s,
        max_chars,
        seconds_per_item=per_item_s,
        seconds_per_char=per_char_s,
        remote_summaries_at_once=remote_at_once,
    )
    assert got == size


def test_a_processor_sizes_claims_by_its_summariser_and_what_it_measured() -> None:
    processor = Processor(None, LocalEmbedder(8), LocalSummarizer())  # type: ignore[arg-type]
    assert processor.claim_size(300) == (MAX_CLAIM_ITEMS, processor.batch_chars)
    processor._seconds_per_item, processor._seconds_per_char = 2.0, 0.001
    assert processor.claim_size(300) == (85, 171_000)


@pytest.mark.parametrize(
    ("time_left_s", "item_chars", "claim_chars", "budget_s"),
    [
        (115.0, 1000, 1000, 100.0),  # alone: all the time before the reserves
        (115.0, 250, 1000, 25.0),  # a quarter of the claim's characters, a quarter of the time
        (115.0, 10, 1000, 10.0),  # never under the minimum
        (10.0, 500, 1000, 10.0),  # past the reserves already: the minimum
        (math.inf, 500, 1000, math.inf),  # no deadline
        (math.inf, 0, 1000, 10.0),  # an empty item with no deadline: the minimum
    ],
)
def test_an_item_chunks_within_its_share(
    time_left_s: float, item_chars: int, claim_chars: int, budget_s: float
) -> None:
    assert item_chunk_budget_s(time_left_s, item_chars, claim_chars, min_s=10.0) == budget_s


@pytest.mark.parametrize(
    ("remaining_s", "budget_s", "spent_s", "left_s"),
    [(60.0, None, 0.0, 58.0), (60.0, 3.0, 1.0, 2.0), (2.5, 3.0, 0.0, 0.5), (1.0, None, 0.0, -1.0)],
)
def test_index_time_left(remaining_s: float, budget_s: float | None, spent_s: float, left_s: float) -> None:
    assert index_time_s(remaining_s, budget_s, spent_s) == left_s


@pytest.mark.parametrize(
    ("left_s", "per_row_s", "rows"),
    [
        (10.0, None, INDEX_BATCH_ROWS),  # not measured yet: a full batch
        (0.0, None, 0),
        (-1.0, 0.001, 0),
        (10.0, 0.001, INDEX_BATCH_ROWS),  # a full batch fits
        (0.1, 0.001, 100),
        (8.0, 0.5, 16),
        (7.9, 0.5, 0),  # fewer than the smallest batch worth a transaction
    ],
)
def test_index_batch_rows(left_s: float, per_row_s: float | None, rows: int) -> None:
    assert index_batch_rows(left_s, per_row_s) == rows


@pytest.mark.parametrize(
    ("probe_in_s", "remaining_s", "waits"),
    [(10.0, 100.0, True), (64.0, 100.0, True), (65.0, 100.0, False), (0.0, 30.0, False)],
)
def test_a_sweep_waits_for_a_probe_only_with_work_time_after_it(
    probe_in_s: float, remaining_s: float, waits: bool
) -> None:
    assert waits_for_probe(probe_in_s, remaining_s) is waits


@pytest.mark.parametrize(
    ("probe_in_s", "sleep_s"), [(0.0, PROBE_WAIT_STEP_S), (0.01, PROBE_WAIT_STEP_S), (3.0, 3.0)]
)
def test_probe_wait(probe_in_s: float, sleep_s: float) -> None:
    assert probe_wait_s(probe_in_s) == sleep_s


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        (lease_s, 100.0, 130.0),  # a lease outlives its invocation by the margin
        (calls_deadline, 100.0, 95.0),  # provider calls end before the sweep's reserve
        (summaries_deadline, 100.0, 90.0),  # summaries stop before the finish reserve
        (calls_deadline, math.inf, math.inf),
    ],
)
def test_invocation_deadlines(rule: object, value: float, expected: float) -> None:
    assert rule(value) == expected  # type: ignore[operator]


def test_countdown_from_a_number_or_a_function() -> None:
    clock = countdown(30.0)
    first = clock()
    time.sleep(0.01)
    assert 29.0 < clock() < first <= 30.0

    def fixed() -> float:
        return 7.0

    assert countdown(fixed) is fixed


@pytest.mark.parametrize(
    ("model", "local"),
    [
        ("local-hash-v1", True),
        ("local-extractive-v1", True),
        ("text-embedding-3-small", False),
        ("gpt-4o-mini", False),
    ],
)
def test_local_providers(model: str, local: bool) -> None:
    embedder = LocalEmbedder(8)
    embedder.model = model
    assert is_local(embedder) is local


def test_a_chunk_is_keyed_by_the_sha256_of_its_text_as_the_sql_computes_it() -> None:
    processor = Processor(None, LocalEmbedder(8), LocalSummarizer())  # type: ignore[arg-type]
    prepared = processor._chunk(item(content="注意：季度报告。"))
    assert [c.text for c in prepared.chunks] == ["注意：季度报告。"]
    assert prepared.hashes == ["5185bf0345e5381a00f3c90be9c4486f752d4db0f123b9a5ea398e96588988d9"]


# --- the embedding feed's request count ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "inputs", "requests"),
    [
        (0, 0, 0),
        (300_000, 1, 1),
        (300_001, 1, 2),  # the token limit
        (10, 2049, 2),  # the input limit
        (600_000.5, 10, 3),  # extrapolated (fractional) totals round up
    ],
)
def test_requests_needed(tokens: float, inputs: float, requests: int) -> None:
    assert requests_needed(tokens, inputs, 300_000, 2048) == requests


# --- whose fault a failure is -------------------------------------------------------------------

TRANSIENT = EmbeddingError("HTTP 503", retryable=True)
REFUSED = EmbeddingError("HTTP 400", retryable=False, code="400", status=400)
NO_QUOTA = EmbeddingError("no quota", retryable=False, code="insufficient_quota")
OUT_OF_TIME = EmbeddingError("no time", retryable=True, code="deadline")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TRANSIENT, "provider"),
        (REFUSED, "item"),
        (NO_QUOTA, "provider"),
        (OUT_OF_TIME, "time"),
        (SummaryError("HTTP 429", retryable=True), "provider"),
        (NexusError("chunking took too long"), "item"),
    ],
)
def test_kind_of_an_error(error: NexusError, kind: str) -> None:
    assert kind_of(error) == kind


def item(attempts: int = 1, transient_failures: int = 0, content: str = "text") -> ClaimedItem:
    return ClaimedItem(
        uuid.uuid4(), uuid.uuid4(), "s.md", content, "h", None, None, None, attempts, transient_failures
    )


@pytest.mark.parametrize(
    ("attempts", "transient_failures", "error", "probe", "evidence", "kind"),
    [
        (1, 1, TRANSIENT, False, True, "item"),  # given back before, and the API answered others
        (2, 0, TRANSIENT, False, True, "item"),  # charged before
        (1, 0, TRANSIENT, False, True, "provider"),  # a first failure: the provider's
        (1, 1, TRANSIENT, True, True, "provider"),  # a probe charges nobody
        (1, 1, TRANSIENT, False, False, "provider"),  # no evidence against the item
        (3, 2, NO_QUOTA, False, True, "provider"),
        (3, 2, OUT_OF_TIME, False, True, "time"),
        (1, 0, REFUSED, True, False, "item"),
    ],
)
def test_blame(
    attempts: int, transient_failures: int, error: NexusError, probe: bool, evidence: bool, kind: str
) -> None:
    assert blamed(item(attempts, transient_failures), error, probe, evidence) == kind


def test_summary_troubles_judge_only_the_items_without_a_summary() -> None:
    done, failed, late, suspect, troubled = item(), item(), item(), item(transient_failures=1), item()
    error = SummaryError("HTTP 503", retryable=True)
    earlier = {troubled.id: Trouble(REFUSED, "item")}
    outcomes = {done.id: "a summary", failed.id: error, late.id: None, suspect.id: error, troubled.id: None}
    items = [done, failed, late, suspect, troubled]

    found = summary_troubles(items, outcomes, earlier, probe=False, chat_answered=True)
    assert {i: t.kind for i, t in found.items()} == {
        failed.id: "provider",
        late.id: "time",
        suspect.id: "item",
    }
    unanswered = summary_troubles(items, outcomes, earlier, probe=False, chat_answered=False)
    assert unanswered[suspect.id].kind == "provider"  # nothing says the chat API was up
    assert summary_troubles([suspect], {suspect.id: error}, {})[suspect.id].kind == "item"  # alone


@pytest.mark.parametrize(
    ("trouble", "answered", "backs_off"),
    [
        (Trouble(TRANSIENT, "provider"), {"embeddings": False, "chat": False}, True),
        (Trouble(TRANSIENT, "provider"), {"embeddings": True, "chat": False}, False),  # the API is up
        (Trouble(SummaryError("x", retryable=True), "provider"), {"embeddings": True, "chat": False}, True),
        (Trouble(SummaryError("x", retryable=True), "provider"), {"embeddings": False, "chat": True}, False),
        (Trouble(NO_QUOTA, "provider"), {"embeddings": True, "chat": True}, True),  # no quota, always
        (Trouble(TRANSIENT, "item"), {"embeddings": False, "chat": False}, False),
        (Trouble(OUT_OF_TIME, "time"), {"embeddings": False, "chat": False}, False),
    ],
)
def test_fleet_failures(trouble: Trouble, answered: dict[str, bool], backs_off: bool) -> None:
    assert fleet_failures({uuid.uuid4(): trouble}, answered) == ([trouble.error] if backs_off else [])


# --- what a run reports -------------------------------------------------------------------------


def test_reports_merge_and_keep_their_shape() -> None:
    first, second = ProcessingReport(claimed=2, done=1), ProcessingReport(claimed=1, failed=1, chunks=4)
    first.done_ids.add(uuid.uuid4())
    second.backed_off = {"state": "open"}
    first.merge(second)
    assert first.as_dict() == {
        "claimed": 3,
        "done": 1,
        "failed": 1,
        "lost": 0,
        "chunks": 4,
        "reused_chunks": 0,
        "embedded_chunks": 0,
        "embedded_tokens": 0,
        "indexed_chunks": 0,
        "generation_chunks": 0,
        "generation_embedded": 0,
        "released": 0,
        "deferred": 0,
        "backed_off": {"state": "open"},
    }
    assert list(ProcessingReport().as_dict()) == list(first.as_dict())[:-1]  # no back-off, no key
    assert len(first.done_ids) == 1
