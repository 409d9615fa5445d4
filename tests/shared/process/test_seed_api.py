"""`process_knowledge_item(item_id)` and `process_message(message)`, the seed's processing calls,
on the real database with the local providers chosen by the environment: an item is processed
once, every message shape the seed's queue worker took is read, and bad input raises EventError
with one sentence before anything is touched."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shared.config import get_settings
from shared.errors import NexusError
from shared.process import Processor, ProcessService, process_knowledge_item, process_message
from shared.process.seed import default_service
from shared.providers.embeddings import EmbeddingError, LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.runtime.events import EventError
from shared.store import PostgresStore
from tests.conftest import load_event
from tests.support.process_helpers import sqs_event, webhook_insert_body

DOC = "\n\n".join(
    f"Part {i}. The charging dock contacts need cleaning every week; robot {i} logged fault E{i:03d}. " * 4
    for i in range(6)
)


@pytest.fixture
def local_env(function_env: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The environment of a deployed worker, with the offline providers."""
    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    function_env.setenv("NEXUS_SUMMARY_PROVIDER", "local")
    yield function_env
    processor = default_service().processor  # the settings of this test are still the current ones
    if processor is not None:
        processor.store.close()


def new_item(admin: psycopg.Connection[Any], client_id: uuid.UUID, content: str = DOC) -> uuid.UUID:
    row = admin.execute(
        "insert into knowledge_items (client_id, source, content)"
        " values (%s, 'notes/dock.md', %s) returning id",
        (client_id, content),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def stored(admin: psycopg.Connection[Any], item_id: uuid.UUID) -> dict[str, Any]:
    row = admin.execute(
        "select status, processed, attempts, chunk_count, last_error,"
        " (select count(*) from knowledge_chunks c where c.knowledge_item_id = k.id) as chunks"
        " from knowledge_items k where id = %s",
        (item_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def test_an_item_is_processed_by_id_once(
    local_env: pytest.MonkeyPatch, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    item_id = new_item(admin, client_id)

    first = process_knowledge_item(str(item_id))
    assert (first["knowledge_item_id"], first["status"], first["done"]) == (str(item_id), "done", 1)
    state = stored(admin, item_id)
    assert (state["status"], state["processed"], state["attempts"]) == ("done", True, 1)
    assert state["chunks"] == state["chunk_count"] == first["chunks"] > 0

    again = process_knowledge_item(item_id)  # a UUID works as well as its text
    assert (again["status"], again["claimed"], again["embedded_chunks"]) == ("skipped", 0, 0)
    assert stored(admin, item_id)["chunks"] == state["chunks"]


def test_the_default_service_follows_the_environment(local_env: pytest.MonkeyPatch) -> None:
    service = default_service()
    assert default_service() is service  # reused while warm
    assert service.settings is get_settings() and service.settings.embedding_provider == "local"


def _sqs_record(body: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = sqs_event([("m-1", json.dumps(body))])["Records"][0]
    return record


MESSAGE_SHAPES: dict[str, Callable[[uuid.UUID, uuid.UUID], Any]] = {
    "sqs record, item id": lambda item_id, _: _sqs_record({"knowledge_item_id": str(item_id)}),
    "sqs record, webhook body": lambda item_id, client: _sqs_record(
        webhook_insert_body(item_id, client, DOC)
    ),
    "json text": lambda item_id, _: json.dumps({"knowledge_item_id": str(item_id)}),
    "json bytes": lambda item_id, _: json.dumps({"knowledge_item_id": str(item_id)}).encode(),
    "parsed item id": lambda item_id, _: {"knowledge_item_id": str(item_id)},
    "parsed webhook body": lambda item_id, client: webhook_insert_body(item_id, client, DOC),
}


@pytest.mark.parametrize("shape", sorted(MESSAGE_SHAPES))
def test_every_message_shape_processes_its_item(
    shape: str, local_env: pytest.MonkeyPatch, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    item_id = new_item(admin, client_id)
    result = process_message(MESSAGE_SHAPES[shape](item_id, client_id))
    assert (result["knowledge_item_id"], result["status"], result["done"]) == (str(item_id), "done", 1)
    assert stored(admin, item_id)["status"] == "done"


def test_messages_that_need_no_work_are_ignored(
    local_env: pytest.MonkeyPatch, admin: psycopg.Connection[Any], client_id: uuid.UUID
) -> None:
    item_id = new_item(admin, client_id)
    unchanged = load_event("supabase_webhook_update.json")
    unchanged["record"].update(id=str(item_id), client_id=str(client_id))
    unchanged["old_record"] = dict(unchanged["record"])
    assert process_message(unchanged) == {"status": "ignored"}
    assert process_message(_sqs_record(load_event("supabase_webhook_delete.json"))) == {"status": "ignored"}
    assert stored(admin, item_id)["status"] == "pending"


@pytest.mark.parametrize(
    ("message", "sentence"),
    [
        ("not json", "The event body is not valid JSON."),
        (b"{", "The event body is not valid JSON."),
        ([{"knowledge_item_id": str(uuid.uuid4())}], "The event body must be a JSON object."),
        ({"knowledge_item_id": "item-7"}, "knowledge_item_id must be a UUID."),
        (
            {"type": "INSERT", "table": "clients", "record": {}},
            "This webhook handles the knowledge_items table",
        ),
        ({"type": "TRUNCATE"}, "type must be INSERT, UPDATE or DELETE"),
        ({"messageId": "m-1", "body": "{"}, "The event body is not valid JSON."),
        ({"messageId": "m-1"}, "The event body must be a JSON object."),
        ({"Records": [_sqs_record({"knowledge_item_id": str(uuid.uuid4())})]}, "This is an SQS batch"),
    ],
)
def test_a_bad_message_raises_one_sentence_and_touches_nothing(message: Any, sentence: str) -> None:
    # No environment at all: the message is refused before any setting is read.
    with pytest.raises(EventError) as refused:
        process_message(message)
    assert str(refused.value).startswith(sentence) and str(refused.value).endswith(".")


def test_an_item_id_that_is_not_a_uuid_raises_one_sentence() -> None:
    with pytest.raises(EventError, match=r"^knowledge_item_id must be a UUID\.$"):
        process_knowledge_item("item-7")


class _RefusingEmbedder(LocalEmbedder):
    """The local embedder, refused as an API refuses a bad input (the item's own fault)."""

    def embed(self, texts: Any, token_counts: Any = None, token_ids: Any = None) -> Any:
        raise EmbeddingError("The embeddings endpoint rejected the request (HTTP 400).", retryable=False)


def test_a_failed_item_is_reported_by_id_and_raised_for_a_message(
    local_env: pytest.MonkeyPatch, admin: psycopg.Connection[Any], client_id: uuid.UUID, store: PostgresStore
) -> None:
    service = ProcessService(get_settings(), Processor(store, _RefusingEmbedder(), LocalSummarizer()))
    by_id = new_item(admin, client_id, f"Never embedded before: {uuid.uuid4()}.")
    result = process_knowledge_item(by_id, service)
    assert (result["status"], result["failed"], result["done"]) == ("failed", 1, 0)
    state = stored(admin, by_id)
    # A refusal uses up the item's attempts: retrying the same input cannot help.
    assert (state["status"], state["attempts"]) == ("failed", 5) and "HTTP 400" in state["last_error"]

    by_message = new_item(admin, client_id, f"Never embedded before: {uuid.uuid4()}.")
    with pytest.raises(NexusError, match=f"Processing knowledge item {by_message} failed"):
        process_message({"knowledge_item_id": str(by_message)}, service)  # a queue redelivers it
    assert stored(admin, by_message)["status"] == "failed"
