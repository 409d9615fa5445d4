"""The PostgREST backend: used when `DATABASE_URL` is absent but `SUPABASE_URL` and
`SUPABASE_SERVICE_ROLE_KEY` are set. It calls only SQL functions from the migrations, via `rpc`.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.errors import DatabaseUnavailable
from shared.store import IngestOutcome


class SupabaseStore:
    """Runs the store's SQL functions through supabase-py's `rpc` (service role key)."""

    def __init__(self, url: str, service_role_key: str, client: Any = None) -> None:
        if client is None:
            from supabase import create_client

            client = create_client(url, service_role_key)
        self.client = client

    def _rpc(self, function: str, params: dict[str, Any]) -> Any:
        from postgrest.exceptions import APIError

        try:
            return self.client.rpc(function, params).execute().data
        except APIError as exc:
            raise DatabaseUnavailable(f"Supabase rejected {function}: {exc.message}.") from None

    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        rows = self._rpc("ingest_knowledge_items", {"items": items})
        return sorted((IngestOutcome.from_row(row) for row in rows), key=lambda o: o.index)

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        self._rpc("ensure_client", {"client_id": str(client_id), "client_name": name})

    def status(self) -> dict[str, Any]:
        return dict(self._rpc("knowledge_status", {}))
