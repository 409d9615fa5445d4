"""Delivery is at-least-once everywhere: repeated, concurrent and mixed deliveries of the same item,
concurrent sweepers, poison items, partial queue failures, and re-ingest must each give one chunk
set, one embedding pass and no second payment for unchanged text.

Real parts only: a fresh migrated database per test (so a sweep sees only the test's items), the
real entry points (Lambda handler fed function-URL, SQS and EventBridge events; functions-framework's
Pub/Sub target), and real HTTP to the local OpenAI-compatible server, whose counters are the
witness for "embedded once".
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import ModuleType
from typing import Any, Self

import psycopg
import pytest
from cloudevents.http import CloudEvent

from shared.config import load_settings, reset_settings
from shared.process import ProcessingReport, Processor
from shared.process.service import ProcessService
from shared.providers.embeddings import LocalEmbedder, OpenAIEmbedder, RetryPolicy
from shared.providers.summaries import LocalSummarizer, OpenAISummarizer
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore
from shared.text.chunking import split_text
from tests.conftest import API_KEY, load_event, load_function
from tests.support.openai_server import OpenAIError, OpenAIServer, _Handler, _Response, cl100k
from tests.support.process_helpers import (
    assert_exact_chunk_set,
    document,
    function_url_event,
    insert_items,
    item_states,
    new_context,
    paragraph,
    pass_time,
    sqs_event,
    webhook_insert_body,
)

WEBHOOK_SECRET = "webhook-secret-for-tests-0123456789"
OPENAI_KEY = "sk-local-at-least-once"
POISON = "POISON-8d1f0c"


# -- a server that refuses one item's text -------------------------------------------------------


def _mentions_poison(raw: bytes) -> bool:
    """Whether a request body carries POISON, as text or inside an input sent as token ids."""
    if POISON.encode() in raw:
        return True
    try:
        inputs = json.loads(raw).get("input")
    except (ValueError, AttributeError):
        return False
    ids = [i for i in inputs if isinstance(i, list)] if isinstance(inputs, list) else []
    return any(POISON in cl100k().decode(i) for i in ids)


class PoisonOpenAIServer(OpenAIServer):
    """The local server plus one test-only option: any embeddings request whose inputs contain
    POISON (as text or as token ids) is refused with `poison_status` (400: permanent, as for an
    input OpenAI rejects; 500: transient-looking, as for an input that keeps crashing the service).
    Everything else, stats included, is the shared server's behaviour."""

    poison_status = 400
    poison_chat = False  # also refuse chat requests that mention POISON (summaries)

    def start(self) -> Self:
        super().start()
        outer = self

        class PoisonHandler(_Handler):
            def _answer_openai(self, method: str, path: str, raw: bytes) -> _Response | None:
                endpoints = {"/v1/embeddings": "embeddings"}
                if outer.poison_chat:
                    endpoints["/v1/chat/completions"] = "chat"
                if method != "POST" or path not in endpoints or not _mentions_poison(raw):
                    return super()._answer_openai(method, path, raw)
                state = self.server.state
                with state.handling(endpoints[path]):
                    error = OpenAIError(
                        outer.poison_status,
                        "This input cannot be embedded (refused by the test server).",
                        "invalid_request_error" if outer.poison_status < 500 else "server_error",
                        code="invalid_input" if outer.poison_status < 500 else None,
                    )
                    state.record_rejection(endpoints[path], error)
                    return _Response.json(error.status, error.body())

        assert self._httpd is not None
        self._httpd.RequestHandlerClass = PoisonHandler
        return self


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running_server() -> Iterator[PoisonOpenAIServer]:
    with PoisonOpenAIServer(latency_ms=0) as server:
        yield server


@pytest.fixture
def server(running_server: PoisonOpenAIServer) -> PoisonOpenAIServer:
    running_server.reset()
    running_server.latency_ms = 0
    running_server.poison_status = 400
    return running_server


@pytest.fixture
def env(function_env: pytest.MonkeyPatch, db_url: str, server: PoisonOpenAIServer) -> pytest.MonkeyPatch:
    """A deployed function's environment, on the test's database and the local OpenAI server."""
    function_env.setenv("DATABASE_URL", db_url)
    function_env.setenv("NEXUS_WEBHOOK_SECRET", WEBHOOK_SECRET)
    function_env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    function_env.setenv("OPENAI_BASE_URL", server.base_url)
    function_env.setenv("NEXUS_SUMMARY_PROVIDER", "local")
    reset_settings()
    return function_env


