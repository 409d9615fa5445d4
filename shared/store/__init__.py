"""The store: every read and write of the workers, as SQL functions from `infra/supabase/migrations/`,
over one of two backends.

`store_from_settings` picks the backend, once for everyone: `PostgresStore` (psycopg,
`DATABASE_URL`) or `SupabaseStore` (PostgREST's `rpc`, `SUPABASE_URL` + `SUPABASE_SERVICE_ROLE_KEY`).
Both are a `SqlFunctionStore`, which writes each call (function, arguments, answer) once.

Modules: `rows` (the typed rows), `protocol` (`Store`), `base` (`SqlFunctionStore`), `postgres`
and `supabase` (the backends), `backends` (the choice), `copy_binary` (the binary COPY encoding),
`database` (connections), `migrations`, `vectors` (pgvector's wire formats).

Names load on first use, so importing the package costs nothing (psycopg loads with the first
name that needs it).
"""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "ChunkRecord": "rows",
    "ClaimedItem": "rows",
    "CompletedItem": "rows",
    "IngestOutcome": "rows",
    "SearchHit": "rows",
    "UsageEntry": "rows",
    "Store": "protocol",
    "SqlFunctionStore": "base",
    "PostgresStore": "postgres",
    "SupabaseError": "supabase",
    "SupabaseStore": "supabase",
    "POSTGRES": "backends",
    "SUPABASE": "backends",
    "open_connection": "backends",
    "store_backend": "backends",
    "store_from_settings": "backends",
    "uses_supabase_api": "backends",
    "copy_rows_binary": "copy_binary",
    "time_ordered_ids": "copy_binary",
    "ConnectionHolder": "database",
    "connect": "database",
    "MIGRATIONS_DIR": "migrations",
    "MigrationError": "migrations",
    "apply_migrations": "migrations",
    "find_migrations": "migrations",
    "migrate": "migrations",
    "from_pgvector_text": "vectors",
    "register_vector_type": "vectors",
    "to_pgvector_text": "vectors",
}
__all__ = [
    "MIGRATIONS_DIR",
    "POSTGRES",
    "SUPABASE",
    "ChunkRecord",
    "ClaimedItem",
    "CompletedItem",
    "ConnectionHolder",
    "IngestOutcome",
    "MigrationError",
    "PostgresStore",
    "SearchHit",
    "SqlFunctionStore",
    "Store",
    "SupabaseError",
    "SupabaseStore",
    "UsageEntry",
    "apply_migrations",
    "connect",
    "copy_rows_binary",
    "find_migrations",
    "from_pgvector_text",
    "migrate",
    "open_connection",
    "register_vector_type",
    "store_backend",
    "store_from_settings",
    "time_ordered_ids",
    "to_pgvector_text",
    "uses_supabase_api",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.store.backends import (
        POSTGRES,
        SUPABASE,
        open_connection,
        store_backend,
        store_from_settings,
        uses_supabase_api,
    )
    from shared.store.base import SqlFunctionStore
    from shared.store.copy_binary import copy_rows_binary, time_ordered_ids
    from shared.store.database import ConnectionHolder, connect
    from shared.store.migrations import (
        MIGRATIONS_DIR,
        MigrationError,
        apply_migrations,
        find_migrations,
        migrate,
    )
    from shared.store.postgres import PostgresStore
    from shared.store.protocol import Store
    from shared.store.rows import ChunkRecord, ClaimedItem, CompletedItem, IngestOutcome, SearchHit
    from shared.store.supabase import SupabaseError, SupabaseStore
    from shared.store.vectors import from_pgvector_text, register_vector_type, to_pgvector_text
