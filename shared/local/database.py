"""The database a local command uses: `DATABASE_URL`, else the embedded Postgres under `.nexus/`."""

from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.store.backends import store_from_settings, uses_supabase_api

__all__ = ["database_url", "local_settings", "open_store", "uses_supabase_api"]


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's DSN (started on first use, stopped at exit)."""
    if settings.database_url:
        return settings.database_url
    from shared.local.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.home_path / "pgdata")


def local_settings(settings: Settings) -> Settings:
    """The settings with the database local commands use filled in: DATABASE_URL or Supabase as
    set, else the embedded server's DSN (started and migrated on the way)."""
    from shared.store.migrations import migrate

    if uses_supabase_api(settings):
        return settings
    url = database_url(settings)
    if not settings.database_url:
        migrate(url)
    return settings.model_copy(update={"database_url": url})


def open_store(settings: Settings) -> Any:
    """The store for local commands, migrating the embedded database on the way."""
    return store_from_settings(local_settings(settings))
