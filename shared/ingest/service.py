"""The ingest service: validate items, store them once, queue the new ones.

The HTTP edge (`shared.ingest.api`) and the CLI (`nexus ingest`) both call `ingest_items`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.http.auth import Principal
from shared.http.bodies import field_errors
from shared.http.problems import FieldError, ProblemError
from shared.ingest.items import IngestBatch, IngestItem
from shared.ingest.metadata import extract_metadata
from shared.ingest.queue import ItemQueue

if TYPE_CHECKING:
    from shared.store import IngestOutcome, Store

MAX_IDEMPOTENCY_KEY_CHARS = 255


def parse_items(payload: Any, max_file_bytes: int | None = None) -> tuple[list[IngestItem], bool]:
    """Validate a decoded JSON body: one item, or `{"items": [...]}`. Returns (items, is_batch),
    each item's `content` set: a file sent as `content_base64` is checked and turned into the
    content it is stored as (`shared.ingest.documents`).

    Raises a 422 ProblemError listing every bad field (413 for a file over `max_file_bytes`).
    """
    if not isinstance(payload, dict):
        raise ProblemError(
            422, "The body must be a JSON object.", errors=[FieldError("", "body must be a JSON object.")]
        )
    try:
        if "items" in payload:
            items, is_batch = IngestBatch.model_validate(payload).items, True
        else:
            items, is_batch = [IngestItem.model_validate(payload)], False
    except ValidationError as exc:
        raise ProblemError(
            422, "Some fields are invalid; see errors.", errors=field_errors(exc), slug="invalid-fields"
        ) from None
    if any(_carries_a_file(item) for item in items):
        # imported only then: a text item's ingest (and the function's cold start) need none of it
        from shared.ingest.documents import resolve_files

        items = resolve_files(items, is_batch, max_file_bytes)
    return items, is_batch


def _carries_a_file(item: IngestItem) -> bool:
    """Whether the item needs `resolve_files`: a file, a declared type, a data URL, or no content."""
    content = item.content
    return (
        content is None
        or item.content_base64 is not None
        or item.content_type is not None
        or content.startswith("data:")
    )


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise ProblemError(
            422,
            f"The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters.",
            errors=[FieldError("Idempotency-Key", "Idempotency-Key is malformed.")],
            slug="invalid-fields",
        )
    return key


@dataclass(frozen=True)
class IngestResult:
    item_id: uuid.UUID
    status: str
    duplicate: bool
    updated: bool

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": str(self.item_id), "status": self.status, "duplicate": self.duplicate}
        if self.updated:
            body["updated"] = True
        return body


def _store_row(item: IngestItem, idempotency_key: str | None) -> dict[str, Any]:
    extracted = extract_metadata(item.text, item.source, item.content_type, item._token_estimate)
    return {
        "client_id": str(item.client_id),
        "source": item.source,
        "content": item.text,
        "metadata": item.metadata if item.metadata is not None else {},
        "external_id": item.external_id,
        "idempotency_key": idempotency_key,
        "token_estimate": extracted.token_estimate,
        "content_type": extracted.content_type,
    }


def _check_sizes(rows: list[dict[str, Any]], max_item_tokens: int, is_batch: bool) -> None:
    """A 413 naming each item whose content is estimated over `max_item_tokens` tokens."""
    prefix = "items.{}." if is_batch else ""
    errors = [
        FieldError(
            prefix.format(i) + "content",
            f"content is about {row['token_estimate']} tokens, over the {max_item_tokens}-token limit "
            "per item (NEXUS_MAX_ITEM_TOKENS); split it into several items.",
        )
        for i, row in enumerate(rows)
        if row["token_estimate"] > max_item_tokens
    ]
    if errors:
        raise ProblemError(413, "An item is too large to process; nothing was stored.", errors=errors)


def _rejection(outcomes: list[IngestOutcome], items: list[IngestItem], is_batch: bool) -> ProblemError | None:
    prefix = "items.{}." if is_batch else ""
    unknown = [o for o in outcomes if o.outcome == "unknown_client"]
    if unknown:
        errors = [
            FieldError(
                prefix.format(o.index) + "client_id",
                f"client_id {items[o.index].client_id} is not a known client.",
            )
            for o in unknown
        ]
        return ProblemError(
            422, "Unknown client_id; nothing was stored.", errors=errors, slug="unknown-client"
        )
    if any(o.outcome == "idempotency_conflict" for o in outcomes):
        return ProblemError(
            422,
            "This Idempotency-Key was already used for a different request; nothing was stored.",
            errors=[FieldError("Idempotency-Key", "Idempotency-Key was used with a different body.")],
            slug="idempotency-key-reused",
        )
    return None


def ingest_items(
    items: list[IngestItem],
    *,
    store: Store,
    queue: ItemQueue,
    principal: Principal | None = None,
    idempotency_key: str | None = None,
    is_batch: bool = False,
    max_item_tokens: int | None = None,
) -> list[IngestResult]:
    """Store `items` atomically and queue the new or changed ones.

    Idempotent: a repeat with the same idempotency key, or the same (client_id, external_id)
    and content, returns the stored item with `duplicate=True` and stores nothing.
    Raises ProblemError (403 wrong client, 413 an item's content over `max_item_tokens` by the
    ingest estimate, 422 unknown client or reused key) storing nothing.
    """
    if principal is not None:
        forbidden = [i for i, item in enumerate(items) if not principal.may_write_for(item.client_id)]
        if forbidden:
            raise ProblemError(403, "This token may not write items for another client.", slug="forbidden")
    rows = []
    for i, item in enumerate(items):
        key = None if idempotency_key is None else (f"{idempotency_key}#{i}" if is_batch else idempotency_key)
        rows.append(_store_row(item, key))
    if max_item_tokens is not None:
        _check_sizes(rows, max_item_tokens, is_batch)
    outcomes = store.ingest_items(rows)
    rejection = _rejection(outcomes, items, is_batch)
    if rejection is not None:
        raise rejection
    results = [
        IngestResult(o.item_id, o.status or "pending", o.outcome == "duplicate", o.outcome == "updated")
        for o in outcomes
        if o.item_id is not None
    ]
    queued = [r.item_id for r in results if not r.duplicate]
    if queued:
        queue.send_item_ids(queued)
    _log(items, results)
    return results


def _log(items: list[IngestItem], results: list[IngestResult]) -> None:
    from shared.logs import get_logger

    logger = get_logger()
    for item, result in zip(items, results, strict=True):
        logger.info(
            "knowledge item ingested",
            extra={
                "knowledge_item_id": str(result.item_id),
                "client_id": str(item.client_id),
                "duplicate": result.duplicate,
                "updated": result.updated,
                "chars": len(item.text),
            },
        )
