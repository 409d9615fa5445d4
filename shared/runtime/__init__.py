"""Where the code runs: Lambda and functions-framework event shapes and adapters, the functions.

`events` tells the shapes apart (one detector), `adapters` turns each runtime's HTTP request into
`shared.http` messages and back, `context` reads the invocation's remaining time and id,
`functions` lists the deployed functions."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "EventError": "events",
    "lambda_event_kind": "events",
    "item_to_process": "events",
    "is_process_message": "events",
    "pubsub_body": "events",
    "asgi_app": "adapters",
    "lambda_http_handler": "adapters",
    "flask_response": "adapters",
    "from_flask": "adapters",
    "problem_result": "adapters",
    "unrecognised_event_result": "adapters",
    "remaining_time": "context",
    "invocation_id": "context",
    "FUNCTIONS": "functions",
    "Function": "functions",
    "function_named": "functions",
}
__all__ = [
    "FUNCTIONS",
    "EventError",
    "Function",
    "asgi_app",
    "flask_response",
    "from_flask",
    "function_named",
    "invocation_id",
    "is_process_message",
    "item_to_process",
    "lambda_event_kind",
    "lambda_http_handler",
    "problem_result",
    "pubsub_body",
    "remaining_time",
    "unrecognised_event_result",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.runtime.adapters import (
        asgi_app,
        flask_response,
        from_flask,
        lambda_http_handler,
        problem_result,
        unrecognised_event_result,
    )
    from shared.runtime.context import invocation_id, remaining_time
    from shared.runtime.events import (
        EventError,
        is_process_message,
        item_to_process,
        lambda_event_kind,
        pubsub_body,
    )
    from shared.runtime.functions import FUNCTIONS, Function, function_named
