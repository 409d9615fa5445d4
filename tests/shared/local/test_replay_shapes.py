"""`nexus replay` routes a recorded event by its shape: Lambda events as the handlers tell them apart
(`lambda_event_kind`), then what only replay meets (a Pub/Sub message, a bare webhook body). No
database: classification, placeholders and credentials only."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from shared.local.environment import DevCredentials
from shared.local.replay import Replay, ReplayError, classify, function_url_event, with_local_credentials

WEBHOOK = {"type": "INSERT", "table": "knowledge_items", "schema": "public", "record": {"id": "x"}}
ITEM = {"knowledge_item_id": "REPLACE_WITH_ITEM_ID"}
SQS = {"Records": [{"messageId": "1", "eventSource": "aws:sqs", "body": json.dumps(ITEM)}]}
SCHEDULE = {"detail-type": "Scheduled Event", "source": "aws.events", "resources": []}
GCAL_SCHEDULE = {**SCHEDULE, "resources": ["arn:aws:events:eu-west-1:1:rule/nexus-workers-dev-gcal-refresh"]}
PUBSUB_DATA = base64.b64encode(json.dumps(ITEM).encode()).decode()
CLOUD_EVENT = {"specversion": "1.0", "data": {"message": {"data": PUBSUB_DATA}}}
PUSH_ENVELOPE = {"message": {"data": PUBSUB_DATA}, "subscription": "projects/p/subscriptions/s"}


def _base64_request(body: str) -> dict[str, Any]:
    event = function_url_event(base64.b64encode(body.encode()).decode(), "token")
    return {**event, "isBase64Encoded": True}


@pytest.mark.parametrize(
    ("event", "kind", "function"),
    [
        (function_url_event(json.dumps(WEBHOOK), "t"), "function_url", "process"),
        (function_url_event(json.dumps(ITEM), "t"), "function_url", "process"),
        (_base64_request(json.dumps(WEBHOOK)), "function_url", "process"),
        (function_url_event('{"client_id": "c", "content": "x"}', "t"), "function_url", "ingest"),
        (function_url_event("not json", "t"), "function_url", "ingest"),
        (function_url_event(json.dumps({**ITEM, "more": 1}), "t"), "function_url", "ingest"),
        (SQS, "sqs", "process"),
        (SCHEDULE, "schedule", "process"),
        (GCAL_SCHEDULE, "schedule", "gcal_refresh"),
        (CLOUD_EVENT, "pubsub", "process"),
        (PUSH_ENVELOPE, "pubsub", "process"),
        (WEBHOOK, "webhook", "process"),
        ({**WEBHOOK, "type": "DELETE"}, "webhook", "process"),
        (ITEM, "webhook", "process"),
    ],
)
def test_each_shape_goes_to_its_function(event: Any, kind: str, function: str) -> None:
    routed = classify(event)
    assert (routed.kind, routed.function, routed.event) == (kind, function, event)


def test_function_overrides_the_choice() -> None:
    assert classify(SCHEDULE, "gcal_refresh").function == "gcal_refresh"
    assert classify(function_url_event(json.dumps(WEBHOOK), "t"), "ingest").function == "ingest"


@pytest.mark.parametrize(
    "event",
    [
        {"type": "TRUNCATE", "table": "knowledge_items"},
        {"type": "INSERT"},  # no table
        {"Records": [{"eventSource": "aws:sns"}]},
        {"Records": []},
        [WEBHOOK],
        "knowledge_item_id",
        None,
    ],
)
def test_anything_else_is_one_sentence(event: Any) -> None:
    with pytest.raises(ReplayError, match=r"^Unrecognised event: expected a function-URL request"):
        classify(event)


CREDENTIALS = DevCredentials(("local-key",), "local-secret", uuid.uuid4())


def test_a_webhook_body_is_posted_to_process_with_the_webhook_secret() -> None:
    wrapped = with_local_credentials(Replay("webhook", "process", WEBHOOK), CREDENTIALS)
    assert (wrapped.kind, wrapped.function) == ("function_url", "process")
    assert wrapped.event["headers"]["authorization"] == "Bearer local-secret"
    assert json.loads(wrapped.event["body"]) == WEBHOOK
    assert classify(wrapped.event).function == "process"  # and it reads as one again


def test_a_recorded_authorization_is_replaced_unless_kept() -> None:
    recorded = function_url_event('{"content": "x"}', "production-key")
    recorded["headers"]["Authorization"] = recorded["headers"].pop("authorization")
    replay = Replay("function_url", "ingest", recorded)
    replaced = with_local_credentials(replay, CREDENTIALS).event["headers"]
    assert [(k, v) for k, v in replaced.items() if k.lower() == "authorization"] == [
        ("authorization", "Bearer local-key")
    ]
    assert with_local_credentials(replay, CREDENTIALS, keep_auth=True).event is recorded
