"""Apply the SQL files in `infra/supabase/migrations/` in order, each once, each in a transaction.

Applied files are recorded in `nexus.schema_migrations` with their sha256; an applied file whose
bytes have changed is refused (migrations are never edited once applied — add a new one).
Concurrent runs serialise on an advisory lock, so re-running is always safe.

One exception, listed in `EARLIER_TEXTS`: four files that set `hnsw.*` on functions gained a
first block that loads pgvector in the session, so each applies on its own on Supabase (where
`postgres` is not a superuser). A database that applied one of their earlier texts is accepted
as it is: the block defines nothing, so what the earlier text created is what the new one creates.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from shared.errors import NexusError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "infra" / "supabase" / "migrations"
_LOCK_ID = 0x6E657875  # "nexu"

# sha256 of the earlier texts of files that were changed after release, by file name, each
# accepted in place of the current text (see the module docstring; never add a change that alters
# what a file creates).
EARLIER_TEXTS: dict[str, frozenset[str]] = {
    "20261125000300_ingest_and_search.sql": frozenset(
        {"8c30a61fb14049681e4bd74bc07a08510b4842a223f81422019aad1d82328fbe"}
    ),
    "20261125000400_processing.sql": frozenset(
        {"55cc2478c3914f4602516beb3050939e816e6228e801786dcbfc87bbab41863e"}
    ),
    "20261125000800_search_plan.sql": frozenset(
        {"dcaf137f321893a35244b38c51104ff2226cc9a989df0822f9ab573810b88278"}
    ),
    "20261125001000_deferred_vector_index.sql": frozenset(
        {"9357fb07992fe3a9466dcb087fc87eae2361d9895632f52c89897cdb43e89d26"}
    ),
}


class MigrationError(NexusError):
    """A migration cannot be applied; the message names the file."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    checksum: str


def find_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files, ordered by their timestamp prefix."""
    directory = directory or Path(os.environ.get("NEXUS_MIGRATIONS_DIR") or MIGRATIONS_DIR)
    if not directory.is_dir():
        raise MigrationError(f"Migrations folder {directory} does not exist.")
    found = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit():
            raise MigrationError(
                f"Migration {path.name} must start with a timestamp, e.g. 20260101000000_name.sql."
            )
        found.append(Migration(version, name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


def apply_migrations(conn: psycopg.Connection[Any], directory: Path | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the names applied now.

    Raises MigrationError naming the file when one fails (earlier files stay applied) or when an
    applied file was edited. Concurrent runs serialise on a transaction-level advisory lock, which
    (unlike a session lock) also holds behind Supabase's transaction pooler.
    """
    migrations = find_migrations(directory)
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute("create schema if not exists nexus")
        conn.execute(
            """create table if not exists nexus.schema_migrations (
                 version text primary key,
                 name text not null,
                 checksum text not null,
                 applied_at timestamptz not null default now())"""
        )
        rows = conn.execute("select version, checksum from nexus.schema_migrations").fetchall()
    applied = {row["version"]: row["checksum"] for row in rows}
    for migration in migrations:
        if migration.version in applied and not _same_text(migration, applied[migration.version]):
            raise MigrationError(
                f"Migration {migration.path.name} was changed after it was applied; "
                "restore it and put the change in a new migration."
            )
    return [name for m in migrations if m.version not in applied and (name := _apply(conn, m))]


def _same_text(migration: Migration, applied_checksum: str) -> bool:
    """Whether the applied file had this text, or an earlier one accepted in its place."""
    name = migration.path.name
    return applied_checksum == migration.checksum or applied_checksum in EARLIER_TEXTS.get(name, ())


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> str | None:
    """Apply one file in a transaction; None when a concurrent run applied it first."""
    try:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            done = conn.execute(
                "select 1 from nexus.schema_migrations where version = %s", (migration.version,)
            ).fetchone()
            if done:
                return None
            conn.execute(migration.path.read_text())  # type: ignore[call-overload]
            conn.execute(
                "insert into nexus.schema_migrations (version, name, checksum) values (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        detail = (exc.diag.message_primary or type(exc).__name__).rstrip(".")
        raise MigrationError(f"Migration {migration.path.name} failed: {detail}.") from None
    return migration.path.name


def migrate(url: str) -> list[str]:
    """Apply the pending migrations to the database at `url`; returns the files applied."""
    from shared.store.database import connect

    with connect(url, application_name="nexus-migrate") as conn:
        return apply_migrations(conn)