@pytest.fixture
def functions() -> Iterator[Callable[[str], ModuleType]]:
    """Loads function modules (each its own service and connection, like separate Lambda
    sandboxes) and closes their connections afterwards."""
    loaded: list[ModuleType] = []

    def load(name: str) -> ModuleType:
        module = load_function(name)
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        owner = getattr(module, "service", None) or getattr(module, "endpoint", None)
        store = getattr(getattr(owner, "processor", None), "store", None) or getattr(owner, "store", None)
        if store is not None:
            store.close()


@pytest.fixture
def stores(db_url: str) -> Iterator[Callable[[], PostgresStore]]:
    made: list[PostgresStore] = []

    def make() -> PostgresStore:
        made.append(PostgresStore(ConnectionHolder(db_url)))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def embedders(server: PoisonOpenAIServer) -> Iterator[Callable[[], OpenAIEmbedder]]:
    made: list[OpenAIEmbedder] = []

    def make() -> OpenAIEmbedder:
        retry = RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.005)
        made.append(OpenAIEmbedder(OPENAI_KEY, base_url=server.base_url, retry=retry))
        return made[-1]

    yield make
    for embedder in made:
        embedder.close()


# -- invoking the real entry points --------------------------------------------------------------


def in_own_loop(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a Lambda invocation on this thread with its own event loop (mangum needs one; each
    thread stands for a separate Lambda sandbox)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return call()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def invoke(module: ModuleType, event: dict[str, Any]) -> dict[str, Any]:
    """One Lambda invocation of `module`'s handler, on a fresh thread with its own event loop, so
    the calling thread's event loop is left alone."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(in_own_loop, lambda: module.handler(event, new_context())).result()


def webhook_event(item_id: uuid.UUID, client_id: uuid.UUID, content: str) -> dict[str, Any]:
    return function_url_event(webhook_insert_body(item_id, client_id, content), WEBHOOK_SECRET)


def http_body(result: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(result["body"]))


def ingest(module: ModuleType, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    result = invoke(module, function_url_event(body, API_KEY, "/api/knowledge/ingest"))
    return int(result["statusCode"]), http_body(result)


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Start the calls at the same moment on their own threads; return their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def client_summary(db: psycopg.Connection[Any], client_id: uuid.UUID) -> dict[str, Any] | None:
    return db.execute(
        "select summary, item_count, version from client_summaries where client_id = %s", (client_id,)
    ).fetchone()


def item_tokens(db: psycopg.Connection[Any], item_id: uuid.UUID) -> tuple[int, int]:
    row = db.execute(
        "select chunk_count, token_count from knowledge_items where id = %s", (item_id,)
    ).fetchone()
    assert row is not None
    return int(row["chunk_count"]), int(row["token_count"])


# -- the same item, delivered many times ---------------------------------------------------------


def test_same_webhook_delivered_five_times_concurrently(
    env: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    functions: Callable[[str], ModuleType],
) -> None:
    content = document(random.Random(5), 4, 130, uuid.uuid4().hex)
    (item_id,) = insert_items(db, db_client, [content])
    server.latency_ms = 100  # the first delivery is still embedding when the others arrive
    sandboxes = [functions("process") for _ in range(5)]
    event = webhook_event(item_id, db_client, content)

    results = run_together(
        [partial(in_own_loop, partial(m.handler, event, new_context())) for m in sandboxes]
    )

    assert [r["statusCode"] for r in results] == [200] * 5
    assert sorted(http_body(r)["status"] for r in results) == ["done"] + ["skipped"] * 4
    chunks, tokens = item_tokens(db, item_id)
    assert chunks == 4 and assert_exact_chunk_set(db, item_id) == 4
    stats = server.stats
    assert (stats.embedding_requests, stats.embedding_inputs, stats.embedding_tokens) == (1, chunks, tokens)
    summary = client_summary(db, db_client)
    assert summary is not None and (summary["item_count"], summary["version"]) == (1, 1)

    # Later redeliveries find the item done: no work, no request, no second summary update.
    server.reset()
    later = [invoke(m, event) for m in sandboxes]
    assert {http_body(r)["status"] for r in later} == {"skipped"}
    assert server.stats.embedding_attempts == 0
    assert client_summary(db, db_client) == summary


def test_every_trigger_at_once_for_one_item(
    env: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    functions: Callable[[str], ModuleType],
) -> None:
    """Webhook (twice), SQS, the scheduled sweep and a Pub/Sub push race for the same new item."""
    content = document(random.Random(6), 3, 130, uuid.uuid4().hex)
    (item_id,) = insert_items(db, db_client, [content])
    server.latency_ms = 100
    webhook = webhook_insert_body(item_id, db_client, content)
    message = base64.b64encode(json.dumps({"knowledge_item_id": str(item_id)}).encode()).decode()
    cloud = load_event("pubsub_cloudevent.json")
    cloud["data"]["message"]["data"] = message
    attributes = {k: v for k, v in cloud.items() if k != "data"}
    a, b, c, d, e = (functions("process") for _ in range(5))

    results = run_together(
        [
            lambda: in_own_loop(lambda: a.handler(webhook_event(item_id, db_client, content), new_context())),
            lambda: in_own_loop(lambda: b.handler(webhook_event(item_id, db_client, content), new_context())),
            lambda: c.handler(sqs_event([("m-1", json.dumps(webhook))]), new_context()),
            lambda: d.handler(load_event("eventbridge_scheduled.json"), new_context()),
            lambda: e.pubsub(CloudEvent(attributes, cloud["data"])),
        ]
    )

    assert [r["statusCode"] for r in results[:2]] == [200, 200]
    assert results[2] == {"batchItemFailures": []}
    assert results[3]["status"] == "ok"
    assert results[4]["status"] in {"done", "skipped"}
    assert_exact_chunk_set(db, item_id)
    chunks, tokens = item_tokens(db, item_id)
    stats = server.stats
    assert (stats.embedding_inputs, stats.embedding_tokens) == (chunks, tokens)
    assert stats.embedding_attempts == stats.embedding_requests == 1
    assert db.execute("select attempts from knowledge_items where id = %s", (item_id,)).fetchone() == {
        "attempts": 1
    }


# -- concurrent sweepers --------------------------------------------------------------------------


def sweep_until_finished(processor: Processor) -> ProcessingReport:
    """Sweep, as successive scheduled invocations would, until no item is pending or in flight."""
    total = ProcessingReport()
    while True:
        total.merge(processor.sweep(lambda: 60.0))
        counts = processor.store.status()["counts"]
        if not counts.get("pending") and not counts.get("processing"):
            return total


def test_four_concurrent_sweepers_process_each_of_300_items_exactly_once(
    db: psycopg.Connection[Any],
    server: PoisonOpenAIServer,
    stores: Callable[[], PostgresStore],
    embedders: Callable[[], OpenAIEmbedder],
) -> None:
    rng = random.Random(300)
    clients = [uuid.uuid4() for _ in range(3)]
    for client_id in clients:
        db.execute("insert into clients (id) values (%s)", (client_id,))
    tag = uuid.uuid4().hex[:8]
    contents = [document(rng, rng.randint(1, 3), rng.randint(40, 150), f"{tag}-{n}") for n in range(300)]
    ids: list[uuid.UUID] = []
    for n, client_id in enumerate(clients):
        ids += insert_items(db, client_id, contents[n::3])
    expected_chunks = sum(len(split_text(c, 350, 0)) for c in contents)
    server.latency_ms = 5
    # Small claims (~12,000 characters each) so the sweepers interleave over many batches.
    sweepers = [
        Processor(stores(), embedders(), LocalSummarizer(), batch_tokens=3000, worker=f"sweeper-{n}")
        for n in range(4)
    ]

    reports = run_together([partial(sweep_until_finished, p) for p in sweepers])

    assert sum(r.done for r in reports) == 300 and sum(r.claimed for r in reports) == 300
    assert sum(len(r.done_ids) for r in reports) == len(set().union(*(r.done_ids for r in reports))) == 300
    assert all(r.failed == r.lost == 0 for r in reports)
    assert sum(1 for r in reports if r.done) >= 2, [r.done for r in reports]  # they really competed
    states = item_states(db, ids)
    assert {s["status"] for s in states.values()} == {"done"}
    assert {s["attempts"] for s in states.values()} == {1}  # each item claimed exactly once
    assert sum(assert_exact_chunk_set(db, item_id) for item_id in ids) == expected_chunks
    stats = server.stats
    assert stats.embedding_inputs == expected_chunks  # every distinct chunk embedded exactly once
    assert stats.embedding_attempts == stats.embedding_requests
    assert db.execute("select count(*) as n from knowledge_chunks").fetchone() == {"n": expected_chunks}
    # Folding is optimistic: each item's summary is counted in its client's summary at most once.
    for client_id in clients:
        folded = db.execute(
            "select count(*) filter (where summary_folded) as n from knowledge_items where client_id = %s",
            (client_id,),
        ).fetchone()
        summary = client_summary(db, client_id)
        assert summary is not None and folded is not None and summary["item_count"] == folded["n"]


def test_a_sweeper_finds_work_while_another_claim_is_in_flight(
    db: psycopg.Connection[Any], db_client: uuid.UUID, stores: Callable[[], PostgresStore]
) -> None:
    rng = random.Random(17)
    ids = insert_items(db, db_client, [document(rng, 1, 80, f"backlog-{n}") for n in range(20)])
    sweeper = Processor(stores(), LocalEmbedder(), LocalSummarizer())
    with db.transaction():  # another invocation's claim of one item's worth, not yet committed
        held = db.execute(
            "select id from claim_knowledge_items('other-invocation', 60, 2000, 5, null, 100)"
        ).fetchall()
        assert len(held) == 1
        report = sweeper.sweep(lambda: 60.0)
    # Everything but the held claim (a claim may also hold the row where its budget ran out).
    assert report.claimed >= len(ids) - 2, report.claimed


# -- poison items ----------------------------------------------------------------------------------


def _poison_batch(db: psycopg.Connection[Any], client_id: uuid.UUID) -> tuple[list[uuid.UUID], uuid.UUID]:
    rng = random.Random(13)
    tag = uuid.uuid4().hex[:8]
    contents = [document(rng, 2, 60, f"{tag}-{n}") for n in range(10)]
    contents.insert(4, document(rng, 2, 60, f"{tag} {POISON}"))
    ids = insert_items(db, client_id, contents)
    return [i for n, i in enumerate(ids) if n != 4], ids[4]


def _sweep_until_idle(processor: Processor, db: psycopg.Connection[Any], limit: int = 20) -> int:
    """Sweep, letting two minutes pass after each (the fleet's probe and the items' deferrals
    come due), until a sweep claims nothing and finds no back-off; returns how many did work."""
    for sweep in range(limit):
        report = processor.sweep(lambda: 60.0)
        if report.claimed == 0 and report.backed_off is None:
            return sweep
        pass_time(db, 130)
    raise AssertionError(f"still claiming after {limit} sweeps")


POISON_KINDS = [
    pytest.param(400, id="rejected-input"),
    pytest.param(
        500,
        id="input-that-keeps-failing",
    ),
]


@pytest.mark.parametrize("poison_status", POISON_KINDS)
def test_poison_item_fails_after_max_attempts_while_the_others_finish(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    stores: Callable[[], PostgresStore],
    embedders: Callable[[], OpenAIEmbedder],
    poison_status: int,
) -> None:
    server.poison_status = poison_status
    settings = load_settings({"NEXUS_MAX_ATTEMPTS": "3", "NEXUS_RETRY_BASE_SECONDS": "0"})
    healthy, poison = _poison_batch(db, db_client)
    processor = Processor(
        stores(),
        embedders(),
        LocalSummarizer(),
        max_attempts=settings.max_attempts,
        retry_base_s=settings.retry_base_s,
    )

    _sweep_until_idle(processor, db)

    states = item_states(db, [*healthy, poison])
    assert [states[i]["status"] for i in healthy] == ["done"] * len(healthy)
    for item_id in healthy:
        assert_exact_chunk_set(db, item_id)
    assert states[poison]["status"] == "failed"
    assert states[poison]["attempts"] == 3
    assert f"HTTP {poison_status}" in states[poison]["last_error"]
    assert db.execute(
        "select count(*) as n from knowledge_chunks where knowledge_item_id = %s", (poison,)
    ).fetchone() == {"n": 0}
    # Once failed for good, no later sweep claims it again.
    server.reset()
    assert processor.sweep(lambda: 60.0).claimed == 0
    assert server.stats.embedding_attempts == 0


def test_an_input_the_chat_endpoint_keeps_failing_is_charged_once_the_provider_answers_others(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    stores: Callable[[], PostgresStore],
) -> None:
    server.poison_status, server.poison_chat = 500, True
    healthy, poison = _poison_batch(db, db_client)
    summarizer = OpenAISummarizer(
        OPENAI_KEY, base_url=server.base_url, retry=RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.005)
    )
    processor = Processor(stores(), LocalEmbedder(), summarizer, max_attempts=3, retry_base_s=0)
    try:
        sweeps = _sweep_until_idle(processor, db)
    finally:
        summarizer.close()
        server.poison_chat = False

    states = item_states(db, [*healthy, poison])
    assert [states[i]["status"] for i in healthy] == ["done"] * len(healthy)
    # Given back (uncharged) while it could be the provider's fault; charged once the provider
    # had answered others since, until its attempts ran out.
    assert (states[poison]["status"], states[poison]["attempts"]) == ("failed", 3)
    assert "HTTP 500" in states[poison]["last_error"] and states[poison]["transient_failures"] >= 1
    assert sweeps < 10


def _sqs_messages(healthy: list[uuid.UUID], poison: uuid.UUID) -> list[tuple[str, str]]:
    messages = [(f"ok-{n}", json.dumps({"knowledge_item_id": str(i)})) for n, i in enumerate(healthy)]
    messages += [
        ("bad-json", '{"knowledge_item_id": '),
        ("poison", json.dumps({"knowledge_item_id": str(poison)})),
        ("repeat", json.dumps({"knowledge_item_id": str(healthy[0])})),  # the queue delivered it twice
        ("delete", json.dumps(load_event("supabase_webhook_delete.json"))),  # needs no work
    ]
    random.Random(2).shuffle(messages)
    return messages


def _failed_messages(result: dict[str, Any]) -> list[str]:
    return sorted(f["itemIdentifier"] for f in result["batchItemFailures"])


def test_sqs_batch_reports_only_the_bad_message_and_the_poison(
    env: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    functions: Callable[[str], ModuleType],
) -> None:
    healthy, poison = _poison_batch(db, db_client)
    healthy = healthy[:4]

    result = invoke(functions("process"), sqs_event(_sqs_messages(healthy, poison)))

    assert _failed_messages(result) == ["bad-json", "poison"]
    for item_id in healthy:
        assert_exact_chunk_set(db, item_id)
    state = item_states(db, [poison])[poison]
    assert state["status"] == "failed" and "HTTP 400" in state["last_error"]


def test_sqs_batch_hit_by_5xx_leaves_its_items_to_the_sweep_which_isolates_the_poison(
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    stores: Callable[[], PostgresStore],
    embedders: Callable[[], OpenAIEmbedder],
) -> None:
    server.poison_status = 500
    healthy, poison = _poison_batch(db, db_client)
    healthy = healthy[:4]
    # The service with fast embedding retries (a collaborator is a constructor parameter).
    processor = Processor(stores(), embedders(), LocalSummarizer(), max_attempts=3, retry_base_s=0)
    service = ProcessService(processor=processor)

    result = service.handle_sqs(sqs_event(_sqs_messages(healthy, poison)), new_context())

    # A 5xx is the provider's, as far as anyone can tell yet: nothing is charged, nothing is left
    # to SQS redeliveries (which would end in the dead-letter queue); the items wait, pending.
    assert _failed_messages(result) == ["bad-json"]
    states = item_states(db, [*healthy, poison])
    assert {(s["status"], s["attempts"], s["transient_failures"]) for s in states.values()} == {
        ("pending", 0, 1)
    }

    _sweep_until_idle(processor, db)

    for item_id in healthy:
        assert_exact_chunk_set(db, item_id)
    state = item_states(db, [poison])[poison]
    assert (state["status"], state["attempts"]) == ("failed", 3) and "HTTP 500" in state["last_error"]


# -- no paying twice -------------------------------------------------------------------------------


def test_reingest_of_an_unchanged_item_costs_no_embedding_tokens(
    env: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    functions: Callable[[str], ModuleType],
) -> None:
    ingest_fn, process = functions("ingest"), functions("process")
    content = document(random.Random(21), 3, 130, uuid.uuid4().hex)
    body = {"client_id": str(db_client), "source": "notes/plan.md", "content": content, "external_id": "plan"}
    status, created = ingest(ingest_fn, body)
    assert status == 201
    item_id = uuid.UUID(created["id"])
    assert http_body(invoke(process, webhook_event(item_id, db_client, content)))["status"] == "done"
    first = server.stats
    assert first.embedding_tokens > 0
    server.reset()

    # The same document again: a duplicate; redeliveries of every kind find nothing to do.
    status, again = ingest(ingest_fn, body)
    assert (status, again["id"], again["duplicate"]) == (200, str(item_id), True)
    assert http_body(invoke(process, webhook_event(item_id, db_client, content)))["status"] == "skipped"
    message = json.dumps({"knowledge_item_id": str(item_id)})
    assert invoke(process, sqs_event([("m", message)])) == {"batchItemFailures": []}
    assert invoke(process, load_event("eventbridge_scheduled.json"))["claimed"] == 0
    # Forced reprocessing, and the same text as another item: chunks reuse stored embeddings.
    db.execute("update knowledge_items set status = 'pending' where id = %s", (item_id,))
    status, copy = ingest(ingest_fn, {**body, "external_id": "plan-copy"})
    assert status == 201
    swept = invoke(process, load_event("eventbridge_scheduled.json"))

    assert (swept["done"], swept["embedded_chunks"], swept["embedded_tokens"]) == (2, 0, 0)
    assert swept["reused_chunks"] > 0
    stats = server.stats
    assert (stats.embedding_attempts, stats.embedding_tokens) == (0, 0)
    for each in (item_id, uuid.UUID(copy["id"])):
        assert assert_exact_chunk_set(db, each) == first.embedding_inputs


EDITS = {
    "replace-one-paragraph": lambda paras, fresh: [*paras[:2], fresh, *paras[3:]],
    "insert-a-paragraph-first": lambda paras, fresh: [fresh, *paras],
    "delete-a-paragraph": lambda paras, fresh: [*paras[:4], *paras[5:]],
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_item_embeds_only_its_changed_chunks(
    env: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
    db_client: uuid.UUID,
    server: PoisonOpenAIServer,
    functions: Callable[[str], ModuleType],
    edit: str,
) -> None:
    rng = random.Random(edit)
    tag = uuid.uuid4().hex[:8]
    paragraphs = [paragraph(rng, 130, f"{tag} part {n}.") for n in range(6)]
    fresh = paragraph(rng, 130, f"{tag} rewritten part.")
    old, new = "\n\n".join(paragraphs), "\n\n".join(EDITS[edit](paragraphs, fresh))
    old_chunks = {c.text for c in split_text(old, 350, 0)}
    new_chunks = split_text(new, 350, 0)
    changed = [c for c in new_chunks if c.text not in old_chunks]
    assert len(old_chunks) == 6 and len(changed) <= 1  # one paragraph per chunk, as arranged

    ingest_fn, process = functions("ingest"), functions("process")
    body = {"client_id": str(db_client), "source": "handbook.md", "content": old, "external_id": "handbook"}
    status, created = ingest(ingest_fn, body)
    item_id = uuid.UUID(created["id"])
    invoke(process, webhook_event(item_id, db_client, old))
    server.reset()

    status, updated = ingest(ingest_fn, {**body, "content": new})
    assert (status, updated["id"], updated.get("updated")) == (200, str(item_id), True)
    update = load_event("supabase_webhook_update.json")
    for record in (update["record"], update["old_record"]):
        record.update(id=str(item_id), client_id=str(db_client))
    update["record"]["content"], update["old_record"]["content"] = new, old
    result = invoke(process, function_url_event(update, WEBHOOK_SECRET))

    assert http_body(result)["status"] == "done"
    stats = server.stats
    assert stats.embedding_inputs == len(changed)
    assert stats.embedding_tokens == sum(c.token_count for c in changed)
    assert assert_exact_chunk_set(db, item_id) == len(new_chunks)
    stored = db.execute(
        "select content from knowledge_chunks where knowledge_item_id = %s order by chunk_index", (item_id,)
    ).fetchall()
    assert [r["content"] for r in stored] == [c.text for c in new_chunks]
