"""Adapters from each runtime's request shape to `HttpRequest`, and back.

- AWS Lambda function URLs (payload 2.0) go through mangum to a tiny ASGI app. A body flagged
  `isBase64Encoded` must be strict base64, else the answer is a 400 problem.
- functions-framework hands a Flask request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from shared.http.messages import HttpRequest, HttpResponse
from shared.http.problems import ProblemError
from shared.runtime.events import lambda_event_kind

if TYPE_CHECKING:  # mangum is imported on a function URL's first request, not here
    from mangum.types import ASGI

Handle = Callable[[HttpRequest], HttpResponse]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def asgi_app(handle: Handle) -> ASGI:
    """An ASGI app (HTTP only) that answers every request with `handle`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = HttpRequest(scope["method"], scope["path"], headers, bytes(body), scope.get("aws.context"))
        response = handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    return app


def lambda_http_handler(handle: Handle) -> Callable[[Any, Any], dict[str, Any]]:
    """A Lambda handler for function-URL events via mangum; other events get a 400 result."""
    mangum_handler: Any = None

    def handler(event: Any, context: Any) -> dict[str, Any]:
        nonlocal mangum_handler
        if lambda_event_kind(event) != "http":
            return unrecognised_event_result("a function URL (payload 2.0) request")
        if not has_readable_body(event):
            return problem_result(
                ProblemError(400, "The request body is not valid base64, though isBase64Encoded is true.")
            )
        if mangum_handler is None:
            from mangum import Mangum
            from mangum.adapter import DEFAULT_TEXT_MIME_TYPES

            # problem+json is text too: answer it as a plain body, not base64.
            mime_types = [*DEFAULT_TEXT_MIME_TYPES, "application/problem+json"]
            mangum_handler = Mangum(asgi_app(handle), lifespan="off", text_mime_types=mime_types)
        result: dict[str, Any] = mangum_handler(event, context)
        return result

    return handler


def has_readable_body(event: dict[str, Any]) -> bool:
    """False when the event says its body is base64 but the body is not a strict base64 string."""
    body = event.get("body")
    if not event.get("isBase64Encoded") or body is None or body == "":
        return True
    if not isinstance(body, str):
        return False
    try:
        base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return False
    return True


def problem_result(problem: ProblemError) -> dict[str, Any]:
    """A Lambda function-URL result carrying `problem` as problem+json."""
    response = problem.to_response()
    return {"statusCode": response.status, "headers": response.headers, "body": response.body.decode()}


def unrecognised_event_result(expected: str) -> dict[str, Any]:
    return problem_result(ProblemError(400, f"Unrecognised event; this function expects {expected}."))


def flask_response(response: HttpResponse) -> tuple[bytes, int, dict[str, str]]:
    return response.body, response.status, response.headers


def from_flask(request: Any) -> HttpRequest:
    """Convert a functions-framework (Flask) request."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    return HttpRequest(request.method, request.path, headers, request.get_data(cache=False))
