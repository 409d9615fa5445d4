"""Processing finishes inside its invocation: summaries stop in time and claims are sized to the
time left, so a claim is stored instead of being killed with everything paid for it.

Real Postgres (a database of the test's own), the OpenAI summariser over real HTTP against the
local OpenAI-compatible server with a per-request latency, the local embedder. The invocation's
time left is a countdown on the real clock, as Lambda's context gives it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shared.process.budgets import (
    CLAIM_TIME_SHARE,
    FINISH_RESERVE_S,
    MAX_CLAIM_ITEMS,
    REMOTE_SUMMARY_S,
    SWEEP_RESERVE_S,
)
from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer, OpenAISummarizer
from shared.store.postgres import PostgresStore
from shared.text.chunking import chunk_text
from tests.support.openai_server import OpenAIServer
from tests.support.process_helpers import assert_exact_chunk_set, document, insert_items, item_states

CHAT_LATENCY_S = 0.3


@pytest.fixture(scope="module")
def slow_chat() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency_ms=CHAT_LATENCY_S * 1000) as server:
        yield server


@pytest.fixture
def summarizer(slow_chat: OpenAIServer) -> Iterator[OpenAISummarizer]:
    slow_chat.reset()
    made = OpenAISummarizer("sk-test-time", base_url=slow_chat.base_url)
    yield made
    made.close()


def countdown(seconds: float) -> Callable[[], float]:
    """The invocation's time left, on the real clock."""
    deadline = time.monotonic() + seconds
    return lambda: deadline - time.monotonic()


