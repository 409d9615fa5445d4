"""The seed's processing functions, kept with their names for code written against the original
workers: `process_knowledge_item(item_id)` and `process_message(message)`.

Both run on the production defaults: settings from the environment, the store they choose, and
one `ProcessService` per process, reused while warm as the deployed function reuses its own.
New code calls `ProcessService` (or the function's entry points) instead.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from shared.config import get_settings
from shared.process.service import ProcessService, item_result
from shared.runtime.events import EventError, item_to_process, lambda_event_kind, parse_json

__all__ = ["default_service", "process_knowledge_item", "process_message"]

_default: ProcessService | None = None
_default_lock = threading.Lock()


def default_service() -> ProcessService:
    """The service for the environment's settings: built on first use and reused while warm (one
    store connection, one set of provider clients); built again, the old store closed, once the
    settings were reloaded (`shared.config.reset_settings`)."""
    global _default
    settings = get_settings()
    with _default_lock:
        if _default is None or _default.settings is not settings:
            previous, _default = _default, ProcessService(settings)
            if previous is not None and previous.processor is not None:
                previous.processor.store.close()
        return _default


def process_knowledge_item(item_id: str | uuid.UUID, service: ProcessService | None = None) -> dict[str, Any]:
    """Process one item now, if it still needs it, and say what became of it:
    `{"knowledge_item_id", "status", "claimed", "done", "chunks", ...}` with status "done",
    "failed" (recorded; retried until NEXUS_MAX_ATTEMPTS), "released" (time ran out first: back in
    the queue), "deferred" (the provider failed or is backed off: no attempt counted) or
    "skipped" (already done, unknown, or leased by another worker).

    Idempotent: an item already done is skipped, and unchanged chunks are never embedded twice.
    Raises EventError when `item_id` is not a UUID, ConfigError for a missing or bad setting."""
    try:
        item = item_id if isinstance(item_id, uuid.UUID) else uuid.UUID(str(item_id))
    except ValueError:
        raise EventError("knowledge_item_id must be a UUID.") from None
    report = (service or default_service()).process_item(item)
    return item_result(item, report)


def process_message(message: Any, service: ProcessService | None = None) -> dict[str, Any]:
    """Process what one queue message asks for. `message` is an SQS record (`{"messageId",
    "body": "<json>"}`), its JSON body as a string, or the body already parsed: `{"knowledge_item_id"}`
    or a Supabase webhook body.

    Returns `{"status": "ignored"}` when no work is needed (a DELETE, or an UPDATE that kept the
    content), else what `process_knowledge_item` returns for the item. Raises EventError (one
    sentence) for a message of no such shape, and, like the Pub/Sub trigger, NexusError when the
    item's processing failed (recorded), so a queue redelivers the message."""
    body = _body_of(message)
    item_id = item_to_process(body)
    result = (service or default_service()).handle_message(body)
    return result if item_id is None else {"knowledge_item_id": str(item_id), **result}


def _body_of(message: Any) -> Any:
    """The body a message carries: parsed from JSON text, taken from an SQS record, or as given."""
    if isinstance(message, str | bytes):
        return parse_json(message)
    if isinstance(message, dict):
        if lambda_event_kind(message) == "sqs":
            raise EventError(
                "This is an SQS batch, not one message; pass its records one at a time, "
                "or the whole batch to the process function's handler."
            )
        if "messageId" in message:
            body = message.get("body")
            return parse_json(body) if isinstance(body, str | bytes) else body
    return message
