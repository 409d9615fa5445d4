"""The ingest HTTP endpoint, independent of the runtime: `HttpRequest` in, `HttpResponse` out.

`POST /api/knowledge/ingest` (or `POST /` on a function URL). Errors are RFC 9457 problem+json;
a client mistake never gets a 5xx and never stores anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import Settings, get_settings
from shared.http.auth import Principal, authenticate
from shared.http.bodies import decode_json
from shared.http.doors import answer, check_body_size, check_door
from shared.http.messages import HttpRequest, HttpResponse
from shared.ingest.queue import ItemQueue, NoQueue, SqsQueue
from shared.ingest.service import IngestResult, check_idempotency_key, ingest_items, parse_items
from shared.runtime.metrics import emit_metrics
from shared.store.backends import store_from_settings

if TYPE_CHECKING:
    from shared.store import Store

INGEST_PATHS = frozenset({"/", "/api/knowledge/ingest"})


@dataclass
class IngestEndpoint:
    """The endpoint with its collaborators; `None` means "build from settings on first use"."""

    settings: Settings | None = None
    store: Store | None = None
    queue: ItemQueue | None = None

    def _wire(self) -> tuple[Settings, Store, ItemQueue]:
        if self.settings is None:
            self.settings = get_settings()
        if self.store is None:
            self.store = store_from_settings(self.settings)
        if self.queue is None:
            self.queue = SqsQueue(self.settings.queue_url) if self.settings.queue_url else NoQueue()
        return self.settings, self.store, self.queue

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request; never raises."""
        return answer(
            lambda: self._handle(request),
            "ingest",
            internal_detail="An internal error occurred; nothing was stored.",
        )

    def _handle(self, request: HttpRequest) -> HttpResponse:
        check_door(request, INGEST_PATHS, "/api/knowledge/ingest", "Use POST to ingest knowledge items.")
        settings = self._wire()[0]
        principal = authenticate(request.header("authorization"), settings)
        check_body_size(request, settings.max_body_bytes)
        payload = decode_json(request)
        key = check_idempotency_key(request.header("idempotency-key"))
        results, is_batch = self.ingest(payload, principal=principal, idempotency_key=key)
        emit_metrics(
            {
                "ItemsIngested": sum(1 for r in results if not r.duplicate),
                "DuplicateItems": sum(1 for r in results if r.duplicate),
            },
            "ingest",
        )
        if is_batch:
            return HttpResponse.json(200, {"items": [r.as_dict() for r in results]})
        result = results[0]
        return HttpResponse.json(200 if (result.duplicate or result.updated) else 201, result.as_dict())

    def ingest(
        self, payload: Any, *, principal: Principal | None = None, idempotency_key: str | None = None
    ) -> tuple[list[IngestResult], bool]:
        """Validate and store a decoded body (one item or `{"items": [...]}`); returns the results
        and whether it was a batch. Raises ProblemError (the status and fields) storing nothing."""
        settings, store, queue = self._wire()
        items, is_batch = parse_items(payload, settings.max_file_bytes)
        results = ingest_items(
            items,
            store=store,
            queue=queue,
            principal=principal,
            idempotency_key=idempotency_key,
            is_batch=is_batch,
            max_item_tokens=settings.max_item_tokens,
        )
        return results, is_batch