def _items(db: psycopg.Connection[Any], client_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    rng = random.Random(count)
    return insert_items(db, client_id, [document(rng, 2, 60, f"timed {i}") for i in range(count)])


def test_summaries_stop_in_time_and_the_rest_go_back_uncounted(
    db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore, summarizer: OpenAISummarizer
) -> None:
    ids = _items(db, db_client, 60)
    processor = Processor(db_store, LocalEmbedder(), summarizer, summary_concurrency=2)
    # 60 summaries at 0.3 s, two at a time, take ~9 s; the invocation has 1.5 s for them.
    remaining = countdown(FINISH_RESERVE_S + 1.5)
    claimed = db_store.claim_items(processor.worker, remaining() + 30, 100, 5, item_ids=ids)
    report = processor.process_claimed(claimed, remaining)

    assert remaining() > FINISH_RESERVE_S - 2.0, "stored well before the invocation's end"
    assert 0 < report.done < 60 and report.failed == 0
    assert report.released == 60 - report.done
    states = item_states(db, ids)
    released = [i for i in ids if i not in report.done_ids]
    for item_id in released:  # back in the queue as if never claimed: no attempt counted
        assert (states[item_id]["status"], states[item_id]["attempts"]) == ("pending", 0)
        assert states[item_id]["lease_owner"] is None
    for item_id in report.done_ids:
        assert_exact_chunk_set(db, item_id)

    later = Processor(db_store, LocalEmbedder(), summarizer, summary_concurrency=8)
    again = later.process_ids(released, 120)
    assert again.done == len(released)
    # Their vectors were kept when they were given back: nothing is embedded a second time.
    assert (again.embedded_chunks, again.reused_chunks) == (0, again.chunks)
    for item_id in ids:
        assert_exact_chunk_set(db, item_id)
    assert {s["attempts"] for s in item_states(db, ids).values()} == {1}


def test_a_sweep_sizes_its_claims_so_each_is_stored_in_time(
    db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore, summarizer: OpenAISummarizer
) -> None:
    ids = _items(db, db_client, 120)
    processor = Processor(db_store, LocalEmbedder(), summarizer, summary_concurrency=2)
    # All 120 in one claim would need ~18 s of summaries; the claims get about 6 s in all.
    remaining = countdown(SWEEP_RESERVE_S + FINISH_RESERVE_S + 4.0 / CLAIM_TIME_SHARE)
    report = processor.sweep(remaining)

    assert report.released == 0 and report.failed == 0, report.as_dict()
    assert 0 < report.done < 120
    assert remaining() > SWEEP_RESERVE_S
    for item_id in report.done_ids:
        assert_exact_chunk_set(db, item_id)
    pending = [i for i, s in item_states(db, ids).items() if s["status"] == "pending"]
    assert len(pending) == 120 - report.done  # never claimed: nothing was paid for them


def test_claim_size_follows_the_summariser_and_what_earlier_claims_took(
    db_store: PostgresStore, summarizer: OpenAISummarizer
) -> None:
    local = Processor(db_store, LocalEmbedder(), LocalSummarizer())
    assert local.claim_size(300) == (MAX_CLAIM_ITEMS, local.batch_chars)
    assert local.claim_size(SWEEP_RESERVE_S + FINISH_RESERVE_S) == (0, 0)

    remote = Processor(db_store, LocalEmbedder(), summarizer, summary_concurrency=8)
    budget_s = (300 - SWEEP_RESERVE_S - FINISH_RESERVE_S) * CLAIM_TIME_SHARE
    assert remote.claim_size(300) == (int(budget_s / (REMOTE_SUMMARY_S / 8)), remote.batch_chars)

    remote._seconds_per_item, remote._seconds_per_char = 2.0, 0.001  # as a sweep measures them
    assert remote.claim_size(300) == (int(budget_s / 2.0), int(budget_s / 0.001))


def test_summary_concurrency_is_a_setting(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    db_url: str,
    db_store: PostgresStore,
    slow_chat: OpenAIServer,
) -> None:
    from shared.config import load_settings
    from shared.errors import ConfigError
    from shared.process import processor_from_settings

    environ = {
        "DATABASE_URL": db_url,
        "NEXUS_EMBEDDING_PROVIDER": "local",
        "OPENAI_API_KEY": "sk-test-time",
        "OPENAI_BASE_URL": slow_chat.base_url,
        "NEXUS_SUMMARY_CONCURRENCY": "12",
    }
    processor = processor_from_settings(load_settings(environ), store=db_store)
    assert processor.summary_concurrency == 12
    slow_chat.reset()
    ids = _items(db, db_client, 24)
    assert processor.process_ids(ids, 120).done == 24
    assert slow_chat.stats.max_in_flight == 12  # 24 summaries at 0.3 s: two rounds of 12

    with pytest.raises(ConfigError, match=r"^NEXUS_SUMMARY_CONCURRENCY is invalid: .*\(got '0'\)\.$"):
        load_settings({**environ, "NEXUS_SUMMARY_CONCURRENCY": "0"})


def test_a_long_item_claimed_alone_is_given_back_in_time_and_resumes_where_it_stopped(
    db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore, slow_chat: OpenAIServer
) -> None:
    slow_chat.reset()
    # Many 12 k-token parts, summarised one at a time at 0.3 s each: far more than the 1.5 s left.
    (item_id,) = insert_items(db, db_client, [document(random.Random(9), 80, 700, "a long one")])
    one_at_a_time = OpenAISummarizer("sk-test-time", base_url=slow_chat.base_url, map_concurrency=1)
    processor = Processor(db_store, LocalEmbedder(), one_at_a_time)
    try:
        remaining = countdown(FINISH_RESERVE_S + 1.5)
        first = processor.process_ids([item_id], remaining)
        left_after_first = remaining()
        calls_before = slow_chat.stats.chat_requests
        again = processor.process_ids([item_id], 120)
    finally:
        one_at_a_time.close()

    assert first.released_ids == {item_id} and first.failed == 0
    assert left_after_first > FINISH_RESERVE_S - 2.0, "given back well before the invocation's end"
    state = item_states(db, [item_id])[item_id]
    assert again.done_ids == {item_id} and state["attempts"] == 1  # the release cost no attempt
    assert calls_before > 0
    parts = slow_chat.stats.chat_requests - calls_before - 2  # less the reduce and the client fold
    row = db.execute("select content from knowledge_items where id = %s", (item_id,)).fetchone()
    total_parts = len(one_at_a_time.first_keys(chunk_text(row["content"])))
    # The parts summarised before are not paid again; only a call still in flight when the time
    # ran out (answered by the server, dropped by the client) may be.
    assert total_parts - calls_before <= parts <= total_parts - calls_before + 1
