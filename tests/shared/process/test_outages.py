"""Real-world trouble: a provider that is down for a while, no quota, one item that cannot be
chunked in time, summaries that must not be paid twice, a fold that races a reprocessing, and
settings that disagree with the database. Real Postgres, real HTTP to the local OpenAI server;
time passes by moving the database's waiting times (`pass_time`), never by sleeping."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.errors import ConfigError
from shared.process.pipeline import Processor
from shared.providers.deadlines import call_scope
from shared.providers.embeddings import (
    EmbeddingError,
    LocalEmbedder,
    OpenAIEmbedder,
    RetryPolicy,
    provider_key,
)
from shared.providers.summaries import LocalSummarizer, OpenAISummarizer
from shared.store.postgres import PostgresStore
from shared.text.chunking import Chunk, chunk_text, split_text
from shared.text.tokenizer import count_tokens
from tests.support.openai_server import OpenAIServer
from tests.support.process_helpers import backoff_state, document, insert_items, item_states, pass_time

API_KEY = "sk-test-outages-0123456789"


def no_sleep(_seconds: float) -> None:
    """Retries wait for nothing: the tests count requests, not seconds."""


@pytest.fixture(scope="module")
def running_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency_ms=0) as server:
        yield server


@pytest.fixture
def server(running_server: OpenAIServer) -> OpenAIServer:
    running_server.reset()
    return running_server


@pytest.fixture
def embedder(server: OpenAIServer) -> Iterator[OpenAIEmbedder]:
    made = OpenAIEmbedder(
        API_KEY, base_url=server.base_url, retry=RetryPolicy(max_attempts=3, base_s=0.001, sleep=no_sleep)
    )
    yield made
    made.close()


def _documents(db: psycopg.Connection[Any], client_id: uuid.UUID, count: int, seed: int) -> list[uuid.UUID]:
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    return insert_items(db, client_id, [document(rng, 2, 50, f"{tag} {n}") for n in range(count)])


# -- a provider that is down for a while --------------------------------------------------------


def test_a_long_outage_fails_nothing_costs_few_calls_and_recovers_by_itself(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    db_store: PostgresStore,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    ids = _documents(db, db_client, 6, seed=1)
    processor = Processor(db_store, embedder, LocalSummarizer(), max_attempts=2, retry_base_s=30, probe_s=120)
    server.enqueue_faults([{"endpoint": "embeddings", "status": 500}] * 10_000)

    sweeps = 12  # two minutes apart: a 24-minute outage
    attempts_per_sweep = []
    for _ in range(sweeps):
        before = server.stats.embedding_attempts
        report = processor.sweep(lambda: 60.0)
        attempts_per_sweep.append(server.stats.embedding_attempts - before)
        assert report.failed == 0 and report.done == 0
        states = item_states(db, ids)
        assert {s["status"] for s in states.values()} == {"pending"}, "nothing failed, nothing charged"
        assert {s["attempts"] for s in states.values()} == {0}
        pass_time(db, 120)

    # The first sweep sends the claim's one request (3 tries); each later one probes with one
    # item, one request of at most 2 tries: 3 + 11 * 2 = 25 calls for 24 minutes, 6 items.
    assert attempts_per_sweep[0] == 3
    assert all(0 < n <= 2 for n in attempts_per_sweep[1:])
    assert sum(attempts_per_sweep) <= 3 + 2 * (sweeps - 1)
    backoff = backoff_state(db, processor.provider or "")
    assert backoff is not None and backoff["state"] == "open"
    assert [p["state"] for p in db_store.status()["providers"]] == ["open"]
    # While backed off and before the next probe is due, nobody calls the provider at all.
    db.execute("update provider_backoff set probe_at = now() + interval '1 minute'")
    before = server.stats.embedding_attempts
    assert processor.sweep(lambda: 60.0).backed_off is not None
    assert processor.process_ids(ids, 60).backed_off is not None
    assert server.stats.embedding_attempts == before

    server.reset()  # the provider recovers
    pass_time(db, 120)
    report = processor.sweep(lambda: 60.0)

    assert report.done == len(ids), "the probe lifts the back-off and the same sweep does the rest"
    states = item_states(db, ids)
    assert {(s["status"], s["attempts"]) for s in states.values()} == {("done", 1)}
    assert backoff_state(db, processor.provider or "")["state"] == "closed"  # type: ignore[index]
    assert db_store.status()["providers"] == []


def test_a_scheduled_sweep_waits_for_the_next_probe_and_resumes_when_the_provider_does(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    db_store: PostgresStore,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    ids = _documents(db, db_client, 4, seed=6)
    server.enqueue_faults([{"endpoint": "embeddings", "status": 503}] * 10_000)
    waits: list[float] = []

    def wait(seconds: float) -> None:
        """The sweep's wait for the next probe: the database's clock moves on instead."""
        waits.append(seconds)
        pass_time(db, seconds)
        if len(waits) == 4:
            server.reset()  # the provider recovers during the fourth wait

    processor = Processor(db_store, embedder, LocalSummarizer(), max_attempts=2, probe_s=120, sleep=wait)
    report = processor.sweep(lambda: 280.0, wait_for_probe=True)

    # One invocation: the first claim meets the outage, then it waits for each probe (10, 20,
    # 40, 80 s: the back-off grows), and the probe after the recovery lifts it for the rest.
    assert [round(w) for w in waits] == [10, 20, 40, 80]
    assert report.done == len(ids) and report.failed == 0 and report.backed_off is None
    assert {(s["status"], s["attempts"]) for s in item_states(db, ids).values()} == {("done", 1)}
    # Without the wait (a webhook, the CLI), a sweep that finds the back-off ends at once.
    server.enqueue_faults([{"endpoint": "embeddings", "status": 503}] * 10)
    more = _documents(db, db_client, 1, seed=7)
    assert processor.sweep(lambda: 280.0).deferred_ids == set(more)
    assert processor.sweep(lambda: 280.0).backed_off is not None
    assert len(waits) == 4


def test_a_probe_that_calls_nobody_does_not_lift_the_back_off(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    db_store: PostgresStore,
    server: OpenAIServer,
    embedder: OpenAIEmbedder,
) -> None:
    (done,) = _documents(db, db_client, 1, seed=8)
    processor = Processor(db_store, embedder, LocalSummarizer(), probe_s=120)
    assert processor.process_ids([done], 60).done == 1
    content = db.execute("select content from knowledge_items where id = %s", (done,)).fetchone()["content"]
    db.execute(
        "insert into provider_backoff (provider, state, failures, opened_at, probe_at, last_error) "
        "values (%s, 'open', 1, now(), now(), 'HTTP 503')",
        (processor.provider,),
    )
    (twin,) = insert_items(db, db_client, [content])  # every chunk's vector is already stored
    before = server.stats.embedding_attempts

    report = processor.sweep(lambda: 60.0)

    assert report.done_ids == {twin} and server.stats.embedding_attempts == before
    assert backoff_state(db, processor.provider or "")["state"] == "open"  # type: ignore[index]
    pass_time(db, 120)
    (fresh,) = _documents(db, db_client, 1, seed=9)
    assert processor.sweep(lambda: 60.0).done_ids == {fresh}
    assert backoff_state(db, processor.provider or "")["state"] == "closed"  # type: ignore[index]


def test_retries_inside_a_call_stop_at_the_invocations_deadline(server: OpenAIServer) -> None:
    waits: list[float] = []
    retry = RetryPolicy(max_attempts=6, base_s=0.001, sleep=waits.append)
    embedder = OpenAIEmbedder(API_KEY, base_url=server.base_url, retry=retry)
    server.enqueue_faults([{"endpoint": "embeddings", "status": 429, "retry_after": 60}] * 6)
    try:
        with call_scope(deadline=__import__("time").monotonic() + 5), pytest.raises(EmbeddingError) as caught:
            embedder.embed(["asked to come back in a minute"])
    finally:
        embedder.close()

    # Retry-After: 60 would end after the invocation: no wait, no second try.
    assert waits == [] and server.stats.embedding_attempts == 1
    assert caught.value.retryable and caught.value.retry_after_s == 60


@pytest.mark.parametrize(
    ("attempt", "retry_after", "left", "max_attempts", "expected"),
    [
        (0, None, 100.0, None, "wait"),
        (0, 3.0, 100.0, None, 3.0),
        (0, 3.0, 4.0, None, None),  # waiting 3 s leaves less than a request needs
        (5, None, 100.0, None, None),  # the policy's 6 attempts are used up
        (1, None, 100.0, 2, None),  # a probe tries twice
        (0, None, 100.0, 2, "wait"),
    ],
)
def test_the_wait_before_a_retry_respects_attempts_and_the_deadline(
    attempt: int, retry_after: float | None, left: float, max_attempts: int | None, expected: object
) -> None:
    import time

    policy = RetryPolicy(max_attempts=6, base_s=0.5, cap_s=20.0)
    with call_scope(time.monotonic() + left, max_attempts):
        delay = policy.next_delay_s(attempt, retry_after)
    if expected == "wait":
        assert delay is not None and 0 <= delay <= 20.0
    else:
        assert delay == expected


# -- one item's trouble stays its own -----------------------------------------------------------


def test_an_item_that_cannot_be_chunked_in_time_fails_alone(
    db: psycopg.Connection[Any], db_store: PostgresStore
) -> None:
    stuck = threading.Event()

    def chunker(text: str, max_tokens: int, overlap: int) -> list[Chunk]:
        if "UNCHUNKABLE" in text:
            stuck.wait(30)  # never set before the claim is stored: it outlives its share
        return split_text(text, max_tokens, overlap)

    clients = [uuid.uuid4(), uuid.uuid4()]
    for client in clients:
        db.execute("insert into clients (id) values (%s)", (client,))
    (bad,) = insert_items(db, clients[0], ["An UNCHUNKABLE document, as far as this claim can tell."])
    clean = _documents(db, clients[1], 3, seed=2)
    processor = Processor(
        db_store, LocalEmbedder(), LocalSummarizer(), max_attempts=3, item_chunk_min_s=0.2, chunker=chunker
    )
    try:
        claimed = db_store.claim_items(processor.worker, 90, 10, 3, item_ids=[bad, *clean])
        report = processor.process_claimed(claimed, lambda: 60.0)
    finally:
        stuck.set()

    assert report.done_ids == set(clean) and report.failed_ids == {bad}
    states = item_states(db, [bad, *clean])
    assert (states[bad]["status"], states[bad]["attempts"]) == ("failed", 1)
    assert "Chunking took longer" in states[bad]["last_error"]
    assert all(states[i]["status"] == "done" and states[i]["last_error"] is None for i in clean)


def test_an_item_whose_text_breaks_the_chunker_fails_alone(
    db: psycopg.Connection[Any], db_store: PostgresStore
) -> None:
    """A bug that one item's content triggers (here, an error from the chunker) fails that item,
    its attempt counted and the error recorded; the claim's other items are stored."""

    def chunker(text: str, max_tokens: int, overlap: int) -> list[Chunk]:
        if "POISON" in text:
            raise IndexError("list index out of range")
        return split_text(text, max_tokens, overlap)

    client = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (client,))
    (bad,) = insert_items(db, client, ["A POISON document for this chunker."])
    clean = _documents(db, client, 3, seed=3)
    processor = Processor(db_store, LocalEmbedder(), LocalSummarizer(), max_attempts=3, chunker=chunker)
    report = processor.sweep(lambda: 60.0)

    assert report.done_ids == set(clean) and report.failed_ids == {bad}
    states = item_states(db, [bad, *clean])
    assert (states[bad]["status"], states[bad]["attempts"]) == ("failed", 1)
    assert states[bad]["last_error"] == "Chunking failed: IndexError: list index out of range"
    assert all(states[i]["status"] == "done" for i in clean)


