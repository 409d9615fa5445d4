"""Request bodies: JSON decoded with the right problems (415 not JSON, 400 malformed), and a
model's validation errors as the `errors` of a 422, one sentence per field."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shared.http.messages import HttpRequest
from shared.http.problems import FieldError, ProblemError

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["decode_json", "field_errors", "is_json"]


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(request: HttpRequest) -> Any:
    """The body as JSON, or a 415 (not declared JSON) or 400 (not UTF-8 JSON) problem."""
    if not is_json(request.header("content-type")):
        raise ProblemError(415, "The body must be JSON; send 'Content-Type: application/json'.")
    try:
        return json.loads(request.body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ProblemError(400, "The body is not valid UTF-8 JSON.", slug="malformed-json") from None


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """One FieldError per invalid field, named in dotted form (`items.0.client_id`)."""
    errors = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        field = f"{prefix}{path}" if path else prefix.rstrip(".")
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] == "uuid_parsing" or error["type"] == "uuid_type":
            message = "must be a UUID"
        elif error["type"] == "dict_type":
            message = "must be a JSON object"
        elif error["type"] == "extra_forbidden":
            message = "is not a known field"
        errors.append(FieldError(field, f"{field or 'body'} {message}."))
    return errors
