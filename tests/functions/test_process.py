"""The process function through its real entry points, with the local (offline) providers."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import load_event, load_function

SECRET = "whsec-test-0123456789"
DOC = "\n\n".join(
    f"Section {i}. The charging dock contacts need cleaning every week, and the lidar lens every day. "
    f"Robot {i} reported a fault code E{i:03d} during the night shift." * 3
    for i in range(12)
)


@pytest.fixture
def process(function_env: pytest.MonkeyPatch) -> Iterator[Any]:
    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    function_env.setenv("NEXUS_SUMMARY_PROVIDER", "local")
    function_env.setenv("NEXUS_WEBHOOK_SECRET", SECRET)
    module = load_function("process")
    yield module
    processor = module.service.processor
    if processor is not None:
        processor.store.close()


def new_item(admin: Any, client_id: uuid.UUID, content: str = DOC) -> uuid.UUID:
    row = admin.execute(
        "insert into knowledge_items (client_id, source, content)"
        " values (%s, 'notes/dock.md', %s) returning id",
        (client_id, content),
    ).fetchone()
    return uuid.UUID(str(row["id"]))


def item_state(admin: Any, item_id: uuid.UUID) -> dict[str, Any]:
    row = admin.execute(
        "select status, processed, attempts, chunk_count, embedding_model, summary,"
        " (select count(*) from knowledge_chunks c where c.knowledge_item_id = k.id) as chunks"
        " from knowledge_items k where id = %s",
        (item_id,),
    ).fetchone()
    return dict(row)


def webhook_event(body: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    event = load_event("function_url_ingest.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/"
    event["headers"]["authorization"] = f"Bearer {secret}"
    event["body"] = json.dumps(body)
    return event


def insert_body(item_id: uuid.UUID, client_id: uuid.UUID) -> dict[str, Any]:
    body = load_event("supabase_webhook_insert.json")
    body["record"].update(id=str(item_id), client_id=str(client_id), content=DOC)
    return body


def call(process: Any, event: dict[str, Any]) -> tuple[int, Any]:
    result = process.handler(event, None)
    return result["statusCode"], json.loads(result["body"])


def test_webhook_insert_processes_the_item(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    item_id = new_item(admin, client_id)
    status, body = call(process, webhook_event(insert_body(item_id, client_id)))
    assert status == 200 and body["status"] == "done"
    state = item_state(admin, item_id)
    assert state["status"] == "done" and state["processed"] is True
    assert state["chunks"] == state["chunk_count"] > 1
    assert state["embedding_model"] == "local-hash-v1"
    assert state["summary"]
    chunks = admin.execute(
        "select chunk_index, content, client_id, vector_dims(embedding) as dims, token_count"
        " from knowledge_chunks where knowledge_item_id = %s order by chunk_index",
        (item_id,),
    ).fetchall()
    assert "".join(c["content"] for c in chunks) == DOC
    assert {c["dims"] for c in chunks} == {1536}
    assert {c["client_id"] for c in chunks} == {client_id}
    assert all(0 < c["token_count"] <= 350 for c in chunks)
    summary = admin.execute(
        "select summary, version from client_summaries where client_id = %s", (client_id,)
    )
    row = summary.fetchone()
    assert row["summary"] and row["version"] == 1


def test_webhook_needs_the_secret(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    item_id = new_item(admin, client_id)
    status, body = call(process, webhook_event(insert_body(item_id, client_id), secret="wrong"))
    assert status == 401 and body["status"] == 401
    assert item_state(admin, item_id)["status"] == "pending"


def test_webhook_redelivery_is_a_no_op(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    item_id = new_item(admin, client_id)
    event = webhook_event(insert_body(item_id, client_id))
    assert call(process, event)[1]["status"] == "done"
    first = admin.execute(
        "select id from knowledge_chunks where knowledge_item_id = %s", (item_id,)
    ).fetchall()
    status, body = call(process, event)
    assert status == 200 and body["status"] == "skipped" and body["embedded_chunks"] == 0
    again = admin.execute(
        "select id from knowledge_chunks where knowledge_item_id = %s", (item_id,)
    ).fetchall()
    assert again == first


def test_update_with_same_content_and_delete_need_no_work(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    item_id = new_item(admin, client_id)
    body = load_event("supabase_webhook_update.json")
    for record in (body["record"], body["old_record"]):
        record.update(id=str(item_id), client_id=str(client_id), content="same")
    assert call(process, webhook_event(body)) == (200, {"status": "ignored"})
    assert call(process, webhook_event(load_event("supabase_webhook_delete.json"))) == (
        200,
        {"status": "ignored"},
    )
    assert item_state(admin, item_id)["status"] == "pending"


def test_update_with_new_content_reprocesses(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    item_id = new_item(admin, client_id)
    call(process, webhook_event(insert_body(item_id, client_id)))
    admin.execute(
        "update knowledge_items set content = %s where id = %s", ("Short new text about lidar.", item_id)
    )
    assert item_state(admin, item_id)["status"] == "pending"  # the trigger resets it
    body = load_event("supabase_webhook_update.json")
    body["record"].update(id=str(item_id), client_id=str(client_id), content="Short new text about lidar.")
    body["old_record"].update(id=str(item_id), client_id=str(client_id), content=DOC)
    status, result = call(process, webhook_event(body))
    assert status == 200 and result["status"] == "done"
    rows = admin.execute(
        "select content from knowledge_chunks where knowledge_item_id = %s", (item_id,)
    ).fetchall()
    assert [r["content"] for r in rows] == ["Short new text about lidar."]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": "INSERT", "table": "other_table", "record": {"id": str(uuid.uuid4())}}, 422),
        ({"type": "TRUNCATE", "table": "knowledge_items"}, 422),
        ({"type": "INSERT", "table": "knowledge_items", "record": {"id": "not-a-uuid"}}, 422),
        ([1, 2, 3], 422),
    ],
)
def test_bad_webhook_bodies_are_4xx(process: Any, body: Any, status: int) -> None:
    code, problem = call(process, webhook_event(body))
    assert code == status and problem["status"] == status and problem["detail"]


def test_webhook_body_that_is_not_base64_is_a_400_naming_the_body(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    item_id = new_item(admin, client_id)
    event = webhook_event(insert_body(item_id, client_id))
    event["body"], event["isBase64Encoded"] = "abc", True
    code, problem = call(process, event)
    assert code == 400 and problem["detail"].startswith("The request body is not valid base64")
    assert item_state(admin, item_id)["status"] == "pending"


def test_webhook_base64_body_is_decoded(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    item_id = new_item(admin, client_id)
    event = webhook_event(insert_body(item_id, client_id))
    event["body"], event["isBase64Encoded"] = base64.b64encode(event["body"].encode()).decode(), True
    code, _ = call(process, event)
    assert code == 200
    assert item_state(admin, item_id)["status"] != "pending"


def test_sqs_batch_reports_only_the_unreadable_message(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    ids = [new_item(admin, client_id, f"Item {i}. " + DOC[:2000]) for i in range(3)]
    template = load_event("sqs_batch.json")["Records"][0]
    records = []
    for i, item_id in enumerate(ids):
        records.append(
            template | {"messageId": f"m-{i}", "body": json.dumps({"knowledge_item_id": str(item_id)})}
        )
    records.append(template | {"messageId": "m-bad", "body": "{not json"})
    records.append(template | {"messageId": "m-webhook", "body": json.dumps(insert_body(ids[0], client_id))})
    result = process.handler({"Records": records}, None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m-bad"}]}
    assert all(item_state(admin, i)["status"] == "done" for i in ids)


def test_scheduled_sweep_processes_pending_items(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    ids = [new_item(admin, client_id, f"Sweep item {i}. " + DOC[:1500]) for i in range(5)]

    class Context:
        aws_request_id = "req-sweep"

        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 60_000

    result = process.handler(load_event("eventbridge_scheduled.json"), Context())
    assert result["status"] == "ok" and result["done"] >= 5
    assert all(item_state(admin, i)["status"] == "done" for i in ids)


def test_claims_lease_for_the_remaining_time_plus_a_margin(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    from shared.config import get_settings
    from shared.process.budgets import LEASE_MARGIN_S
    from shared.store import store_from_settings

    item_id = new_item(admin, client_id)
    store = store_from_settings(get_settings())
    try:
        (claimed,) = store.claim_items("worker-a", 12.0 + LEASE_MARGIN_S, 10, 5, item_ids=[item_id])
        row = admin.execute(
            "select extract(epoch from lease_expires_at - now()) as left_s, lease_owner from knowledge_items"
            " where id = %s",
            (item_id,),
        ).fetchone()
        assert row["lease_owner"] == "worker-a"
        assert 12.0 + LEASE_MARGIN_S - 5 < float(row["left_s"]) <= 12.0 + LEASE_MARGIN_S
        assert store.claim_items("worker-b", 60, 10, 5, item_ids=[item_id]) == []  # held
        admin.execute(
            "update knowledge_items set lease_expires_at = now() - interval '1 s' where id = %s", (item_id,)
        )
        (reclaimed,) = store.claim_items("worker-b", 60, 10, 5, item_ids=[item_id])
        assert reclaimed.attempts == claimed.attempts + 1
    finally:
        store.close()


def test_unrecognised_event_is_an_error_result(process: Any) -> None:
    result = process.handler({"hello": "world"}, None)
    assert result["statusCode"] == 400
    assert "SQS" in json.loads(result["body"])["detail"]


def test_pubsub_message_body_is_processed(process: Any, admin: Any, client_id: uuid.UUID) -> None:
    item_id = new_item(admin, client_id)
    event = load_event("pubsub_cloudevent.json")
    data = json.dumps({"knowledge_item_id": str(item_id)}).encode()
    event["data"]["message"]["data"] = base64.b64encode(data).decode()

    class CloudEvent:  # the attribute the target reads, as functions-framework passes it
        def __init__(self, data: Any) -> None:
            self.data = data

    target = getattr(process.pubsub, "__wrapped__", process.pubsub)
    result = target(CloudEvent(event["data"]))
    assert result["status"] == "done"
    assert item_state(admin, item_id)["status"] == "done"


def test_one_sweep_folds_every_item_into_the_client_summary(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    ids = [
        new_item(admin, client_id, f"Note {i}. The dock {i} contacts were cleaned on shift {i}.")
        for i in range(120)
    ]

    class Context:
        aws_request_id = "req-fold"

        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 120_000

    result = process.handler(load_event("eventbridge_scheduled.json"), Context())
    assert result["status"] == "ok"
    assert all(item_state(admin, i)["status"] == "done" for i in ids)
    row = admin.execute(
        "select s.item_count, (select count(*) from knowledge_items k where k.client_id = s.client_id"
        " and not k.summary_folded) as unfolded from client_summaries s where s.client_id = %s",
        (client_id,),
    ).fetchone()
    assert row == {"item_count": 120, "unfolded": 0}


def test_webhook_with_no_time_left_to_summarise_releases_the_item(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    from shared.process.budgets import FINISH_RESERVE_S

    item_id = new_item(admin, client_id)

    class Context:  # an invocation near its end: less than the reserve for storing is left
        aws_request_id = "req-late"

        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return int((FINISH_RESERVE_S - 1) * 1000)

    result = process.handler(webhook_event(insert_body(item_id, client_id)), Context())
    body = json.loads(result["body"])
    assert result["statusCode"] == 200
    assert (body["status"], body["released"], body["done"]) == ("released", 1, 0)
    state = item_state(admin, item_id)
    assert (state["status"], state["attempts"], state["chunks"]) == ("pending", 0, 0)
    status, body = call(process, webhook_event(insert_body(item_id, client_id)))  # time enough now
    assert status == 200 and body["status"] == "done"
    assert item_state(admin, item_id)["attempts"] == 1


def test_webhook_while_the_fleet_is_backed_off_defers_the_item_without_calling_openai(
    process: Any, function_env: pytest.MonkeyPatch, db_url: str, db: Any, db_client: uuid.UUID
) -> None:
    from shared.providers.embeddings import provider_key
    from tests.support.openai_server import OpenAIServer

    # A database of its own: the session's has other tests' embedding generation (the local model).
    admin, client_id = db, db_client
    function_env.setenv("DATABASE_URL", db_url)
    item_id = new_item(admin, client_id)
    with OpenAIServer(latency_ms=0) as server:
        function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "openai")
        function_env.setenv("OPENAI_API_KEY", "sk-test-backed-off")
        function_env.setenv("OPENAI_BASE_URL", server.base_url)
        admin.execute(
            "insert into provider_backoff (provider, state, failures, opened_at, probe_at, last_error) "
            "values (%s, 'open', 3, now(), now() + interval '1 minute', 'HTTP 503')",
            (provider_key(server.base_url),),
        )
        try:
            status, body = call(process, webhook_event(insert_body(item_id, client_id)))
        finally:
            admin.execute(
                "delete from provider_backoff where provider = %s", (provider_key(server.base_url),)
            )

        assert status == 200 and body["status"] == "deferred"
        assert body["backed_off"]["state"] == "open" and body["claimed"] == 0
        assert server.stats.requests == 0
    state = item_state(admin, item_id)
    assert (state["status"], state["attempts"]) == ("pending", 0)


def test_webhook_after_the_database_dropped_the_idle_connection_still_processes(
    process: Any, admin: Any, client_id: uuid.UUID
) -> None:
    first = new_item(admin, client_id)
    assert call(process, webhook_event(insert_body(first, client_id)))[1]["status"] == "done"
    holder = process.service.processor.store.holder
    pid = holder._conn.info.backend_pid
    # A pooler or the server closes the connection while the function sits idle between calls.
    admin.execute("select pg_terminate_backend(%s, 10000)", (pid,))

    second = new_item(admin, client_id)
    status, body = call(process, webhook_event(insert_body(second, client_id)))

    assert (status, body["status"]) == (200, "done")
    assert holder._conn.info.backend_pid != pid
    assert item_state(admin, second)["attempts"] == 1