# -- summaries are never paid twice ---------------------------------------------------------------


def test_a_long_summary_cut_short_resumes_without_paying_its_parts_again(
    db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore, server: OpenAIServer
) -> None:
    rng = random.Random(3)
    # Several map calls of at most 12 k tokens each, then one reduce.
    (item_id,) = insert_items(db, db_client, [document(rng, 60, 700, "long report")])
    summarizer = OpenAISummarizer(
        API_KEY,
        base_url=server.base_url,
        retry=RetryPolicy(max_attempts=2, base_s=0.001, sleep=no_sleep),
        map_concurrency=1,
    )
    processor = Processor(db_store, LocalEmbedder(), summarizer, max_attempts=3)
    try:
        # Two map calls are answered, then the chat endpoint fails: the item is given back.
        server.enqueue_faults(
            [{"endpoint": "chat", "delay_s": 0}] * 2 + [{"endpoint": "chat", "status": 503}] * 50
        )
        first = processor.process_ids([item_id], 60)
        assert first.deferred_ids == {item_id}
        assert server.stats.chat_requests == 2
        paid_before = server.stats.chat_prompt_tokens

        server.reset()
        pass_time(db, 120)
        second = processor.process_ids([item_id], 60)
        resumed = server.stats
        # Then unchanged content processed again costs no chat call at all.
        db.execute(
            "update knowledge_items set status = 'pending', processed_sha256 = null where id = %s", (item_id,)
        )
        server.reset()
        third = processor.process_ids([item_id], 60)
    finally:
        summarizer.close()

    row = db.execute("select content, source from knowledge_items where id = %s", (item_id,)).fetchone()
    parts = len(summarizer.first_keys(chunk_text(row["content"]), row["source"]))
    assert parts >= 4
    assert second.done_ids == {item_id}
    # The parts left, the reduce, and the fold of the new summary into the client's.
    assert resumed.chat_requests == parts - 2 + 1 + 1
    # Every part's text is paid for once over both runs (plus the reduce and the fold).
    content_tokens = count_tokens(row["content"])
    assert resumed.chat_prompt_tokens < content_tokens
    assert paid_before + resumed.chat_prompt_tokens < content_tokens + 2 * 12_000
    assert third.done_ids == {item_id} and server.stats.chat_attempts == 0


