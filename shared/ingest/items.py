"""An item as a caller sends it, validated: what HTTP, the CLI and `shared.ingest.documents` share."""

from __future__ import annotations

import math
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

__all__ = ["MAX_BATCH_ITEMS", "IngestBatch", "IngestItem"]

MAX_BATCH_ITEMS = 100


def _check_storable(value: str) -> str:
    """Postgres text and jsonb hold neither NUL nor lone surrogates: reject them up front."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _check_json_value(value: Any, depth: int = 0) -> None:
    if depth > 64:
        raise ValueError("is nested too deeply (over 64 levels)")
    if isinstance(value, str):
        _check_storable(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or Infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key)
            _check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)


class IngestItem(BaseModel):
    """One knowledge item as a caller sends it. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    client_id: uuid.UUID
    source: str = Field(min_length=1, max_length=2048)
    content: str | None = None
    metadata: dict[str, Any] | None = None
    external_id: str | None = Field(default=None, min_length=1, max_length=512)
    # A file instead of `content`: its bytes in base64 and its type (`shared.ingest.documents`).
    content_base64: str | None = None
    content_type: str | None = Field(default=None, max_length=255)
    # A file's token estimate, from its pages or size (set by `resolve_files`; never from callers).
    _token_estimate: int | None = PrivateAttr(default=None)

    @field_validator("source", "external_id")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else _check_storable(value)

    @field_validator("content")
    @classmethod
    def _content_not_empty(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty")
        return _check_storable(value)

    @property
    def text(self) -> str:
        """The content to store (set for every item `parse_items` returns)."""
        if self.content is None:
            raise ValueError("an item's file was not resolved into its content (parse_items)")
        return self.content

    @field_validator("metadata")
    @classmethod
    def _metadata_storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_json_value(value)
        return value


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: list[IngestItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)
