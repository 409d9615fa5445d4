"""RFC 9457 problem details: every client mistake answers `application/problem+json`.

`ProblemError` is raised anywhere on a request path; the entry point turns it into the response,
so the mapping from a mistake to its status lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from shared.http.messages import HttpResponse

PROBLEM_TYPE_BASE = "https://nexus-workers.dev/problems/"

# Fixed titles (RFC 9110 wording): http.HTTPStatus renamed some phrases in Python 3.13, and
# clients switch on `type`, so neither may depend on the runtime's Python version.
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class FieldError:
    """One bad field: `field` in dotted form (`items.0.client_id`), `detail` one sentence."""

    field: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        pointer = "#/" + "/".join(self.field.split(".")) if self.field else "#"
        return {"field": self.field, "pointer": pointer, "detail": self.detail}


class ProblemError(Exception):
    """Raised anywhere on a request path to answer with a problem+json response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        slug: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.slug = slug

    def to_response(self) -> HttpResponse:
        title = _TITLES.get(self.status) or HTTPStatus(self.status).phrase
        slug = self.slug or title.lower().replace(" ", "-")
        payload: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + slug,
            "title": title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            payload["errors"] = [error.as_dict() for error in self.errors]
        response = HttpResponse.json(self.status, payload, "application/problem+json")
        response.headers.update(self.headers)
        return response
