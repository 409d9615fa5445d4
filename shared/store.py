"""The store: every read and write of the workers, in SQL, over one of two backends.

`PostgresStore` talks to Postgres with psycopg (`DATABASE_URL`). `SupabaseStore`
(`shared.supabase_store`) talks to PostgREST and calls the same SQL functions through `rpc`,
so both run the SQL in `infra/supabase/migrations/`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg.types.json import Jsonb

from shared.database import ConnectionHolder


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one item of an ingest call (see `ingest_knowledge_items` in the migrations)."""

    index: int
    item_id: uuid.UUID | None
    outcome: str  # created | duplicate | updated | unknown_client | idempotency_conflict
    status: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> IngestOutcome:
        item_id = row["item_id"]
        return cls(
            index=int(row["item_index"]),
            item_id=uuid.UUID(str(item_id)) if item_id is not None else None,
            outcome=str(row["outcome"]),
            status=row["item_status"],
        )


class Store(Protocol):
    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        """Store items atomically (all or, on unknown client / key conflict, none)."""
        ...

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        """Create the client when it does not exist."""
        ...

    def status(self) -> dict[str, Any]:
        """Counts per status, the oldest pending item's time, and recent failures."""
        ...


class PostgresStore:
    """The psycopg backend: one connection per process, reused across warm invocations."""

    def __init__(self, holder: ConnectionHolder) -> None:
        self.holder = holder

    def ingest_items(self, items: list[dict[str, Any]]) -> list[IngestOutcome]:
        with self.holder.connection() as conn:
            rows = conn.execute(
                "select * from public.ingest_knowledge_items(%s)", (Jsonb(items, dumps=_dumps),)
            ).fetchall()
        return sorted((IngestOutcome.from_row(row) for row in rows), key=lambda o: o.index)

    def ensure_client(self, client_id: uuid.UUID, name: str = "") -> None:
        with self.holder.connection() as conn:
            conn.execute("select public.ensure_client(%s, %s)", (client_id, name))

    def status(self) -> dict[str, Any]:
        with self.holder.connection() as conn:
            row = conn.execute("select public.knowledge_status() as status").fetchone()
        return dict(row["status"]) if row else {}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def default_store(settings: Any) -> Store:
    """The backend the settings choose: psycopg for `DATABASE_URL`, else PostgREST for Supabase."""
    from shared.errors import ConfigError

    if settings.database_url:
        return PostgresStore(ConnectionHolder(settings.database_url))
    if settings.supabase_url and settings.supabase_service_role_key:
        from shared.supabase_store import SupabaseStore

        return SupabaseStore(settings.supabase_url, settings.supabase_service_role_key)
    raise ConfigError("DATABASE_URL is not set (nor SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY).")
