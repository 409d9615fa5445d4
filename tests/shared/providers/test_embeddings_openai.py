"""The OpenAI embedder over real HTTP against the local OpenAI-compatible server: request packing
through the whole pipeline, and every fault the retry policy must tell apart (retry with backoff
and Retry-After, or stop and report), without ever leaking the API key."""

from __future__ import annotations

import random
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from typing import Any

import psycopg
import pytest

from shared.process.pipeline import Processor
from shared.providers.embeddings import EmbeddingError, OpenAIEmbedder, RetryPolicy, provider_key
from shared.providers.summaries import LocalSummarizer, OpenAISummarizer
from shared.store.postgres import PostgresStore
from shared.text.tokenizer import get_encoding
from tests.support.openai_server import OpenAIServer, expected_embedding
from tests.support.process_helpers import (
    assert_exact_chunk_set,
    backoff_state,
    document,
    insert_items,
    item_states,
)

API_KEY = "sk-test-4f1c9a7e2b8d4c6fa0e3b5d7c9e1f2a3"
MODEL = "text-embedding-3-small"


class RecordingSleep:
    """A RetryPolicy `sleep` that records each wait instead of spending it."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def running_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency_ms=0) as server:
        yield server


@pytest.fixture
def server(running_server: OpenAIServer, admin: psycopg.Connection[Any]) -> OpenAIServer:
    """The module's server with zeroed stats, no queued fault, and no back-off from before."""
    running_server.reset()
    admin.execute(
        "delete from provider_backoff where provider = %s", (provider_key(running_server.base_url),)
    )
    return running_server


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


EmbedderFactory = Callable[..., OpenAIEmbedder]


@pytest.fixture
def make_embedder(server: OpenAIServer, sleep: RecordingSleep) -> Iterator[EmbedderFactory]:
    """OpenAI embedders pointed at the local server, with fast, recorded retries."""
    made: list[OpenAIEmbedder] = []

    def make(
        api_key: str = API_KEY, timeout_s: float = 30.0, max_attempts: int = 4, **options: Any
    ) -> OpenAIEmbedder:
        retry = RetryPolicy(max_attempts=max_attempts, base_s=0.01, sleep=sleep)
        embedder = OpenAIEmbedder(
            api_key, MODEL, 1536, server.base_url, timeout_s=timeout_s, retry=retry, **options
        )
        made.append(embedder)
        return embedder

    yield make
    for embedder in made:
        embedder.close()


