"""Which store backend the settings choose, decided here only: psycopg when `DATABASE_URL` is set,
else Supabase's PostgREST API when `SUPABASE_URL` and `SUPABASE_SERVICE_ROLE_KEY` both are, else a
`ConfigError` naming the variables.

Cheap to import: the chosen backend's module is loaded when a store or connection is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.store.database import ConnectionHolder
    from shared.store.protocol import Store
    from shared.store.supabase import SupabaseStore

__all__ = [
    "POSTGRES",
    "SUPABASE",
    "open_connection",
    "store_backend",
    "store_from_settings",
    "uses_supabase_api",
]

POSTGRES: Literal["postgres"] = "postgres"
SUPABASE: Literal["supabase"] = "supabase"
DEFAULT_APPLICATION_NAME = "nexus-workers"


def uses_supabase_api(settings: Any) -> bool:
    """True when the store is Supabase's PostgREST API (no DATABASE_URL, Supabase keys set)."""
    return not settings.database_url and bool(settings.supabase_url and settings.supabase_service_role_key)


def store_backend(settings: Any) -> Literal["postgres", "supabase"]:
    """`POSTGRES` for `DATABASE_URL`, else `SUPABASE`; raises ConfigError when neither is configured."""
    if settings.database_url:
        return POSTGRES
    if uses_supabase_api(settings):
        return SUPABASE
    raise ConfigError("DATABASE_URL is not set (nor SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY).")


def open_connection(
    settings: Any, *, application_name: str = DEFAULT_APPLICATION_NAME
) -> ConnectionHolder | SupabaseStore:
    """What the chosen backend talks through: a `ConnectionHolder` for psycopg (connecting on first
    use, as `application_name`), or a `SupabaseStore` (whose `rpc` runs any SQL function)."""
    if store_backend(settings) == SUPABASE:
        return _supabase(settings)
    return _holder(settings, application_name)


def store_from_settings(settings: Any, *, application_name: str = DEFAULT_APPLICATION_NAME) -> Store:
    """The knowledge store the settings choose (see the module docstring)."""
    if store_backend(settings) == SUPABASE:
        return _supabase(settings)
    from shared.store.postgres import PostgresStore

    writers = getattr(settings, "write_connections", 2)
    return PostgresStore(_holder(settings, application_name), write_connections=writers)


def _holder(settings: Any, application_name: str) -> ConnectionHolder:
    from shared.store.database import ConnectionHolder

    return ConnectionHolder(settings.database_url, application_name)


def _supabase(settings: Any) -> SupabaseStore:
    from shared.store.supabase import SupabaseStore

    return SupabaseStore(settings.supabase_url, settings.supabase_service_role_key)
