"""The database a local command uses: `DATABASE_URL`, else the embedded Postgres under `.nexus/`."""

from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.store.backends import store_from_settings, uses_supabase_api

__all__ = ["database_url", "open_store", "uses_supabase_api"]


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's DSN (started on first use, stopped at exit)."""
    if settings.database_url:
        return settings.database_url
    from shared.local.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.home_path / "pgdata")


def open_store(settings: Settings) -> Any:
    """The store for local commands, migrating the embedded database on the way."""
    from shared.store.migrations import migrate

    if uses_supabase_api(settings):
        return store_from_settings(settings)
    url = database_url(settings)
    if not settings.database_url:
        migrate(url)
    return store_from_settings(settings.model_copy(update={"database_url": url}))