# -- a fold marks only what it folded --------------------------------------------------------------


def test_a_fold_does_not_mark_a_summary_written_after_it_read_the_backlog(
    db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore
) -> None:
    ids = _documents(db, db_client, 2, seed=4)
    db.execute(
        "update knowledge_items set status = 'done', summary = 'first summary', processed_at = now() "
        "where id = any(%s)",
        (ids,),
    )
    backlog = db_store.client_summary_backlog(db_client)
    # Meanwhile one item is processed again: a new summary, not yet folded.
    db.execute(
        "update knowledge_items set summary = 'second summary', processed_at = now() + interval '1 second' "
        "where id = %s",
        (ids[0],),
    )
    items = backlog["items"]
    saved = db_store.save_client_summary(
        db_client,
        int(backlog["version"]),
        "folded",
        [uuid.UUID(i["id"]) for i in items],
        "m",
        [i["processed_at"] for i in items],
    )

    assert saved
    folded = {
        row["id"]: row["summary_folded"]
        for row in db.execute(
            "select id, summary_folded from knowledge_items where id = any(%s)", (ids,)
        ).fetchall()
    }
    assert folded == {ids[0]: False, ids[1]: True}
    assert [i["summary"] for i in db_store.client_summary_backlog(db_client)["items"]] == ["second summary"]


# -- settings that disagree with the database -----------------------------------------------------


def test_dimensions_that_disagree_with_the_schema_are_named_before_any_call(
    db: psycopg.Connection[Any], db_client: uuid.UUID, db_store: PostgresStore, server: OpenAIServer
) -> None:
    ids = _documents(db, db_client, 1, seed=5)
    db_store.ensure_generation("text-embedding-3-small", 1536)  # the database's active generation
    embedder = OpenAIEmbedder(API_KEY, dimensions=512, base_url=server.base_url)
    try:
        with pytest.raises(ConfigError) as caught:
            Processor(db_store, embedder, LocalSummarizer()).process_ids(ids, 60)
    finally:
        embedder.close()

    message = str(caught.value)
    assert "NEXUS_EMBEDDING_MODEL / NEXUS_EMBEDDING_DIMENSIONS are text-embedding-3-small / 512" in message
    assert "1536" in message and "nexus embeddings start" in message
    assert server.stats.requests == 0
    assert item_states(db, ids)[ids[0]]["status"] == "pending"


def test_the_back_off_is_shared_by_provider_key(server: OpenAIServer) -> None:
    assert provider_key(server.base_url) == provider_key(server.base_url + "/")
    assert provider_key(None) == "openai https://api.openai.com/v1"