# These tests embed with OpenAI's model name, so each gets a database of its own: the session's
# has other tests' embedding generation (the local model), which settings may not contradict.
@pytest.fixture
def admin(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    return db


@pytest.fixture
def store(db_store: PostgresStore) -> PostgresStore:
    return db_store


def processor(store: PostgresStore, embedder: OpenAIEmbedder, **kwargs: Any) -> Processor:
    return Processor(store, embedder, LocalSummarizer(), retry_base_s=60.0, **kwargs)


def assert_vector(vector: Any, text: str) -> None:
    assert len(vector) == 1536
    assert list(vector) == pytest.approx(expected_embedding(text, MODEL, 1536), abs=1e-6)


def stored_vector(admin: psycopg.Connection[Any], item_id: uuid.UUID, index: int) -> tuple[str, list[float]]:
    row = admin.execute(
        "select content, embedding::text as vector from knowledge_chunks "
        "where knowledge_item_id = %s and chunk_index = %s",
        (item_id, index),
    ).fetchone()
    assert row is not None
    return row["content"], [float(x) for x in row["vector"].strip("[]").split(",")]


# -- packing ------------------------------------------------------------------------------------


def test_forty_long_items_are_packed_into_at_most_three_requests(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    rng = random.Random(40)
    tag = uuid.uuid4().hex[:8]
    contents = [document(rng, 8, 125, f"{tag}-{n}") for n in range(40)]
    ids = insert_items(admin, client_id, contents)
    summarizer = OpenAISummarizer(API_KEY, base_url=server.base_url, retry=RetryPolicy(base_s=0.01))
    try:
        report = Processor(store, make_embedder(), summarizer).process_ids(ids, 120)
    finally:
        summarizer.close()

    assert report.done == 40 and report.failed == 0
    stats = server.stats
    assert 1 <= stats.embedding_requests <= 3, stats.embedding_batches
    assert stats.embedding_attempts == stats.embedding_requests  # nothing retried, nothing rejected
    rows = admin.execute(
        "select sum(chunk_count) as chunks, sum(token_count) as tokens, min(token_count) as smallest "
        "from knowledge_items where id = any(%s)",
        (ids,),
    ).fetchone()
    assert rows is not None and rows["smallest"] >= 1800  # ~2,000 tokens each, as the issue asks
    assert stats.embedding_inputs == rows["chunks"] == report.chunks
    assert stats.embedding_tokens == rows["tokens"]  # counted exactly, the way the server counts
    assert stats.embedding_token_id_inputs == stats.embedding_inputs  # sent as ids: nothing to tokenise
    assert sum(assert_exact_chunk_set(admin, item_id) for item_id in ids) == rows["chunks"]
    for item_id in rng.sample(ids, 3):
        text, vector = stored_vector(admin, item_id, rng.randrange(8))
        assert_vector(vector, text)
    summaries = admin.execute("select summary from knowledge_items where id = any(%s)", (ids,)).fetchall()
    assert all(row["summary"].startswith("Summary:") for row in summaries)


def test_a_claim_goes_out_in_even_shares_not_a_large_tail(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    """Requests leave while the claim is chunked, each filled to an even share of it (the claim's
    size extrapolated from the part chunked so far), not greedily to the limit: as few requests
    as greedy packing, and no short last one after two full ones that all went out at the end."""
    rng = random.Random(120)
    tag = uuid.uuid4().hex[:8]
    ids = insert_items(admin, client_id, [document(rng, 8, 125, f"{tag}-{n}") for n in range(120)])
    limit = 120_000  # a compatible server's lower limit: ~250k tokens need 3 requests

    report = processor(store, make_embedder(max_request_tokens=limit)).process_ids(ids, 120)

    assert report.done == 120 and report.failed == 0
    tokens = [t for _, t in server.stats.embedding_batches]
    assert sum(tokens) == report.embedded_tokens
    assert len(tokens) == -(-sum(tokens) // limit) == 3, tokens  # the fewest the limit allows
    assert max(tokens) <= limit
    share = sum(tokens) / 3
    assert all(abs(t - share) < 0.15 * share for t in tokens), tokens  # greedy: 120k, 120k, ~10k


# -- threads ------------------------------------------------------------------------------------


def test_waiting_threads_get_the_interpreter_back_quickly(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    """HTTP reads and tokenizer calls give up the GIL; with another thread running Python, each
    waits up to the switch interval to get it back (5 ms by default, ~0.5 s over one answer of
    700 vectors read 64 KiB at a time)."""
    import httpcore._sync.http11 as http11

    make_embedder()
    assert http11.HTTP11Connection.READ_NUM_BYTES >= 4 << 20  # a few reads per answer, not ~100
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        (item_id,) = insert_items(admin, client_id, ["A document processed with a short switch interval."])
        assert processor(store, make_embedder()).process_ids([item_id], 60).done == 1
        assert sys.getswitchinterval() <= 0.0005
    finally:
        sys.setswitchinterval(previous)


# -- token ids ----------------------------------------------------------------------------------


def test_only_openais_cl100k_models_are_sent_token_ids() -> None:
    for model, sends_ids in [
        ("text-embedding-3-small", True),
        ("text-embedding-3-large", True),
        ("text-embedding-ada-002", True),
        ("nomic-embed-text", False),  # a compatible server's own model has its own tokenizer
        ("bge-m3", False),
    ]:
        embedder = OpenAIEmbedder(API_KEY, model, 768, "http://127.0.0.1:9/v1")
        assert embedder.sends_token_ids is sends_ids, model
        embedder.close()


def test_a_server_refusing_token_ids_gets_text_from_then_on(sleep: RecordingSleep) -> None:
    texts = ["A compatible server that only takes text.", "Ünïcödé — “quotes”, 漢字 and 🚀 as text."]
    ids = [get_encoding().encode_ordinary(t) for t in texts]
    counts = [len(i) for i in ids]
    with OpenAIServer(token_ids=False) as strict:
        retry = RetryPolicy(max_attempts=4, base_s=0.01, sleep=sleep)
        embedder = OpenAIEmbedder(API_KEY, MODEL, 1536, strict.base_url, retry=retry)
        try:
            first = embedder.embed(texts, counts, ids)
            assert strict.stats.embedding_attempts == 2  # refused as ids, answered as text
            assert [status for _, status, _ in strict.stats.rejected] == [400]
            assert embedder.sends_token_ids is False
            second = embedder.embed(texts[::-1], counts[::-1], ids[::-1])
        finally:
            embedder.close()
        stats = strict.stats
    assert stats.embedding_attempts == 3 and stats.embedding_requests == 2  # no second refusal
    assert stats.embedding_token_id_inputs == 0 and sleep.waits == []
    for vector, text in [*zip(first, texts, strict=True), *zip(second, texts[::-1], strict=True)]:
        assert_vector(vector, text)


# -- faults that are retried --------------------------------------------------------------------


def _http_date_in(seconds: float) -> str:
    from datetime import UTC, datetime, timedelta

    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("fault", "at_least_s"),
    [
        ({"status": 429, "retry_after": "1"}, 1.0),
        ({"status": 429, "retry_after": "7"}, 7.0),
        ({"status": 429, "retry_after_ms": "1500"}, 1.5),
        ({"status": 503, "retry_after": "2"}, 2.0),
        ({"status": 429, "headers": {"retry-after": "HTTP-DATE+5"}}, 3.9),
    ],
    ids=["retry-after-1s", "retry-after-7s", "retry-after-ms", "503-retry-after", "retry-after-http-date"],
)
def test_retry_after_is_honoured(
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
    sleep: RecordingSleep,
    fault: dict[str, Any],
    at_least_s: float,
) -> None:
    if "headers" in fault:
        fault = {**fault, "headers": {"retry-after": _http_date_in(5)}}
    server.enqueue_faults([{"endpoint": "embeddings", **fault}])
    vectors = make_embedder().embed(["a rate limited text"])

    assert len(sleep.waits) == 1 and sleep.waits[0] >= at_least_s, sleep.waits
    assert_vector(vectors[0], "a rate limited text")
    stats = server.stats
    assert (stats.embedding_attempts, stats.embedding_requests) == (2, 1)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_error_then_success(
    server: OpenAIServer, make_embedder: EmbedderFactory, sleep: RecordingSleep, status: int
) -> None:
    server.enqueue_faults([{"endpoint": "embeddings", "status": status}])
    texts = ["first text", "second text"]
    vectors = make_embedder().embed(texts)

    for vector, text in zip(vectors, texts, strict=True):
        assert_vector(vector, text)
    assert len(sleep.waits) == 1 and 0 <= sleep.waits[0] <= 0.01  # full jitter under base_s · 2^0
    stats = server.stats
    assert (stats.embedding_attempts, stats.embedding_requests, stats.embedding_inputs) == (2, 1, 2)


def test_backoff_grows_exponentially_with_jitter(
    server: OpenAIServer, make_embedder: EmbedderFactory, sleep: RecordingSleep
) -> None:
    server.enqueue_faults([{"endpoint": "embeddings", "status": 500}] * 5)
    make_embedder(max_attempts=6).embed(["sixth time lucky"])

    assert len(sleep.waits) == 5
    for attempt, wait in enumerate(sleep.waits):
        assert 0 <= wait <= 0.01 * 2**attempt


def test_hang_times_out_on_the_client_and_is_retried(
    server: OpenAIServer, make_embedder: EmbedderFactory, sleep: RecordingSleep
) -> None:
    server.enqueue_faults([{"endpoint": "embeddings", "hang_s": 3}])
    started = time.monotonic()
    vectors = make_embedder(timeout_s=0.3).embed(["a text that once hung"])
    elapsed = time.monotonic() - started

    assert_vector(vectors[0], "a text that once hung")
    assert elapsed < 2.5  # the client's timeout ended the wait, not the server
    assert len(sleep.waits) == 1
    stats = server.stats
    assert (stats.embedding_attempts, stats.embedding_requests) == (2, 1)


def test_malformed_body_is_retried(
    server: OpenAIServer, make_embedder: EmbedderFactory, sleep: RecordingSleep
) -> None:
    server.enqueue_faults([{"endpoint": "embeddings", "malformed": True}])
    vectors = make_embedder().embed(["a text whose first answer was cut short"])

    assert_vector(vectors[0], "a text whose first answer was cut short")
    assert len(sleep.waits) == 1
    stats = server.stats
    assert (stats.embedding_attempts, stats.embedding_requests) == (2, 1)


def test_persistent_server_errors_defer_the_item_uncharged_and_back_the_fleet_off(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
    sleep: RecordingSleep,
) -> None:
    (item_id,) = insert_items(admin, client_id, ["A document the service keeps failing on, for now."])
    server.enqueue_faults([{"endpoint": "embeddings", "status": 500}] * 3)
    report = processor(store, make_embedder(max_attempts=3), max_attempts=5).process_ids([item_id], 60)

    assert report.deferred_ids == {item_id} and report.failed == 0
    assert server.stats.embedding_attempts == 3 and len(sleep.waits) == 2
    state = item_states(admin, [item_id])[item_id]
    assert (state["status"], state["attempts"], state["last_error"]) == ("pending", 0, None)  # not charged
    assert "after 3 attempts" in state["last_transient_error"] and "HTTP 500" in state["last_transient_error"]
    backoff = backoff_state(admin, provider_key(server.base_url))
    assert backoff is not None and backoff["state"] == "open" and "HTTP 500" in backoff["last_error"]
    assert report.backed_off is not None and report.backed_off["state"] == "open"


# -- faults that stop at once -------------------------------------------------------------------


def test_insufficient_quota_is_not_retried(
    server: OpenAIServer, make_embedder: EmbedderFactory, sleep: RecordingSleep
) -> None:
    server.enqueue_faults([{"endpoint": "embeddings", "status": 429, "code": "insufficient_quota"}])
    with pytest.raises(EmbeddingError) as caught:
        make_embedder().embed(["no money left"])

    assert caught.value.retryable is False and caught.value.code == "insufficient_quota"
    assert "quota" in str(caught.value)
    assert sleep.waits == []
    assert server.stats.embedding_attempts == 1


def test_insufficient_quota_pauses_claiming_with_one_request_and_keeps_old_chunks(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    rng = random.Random(7)
    tag = uuid.uuid4().hex[:8]
    ids = insert_items(admin, client_id, [document(rng, 2, 60, f"{tag}-{n}") for n in range(4)])
    work = processor(store, make_embedder(), max_attempts=5)
    assert work.process_ids(ids[:1], 60).done == 1
    old_chunks = admin.execute(
        "select chunk_index, content from knowledge_chunks where knowledge_item_id = %s order by 1", (ids[0],)
    ).fetchall()
    admin.execute("update knowledge_items set content = content || ' Edited.' where id = %s", (ids[0],))
    server.reset()
    server.enqueue_faults([{"endpoint": "embeddings", "status": 429, "code": "insufficient_quota"}])

    report = work.process_ids(ids, 60)

    assert report.deferred_ids == set(ids) and report.failed == 0
    assert server.stats.embedding_attempts == 1  # no retry, no item-by-item fallback
    states = item_states(admin, ids)
    for item_id in ids:
        state = states[item_id]
        assert (state["status"], state["attempts"]) == ("pending", 0)  # waits, charged nothing
        assert "insufficient_quota" in state["last_transient_error"]
    kept = admin.execute(
        "select chunk_index, content from knowledge_chunks where knowledge_item_id = %s order by 1", (ids[0],)
    ).fetchall()
    assert kept == old_chunks
    # Claiming is paused for the whole fleet until a probe finds quota again; status says so.
    assert work.process_ids(ids, 60).backed_off is not None
    assert server.stats.embedding_attempts == 1
    providers = store.status()["providers"]
    assert [(p["provider"], p["state"]) for p in providers if p["provider"] == work.provider] == [
        (work.provider, "quota")
    ]


def test_a_failed_request_keeps_what_the_claims_other_requests_embedded(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    # 2,100 one-chunk items need two requests (2,048 inputs at most each, the first sent while the
    # rest is still being chunked, each about half); one of them runs out of quota. The items the
    # other request embedded are stored; only the rest fail, with no retry and no item-by-item
    # fallback.
    tag = uuid.uuid4().hex[:8]
    notes = [f"Note {n} of batch {tag}: the dock log is fine." for n in range(2100)]
    ids = insert_items(admin, client_id, notes)
    server.enqueue_faults(
        [
            {"endpoint": "embeddings", "delay_s": 0},
            {"endpoint": "embeddings", "status": 429, "code": "insufficient_quota"},
        ]
    )
    work = processor(store, make_embedder(), max_attempts=5)

    report = work.process_claimed(store.claim_items(work.worker, 120, len(ids), 5, item_ids=ids))

    assert server.stats.embedding_attempts == 2
    answered = server.stats.embedding_batches  # the request the server answered (inputs, tokens)
    assert len(answered) == 1 and 0 < report.done == answered[0][0] < 2048
    assert report.done + report.deferred == 2100 and report.failed == 0
    states = item_states(admin, ids)
    assert sum(1 for s in states.values() if s["status"] == "done") == report.done
    waiting = [s for s in states.values() if s["status"] == "pending"]
    assert len(waiting) == report.deferred
    assert all("insufficient_quota" in s["last_transient_error"] and s["attempts"] == 0 for s in waiting)


def test_bad_request_is_not_retried(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
    sleep: RecordingSleep,
) -> None:
    server.enqueue_faults([{"endpoint": "embeddings", "status": 400, "code": "invalid_request_error"}])
    with pytest.raises(EmbeddingError) as caught:
        make_embedder().embed(["a request the API refuses"])
    assert caught.value.retryable is False and "HTTP 400" in str(caught.value)
    assert sleep.waits == [] and server.stats.embedding_attempts == 1

    (item_id,) = insert_items(admin, client_id, ["A document the API refuses to embed, every time."])
    server.reset()
    # Refused as token ids and then as text: the input itself is refused, not its form.
    server.enqueue_faults([{"endpoint": "embeddings", "status": 400, "code": "invalid_request_error"}] * 2)
    embedder = make_embedder()
    processor(store, embedder, max_attempts=5).process_ids([item_id], 60)

    state = item_states(admin, [item_id])[item_id]
    assert (state["status"], state["attempts"]) == ("failed", 5)  # permanent: no attempts left
    assert "HTTP 400" in state["last_error"] and "invalid_request_error" in state["last_error"]
    assert server.stats.embedding_attempts == 2 and sleep.waits == []
    assert embedder.sends_token_ids  # the text was refused too: token ids stay


def test_one_rejected_packed_request_is_retried_item_by_item(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    rng = random.Random(11)
    tag = uuid.uuid4().hex[:8]
    ids = insert_items(admin, client_id, [document(rng, 2, 60, f"{tag}-{n}") for n in range(3)])
    # The packed request is refused as token ids, then as text.
    server.enqueue_faults([{"endpoint": "embeddings", "status": 400, "code": "invalid_request_error"}] * 2)

    report = processor(store, make_embedder()).process_ids(ids, 60)

    assert report.done_ids == set(ids)
    assert server.stats.embedding_attempts == 2 + 3  # the packed request twice, then one per item
    assert server.stats.embedding_token_id_inputs == server.stats.embedding_inputs  # still as ids
    for item_id in ids:
        assert_exact_chunk_set(admin, item_id)


# -- secrets ------------------------------------------------------------------------------------


def _assert_no_key(exc: BaseException, key: str) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)
    assert key not in text
    assert key[3:-4] not in text  # not even its middle


def test_a_wrong_api_key_is_reported_without_the_key(make_embedder: EmbedderFactory) -> None:
    wrong = "sk-wrong-0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c"
    with OpenAIServer(api_key=API_KEY) as strict:
        embedder = OpenAIEmbedder(
            wrong, MODEL, 1536, strict.base_url, retry=RetryPolicy(sleep=RecordingSleep())
        )
        try:
            with pytest.raises(EmbeddingError) as caught:
                embedder.embed(["who am I"])
        finally:
            embedder.close()
    assert caught.value.retryable is False and "401" in str(caught.value)
    _assert_no_key(caught.value, wrong)


@pytest.mark.parametrize("where", ["timeout", "transport", "server-error", "malformed"])
def test_retryable_failures_never_carry_the_key(
    server: OpenAIServer, make_embedder: EmbedderFactory, where: str
) -> None:
    fault = {
        "timeout": {"hang_s": 1},
        "server-error": {"status": 500},
        "malformed": {"malformed": True},
        "transport": {"hang_s": 0},  # the connection is dropped unanswered
    }[where]
    server.enqueue_faults([{"endpoint": "embeddings", **fault}] * 2)
    with pytest.raises(EmbeddingError) as caught:
        make_embedder(timeout_s=0.2, max_attempts=2).embed(["text"])
    assert caught.value.retryable is True
    _assert_no_key(caught.value, API_KEY)


def test_an_upstream_message_echoing_the_key_is_redacted(
    admin: psycopg.Connection[Any],
    client_id: uuid.UUID,
    store: PostgresStore,
    server: OpenAIServer,
    make_embedder: EmbedderFactory,
) -> None:
    echo = {
        "endpoint": "embeddings",
        "status": 401,
        "code": "invalid_api_key",
        "message": f"Authentication Error, Invalid proxy server token passed. Received API Key = {API_KEY}",
    }
    (item_id,) = insert_items(admin, client_id, ["A document embedded through a proxy."])
    server.enqueue_faults([echo])
    processor(store, make_embedder()).process_ids([item_id], 60)
    last_error = item_states(admin, [item_id])[item_id]["last_error"]
    assert "401" in last_error
    assert API_KEY not in last_error

    server.enqueue_faults([echo])
    with pytest.raises(EmbeddingError) as caught:
        make_embedder().embed(["text"])
    _assert_no_key(caught.value, API_KEY)


def test_answers_are_read_from_their_bytes_or_else_as_json() -> None:
    import base64
    import json
    from array import array

    from shared.providers.embeddings import _scan_base64_vectors

    vectors = [array("f", [float(i), 0.5, -1.0]) for i in range(3)]
    encoded = [base64.b64encode(v.tobytes()).decode() for v in vectors]
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    answer = json.dumps({"object": "list", "data": data, "model": "m", "usage": {"total_tokens": 3}})
    assert _scan_base64_vectors(answer.encode(), 3) == vectors
    # out of order, or as floats: not the plain shape, so the caller parses JSON
    shuffled = json.dumps({"data": [data[1], data[0], data[2]]}).encode()
    assert _scan_base64_vectors(shuffled, 3) is None
    floats = json.dumps({"data": [{"index": i, "embedding": list(v)} for i, v in enumerate(vectors)]})
    assert _scan_base64_vectors(floats.encode(), 3) is None
    assert _scan_base64_vectors(answer.encode(), 4) is None
