"""Process: chunk → embed → summarise → store, for every trigger.

Lambda `handler`: a function-URL request carrying a Supabase webhook, an SQS batch, or an
EventBridge scheduled event, told apart by shape. functions-framework: `webhook` (HTTP) and
`pubsub` (CloudEvent). Importing this file reads no setting and opens no connection.
"""

from __future__ import annotations

import os
from typing import Any

from shared.http.messages import HttpResponse
from shared.process.service import ProcessService
from shared.runtime.adapters import flask_response, from_flask, lambda_http_handler, unrecognised_event_result
from shared.runtime.events import EventError, lambda_event_kind, pubsub_body

service = ProcessService()

_http = lambda_http_handler(service.handle_webhook)


def handler(event: Any, context: Any) -> dict[str, Any]:
    kind = lambda_event_kind(event)
    if kind == "http":
        return _http(event, context)
    if kind == "sqs":
        return service.handle_sqs(event, context)
    if kind == "schedule":
        return service.handle_schedule(context)
    return unrecognised_event_result("a Supabase webhook (function URL), an SQS batch or a scheduled event")


def webhook(request: Any) -> tuple[bytes, int, dict[str, str]]:
    """functions-framework HTTP target for Supabase database webhooks."""
    return flask_response(service.handle_webhook(from_flask(request)))


def sweep(request: Any) -> tuple[bytes, int, dict[str, str]]:
    """functions-framework HTTP target for Cloud Scheduler: the scheduled sweep."""
    return flask_response(HttpResponse.json(200, service.handle_schedule()))


def pubsub(cloud_event: Any) -> dict[str, Any]:
    """functions-framework CloudEvent target (Pub/Sub push of a webhook body or an item id)."""
    try:
        body = pubsub_body(cloud_event.data)
    except EventError as exc:
        return {"status": "rejected", "error": str(exc)}  # acknowledged: redelivery cannot fix it
    return service.handle_message(body)


if "AWS_LAMBDA_FUNCTION_NAME" not in os.environ:  # functions-framework needs the decorator
    try:
        import functions_framework

        pubsub = functions_framework.cloud_event(pubsub)
    except ImportError:
        pass
