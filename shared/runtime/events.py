"""The shapes of the events that trigger processing, and what each asks for.

- Supabase database webhook body:
  {"type": "INSERT"|"UPDATE"|"DELETE", "table", "schema", "record", "old_record"}
- SQS record body: {"knowledge_item_id": uuid} or a webhook body
- EventBridge scheduled event: {"detail-type": "Scheduled Event", …}
- Pub/Sub CloudEvent data: base64 of a webhook body or {"knowledge_item_id"}
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

ITEMS_TABLE = "knowledge_items"
WEBHOOK_TYPES = frozenset({"INSERT", "UPDATE", "DELETE"})


class EventError(ValueError):
    """The event is not one we understand; the message says what is wrong, in one sentence."""


def lambda_event_kind(event: Any) -> str | None:
    """'http' (function URL), 'sqs', 'schedule', or None for anything else."""
    if not isinstance(event, dict):
        return None
    context = event.get("requestContext")
    if isinstance(context, dict) and isinstance(context.get("http"), dict):
        return "http"
    records = event.get("Records")
    if (
        isinstance(records, list)
        and records
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    ):
        return "sqs"
    if event.get("detail-type") == "Scheduled Event" or event.get("source") == "aws.events":
        return "schedule"
    return None


def is_process_message(body: Any) -> bool:
    """True when `body` has the shape of a message for the process function: a Supabase webhook
    body (a `type` of INSERT, UPDATE or DELETE, and a `table`) or `{"knowledge_item_id"}` alone.
    The shape only; `item_to_process` checks the values."""
    if not isinstance(body, dict):
        return False
    is_item_message = set(body) == {"knowledge_item_id"}
    return is_item_message or (_is_webhook_type(body.get("type")) and "table" in body)


def _is_webhook_type(kind: Any) -> bool:
    return isinstance(kind, str) and kind in WEBHOOK_TYPES


def _item_id(value: Any, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise EventError(f"{field} must be a UUID.") from None


def item_to_process(body: Any) -> uuid.UUID | None:
    """The item a webhook or queue body asks to process, or None when no work is needed
    (DELETE, or an UPDATE that left the content unchanged). Raises EventError when malformed."""
    if not isinstance(body, dict):
        raise EventError("The event body must be a JSON object.")
    if "knowledge_item_id" in body:
        return _item_id(body["knowledge_item_id"], "knowledge_item_id")
    kind = body.get("type")
    if not _is_webhook_type(kind):
        raise EventError("type must be INSERT, UPDATE or DELETE (a Supabase database webhook body).")
    if body.get("table") != ITEMS_TABLE:
        raise EventError(f"This webhook handles the {ITEMS_TABLE} table, not {body.get('table')!r}.")
    if kind == "DELETE":
        return None  # its chunks are deleted by the foreign key's cascade
    record = body.get("record")
    if not isinstance(record, dict) or "id" not in record:
        raise EventError("record.id is missing from the webhook body.")
    old = body.get("old_record")
    content_kept = isinstance(old, dict) and old.get("content", ...) == record.get("content", ...)
    if kind == "UPDATE" and content_kept and "content" in record:
        return None
    return _item_id(record["id"], "record.id")


def parse_json(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise EventError("The event body is not valid JSON.") from None


def pubsub_body(cloud_event_data: Any) -> Any:
    """The JSON carried by a Pub/Sub CloudEvent (`data.message.data`, base64)."""
    try:
        encoded = cloud_event_data["message"]["data"]
        return parse_json(base64.b64decode(encoded, validate=True))
    except (KeyError, TypeError, binascii.Error):
        raise EventError("The CloudEvent is not a Pub/Sub message with base64 data.") from None
