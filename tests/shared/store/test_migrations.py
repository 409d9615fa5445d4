"""`apply_migrations` and `nexus migrate` on fresh databases of the session's server.

Each test gets its own new database (dropped afterwards), so "applies everything, then nothing"
is checked from a truly empty start; roles are cluster-wide, so the first-time creation of the
Supabase roles is checked inside a rolled-back transaction with the existing roles renamed away.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from shared.store.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations, find_migrations

API_ROLES = ("anon", "authenticated", "service_role")


@pytest.fixture
def fresh_dsn(admin: psycopg.Connection[Any], pg_url: str) -> Iterator[str]:
    """A new, empty database on the session's server; dropped at the end."""
    name = f"nexus_migrations_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_url, dbname=name)
    admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def fresh(fresh_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_dsn, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of the migrations folder to edit."""
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations"))


def recorded(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return conn.execute(
        "select version, name, checksum from nexus.schema_migrations order by version"
    ).fetchall()


def table_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null as found", (name,)).fetchone()
    assert row is not None
    return bool(row["found"])


def test_applies_every_file_in_order_then_none(fresh: psycopg.Connection[Any]) -> None:
    files = sorted(MIGRATIONS_DIR.glob("*.sql"))
    assert len(files) >= 4
    assert apply_migrations(fresh) == [path.name for path in files]
    assert apply_migrations(fresh) == []
    for table in ("clients", "knowledge_items", "knowledge_chunks", "client_summaries", "system_config"):
        assert table_exists(fresh, f"public.{table}")
    assert [r["version"] for r in recorded(fresh)] == [path.name.split("_", 1)[0] for path in files]


def test_recorded_checksums_are_the_files_sha256(fresh: psycopg.Connection[Any]) -> None:
    apply_migrations(fresh)
    expected = [
        {
            "version": path.stem.split("_", 1)[0],
            "name": path.stem.split("_", 1)[1],
            "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        for path in sorted(MIGRATIONS_DIR.glob("*.sql"))
    ]
    assert recorded(fresh) == expected
    assert [m.checksum for m in find_migrations()] == [e["checksum"] for e in expected]


def test_an_edited_applied_file_is_refused_and_nothing_changes(
    fresh: psycopg.Connection[Any], migrations_copy: Path
) -> None:
    apply_migrations(fresh, directory=migrations_copy)
    before = recorded(fresh)
    edited = sorted(migrations_copy.glob("*.sql"))[1]
    edited.write_text(edited.read_text() + "\ncreate table public.sneaky_edit (id int);\n")
    (migrations_copy / "29990101000000_new_table.sql").write_text("create table public.new_table (id int);\n")
    with pytest.raises(MigrationError, match=re.escape(edited.name)) as raised:
        apply_migrations(fresh, directory=migrations_copy)
    assert "changed after it was applied" in str(raised.value)
    assert recorded(fresh) == before
    assert not table_exists(fresh, "public.sneaky_edit")
    assert not table_exists(fresh, "public.new_table")  # refused before anything new ran


def test_a_broken_new_migration_fails_naming_it_and_earlier_ones_stay(
    fresh: psycopg.Connection[Any], migrations_copy: Path
) -> None:
    apply_migrations(fresh, directory=migrations_copy)
    good = migrations_copy / "29990101000000_good.sql"
    good.write_text("create table public.good_one (id int);\n")
    broken = migrations_copy / "29990102000000_broken.sql"
    broken.write_text("create table public.half_done (id int);\nselect * from public.no_such_table;\n")
    (migrations_copy / "29990103000000_after.sql").write_text("create table public.after_broken (id int);\n")

    with pytest.raises(MigrationError, match=rf"{re.escape(broken.name)} failed: .*no_such_table"):
        apply_migrations(fresh, directory=migrations_copy)
    versions = [r["version"] for r in recorded(fresh)]
    assert versions[-1] == "29990101000000"  # the good one stayed applied and recorded
    assert table_exists(fresh, "public.good_one")
    assert not table_exists(fresh, "public.half_done")  # the broken file's transaction rolled back
    assert not table_exists(fresh, "public.after_broken")  # nothing after it ran

    broken.write_text("create table public.half_done (id int);\n")
    assert apply_migrations(fresh, directory=migrations_copy) == [broken.name, "29990103000000_after.sql"]
    assert table_exists(fresh, "public.after_broken")


def test_file_without_a_timestamp_is_refused(fresh: psycopg.Connection[Any], migrations_copy: Path) -> None:
    (migrations_copy / "add_things.sql").write_text("create table public.things (id int);\n")
    with pytest.raises(MigrationError, match=re.escape("add_things.sql")):
        apply_migrations(fresh, directory=migrations_copy)
    assert not table_exists(fresh, "nexus.schema_migrations")  # refused before touching the database


def api_roles(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "select oid, rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles where rolname = any(%s)",
        (list(API_ROLES),),
    ).fetchall()
    return {row["rolname"]: row for row in rows}


def test_applies_where_the_supabase_roles_already_exist(fresh: psycopg.Connection[Any]) -> None:
    existing = api_roles(fresh)
    assert set(existing) == set(API_ROLES)  # the session database created them; roles are cluster-wide
    apply_migrations(fresh)
    assert api_roles(fresh) == existing  # kept as they were, not re-created


def test_creates_the_supabase_roles_where_they_are_missing(fresh: psycopg.Connection[Any]) -> None:
    """On a bare Postgres the roles are created; checked in a transaction that is rolled back,
    with the cluster's existing roles renamed out of the way meanwhile (role DDL is transactional)."""
    existing = api_roles(fresh)
    with fresh.transaction(force_rollback=True):
        for role in API_ROLES:
            fresh.execute(
                sql.SQL("alter role {} rename to {}").format(
                    sql.Identifier(role), sql.Identifier(f"{role}_saved_{uuid.uuid4().hex[:8]}")
                )
            )
        assert api_roles(fresh) == {}
        applied = apply_migrations(fresh)
        assert len(applied) == len(find_migrations())
        created = api_roles(fresh)
        assert set(created) == set(API_ROLES)
        assert all(created[r]["oid"] != existing[r]["oid"] for r in API_ROLES)  # new roles
        assert not any(created[r]["rolcanlogin"] for r in API_ROLES)
        assert created["service_role"]["rolbypassrls"] and not created["authenticated"]["rolbypassrls"]
        grants = fresh.execute(
            "select has_table_privilege('authenticated', 'public.knowledge_items', 'select') as user_reads,"
            " has_table_privilege('anon', 'public.knowledge_items', 'select') as anon_reads"
        ).fetchone()
        assert grants == {"user_reads": True, "anon_reads": False}
    assert api_roles(fresh) == existing  # rolled back: the cluster's roles are untouched


def nexus_migrate(dsn: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_")) and name != "DATABASE_URL"
    }
    env["DATABASE_URL"] = dsn
    nexus = Path(sys.executable).parent / "nexus"
    return subprocess.run(
        [str(nexus), "migrate"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_nexus_migrate_applies_then_reports_up_to_date(
    fresh_dsn: str, fresh: psycopg.Connection[Any], tmp_path: Path
) -> None:
    names = [path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]
    first = nexus_migrate(fresh_dsn, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {len(names)} migration(s)", *(f"  {n}" for n in names)]
    assert [r["version"] for r in recorded(fresh)] == [n.split("_", 1)[0] for n in names]

    second = nexus_migrate(fresh_dsn, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["applied 0 migration(s)", "database is up to date"]
