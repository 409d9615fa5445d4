"""The seed's ingest worker, kept with its name and call for code written against the original
workers: `IngestWorker().ingest(data)` stores what the HTTP API would store for the same body."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from shared.ingest.api import IngestEndpoint

__all__ = ["IngestWorker"]


@dataclass
class IngestWorker:
    """Ingest without HTTP: settings, store and queue come from the environment unless the given
    endpoint has them. A store the worker builds itself is closed with the worker (`close()`, a
    `with` block, or when the worker is garbage-collected)."""

    endpoint: IngestEndpoint = field(default_factory=IngestEndpoint)
    _finalizer: Any = field(default=None, init=False, repr=False)

    def ingest(self, data: Any) -> dict[str, Any]:
        """Validate and store one item (`{"client_id", "source", "content", ...}`) or a batch
        (`{"items": [...]}`), queueing the new ones. Returns what the API answers: the item's
        `{"id", "status", "duplicate", ...}`, or `{"items": [...]}` for a batch. A repeat (same
        `client_id` and `external_id`) is a duplicate and stores nothing. Raises
        `shared.http.ProblemError` (`.status`, `.detail`, `.errors` naming each bad field) for
        bad input, storing nothing."""
        builds_store = self.endpoint.store is None
        try:
            results, is_batch = self.endpoint.ingest(data)
        finally:
            if builds_store and self.endpoint.store is not None and self._finalizer is None:
                self._finalizer = weakref.finalize(self, self.endpoint.store.close)
        if is_batch:
            return {"items": [result.as_dict() for result in results]}
        return results[0].as_dict()

    def close(self) -> None:
        """Close the store this worker opened (a store passed in is the caller's to close)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> IngestWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
