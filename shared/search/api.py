"""The search HTTP endpoint, independent of the runtime: `HttpRequest` in, `HttpResponse` out.

`POST /api/knowledge/search` (or `POST /` on a function URL), authenticated like ingest. Body
`{"query", "client_id"?, "k"? (1–100, default 10), "mode"? ("hybrid" | "vector" | "text")}`;
answers `200 {"hits": [...]}`, best first, each hit as `nexus search --json` prints it. A user's
JWT searches only its own client. Errors are RFC 9457 problem+json.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from shared.config import Settings, get_settings
from shared.errors import NexusError
from shared.http.auth import Principal, authenticate
from shared.http.bodies import decode_json, field_errors
from shared.http.doors import answer, check_body_size, check_door
from shared.http.messages import HttpRequest, HttpResponse
from shared.http.problems import FieldError, ProblemError
from shared.runtime.metrics import emit_metrics
from shared.store.backends import store_from_settings

if TYPE_CHECKING:
    from shared.store import Store

SEARCH_PATHS = frozenset({"/", "/api/knowledge/search"})
MAX_HITS = 100
EMBED_BUDGET_S = 20.0  # the query's embedding call, retries included (the function has 30 s)
EMBED_ATTEMPTS = 3
MAX_QUERY_CHARS = 2000  # at most 8,000 bytes of UTF-8: under the 8,191-token input limit


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(max_length=MAX_QUERY_CHARS)
    client_id: uuid.UUID | None = None
    k: StrictInt = Field(default=10, ge=1, le=MAX_HITS)
    mode: Literal["hybrid", "vector", "text"] = "hybrid"

    @field_validator("k", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        # JSON has one kind of number: 10.0 is the integer 10 (as JSON Schema says); "10" is not.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("query")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


@dataclass
class SearchEndpoint:
    """The endpoint with its collaborators; `None` means "build from settings on first use"."""

    settings: Settings | None = None
    store: Store | None = None

    def _wire(self) -> tuple[Settings, Store]:
        if self.settings is None:
            self.settings = get_settings()
        if self.store is None:
            self.store = store_from_settings(self.settings)
        return self.settings, self.store

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request; never raises."""
        return answer(
            lambda: self._handle(request),
            "search",
            internal_detail="An internal error occurred.",
            status_of=_status_of,
        )

    def _handle(self, request: HttpRequest) -> HttpResponse:
        check_door(request, SEARCH_PATHS, "/api/knowledge/search", "Use POST to search.")
        settings, store = self._wire()
        principal = authenticate(request.header("authorization"), settings)
        check_body_size(request, settings.max_body_bytes)
        asked = _parse(decode_json(request))
        client_id = _client_searched(principal, asked.client_id)
        from shared.providers.deadlines import call_scope
        from shared.search.service import search

        # the query's embedding ends well inside the function's 30 s, however slow the provider
        with call_scope(time.monotonic() + EMBED_BUDGET_S, EMBED_ATTEMPTS):
            hits = search(store, settings, asked.query, asked.k, client_id, asked.mode)
        emit_metrics({"Searches": 1, "SearchHits": len(hits)}, "search")
        return HttpResponse.json(200, {"hits": [hit.as_dict() for hit in hits]})


def _status_of(exc: NexusError) -> int:
    """A provider that failed transiently (429, 5xx, timeout, out of time) is 503: try again; one
    that refused the query, 502; anything else what the error says."""
    from shared.providers.embeddings import EmbeddingError

    if isinstance(exc, EmbeddingError):
        return 503 if exc.retryable else 502
    return exc.status


def _parse(payload: Any) -> SearchRequest:
    if not isinstance(payload, dict):
        raise ProblemError(
            422, "The body must be a JSON object.", errors=[FieldError("", "body must be a JSON object.")]
        )
    try:
        return SearchRequest.model_validate(payload)
    except ValidationError as exc:
        raise ProblemError(
            422, "Some fields are invalid; see errors.", errors=field_errors(exc), slug="invalid-fields"
        ) from None


def _client_searched(principal: Principal, asked: uuid.UUID | None) -> uuid.UUID | None:
    """The client whose chunks the caller may search: a user's own (another's is 403); for a
    key or the service role, the one asked for, or every client."""
    if principal.client_id is None:
        return asked
    if asked is not None and asked != principal.client_id:
        raise ProblemError(
            403,
            "This token may search only its own client's knowledge.",
            errors=[FieldError("client_id", "client_id is another client's.")],
            slug="forbidden-client",
        )
    return principal.client_id
