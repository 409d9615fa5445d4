"""The migrations on a database shaped like Supabase's (tests/support/supabase_db.py), applied as
Supabase applies them: as `postgres`, which is not a superuser there, in one session or one
session per file, fresh or upgrading from an earlier release; on PostgreSQL 18 and 16."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.store.migrations import EARLIER_TEXTS, MigrationError, apply_migrations, find_migrations
from tests.support.supabase_db import SupabaseCluster, supabase_cluster

LOADER_END = "$pgvector$;\n\n"
RELEASED_UP_TO = "20261125000700"  # an earlier release: its database has these files applied


@pytest.fixture(scope="module", params=[18, 16], ids=lambda major: f"pg{major}")
def cluster(request: pytest.FixtureRequest) -> Iterator[SupabaseCluster]:
    with supabase_cluster(request.param) as started:
        yield started


@pytest.fixture
def database(cluster: SupabaseCluster) -> Iterator[str]:
    with cluster.database() as name:
        yield name


def earlier_text(path: Path) -> str:
    """The file as an earlier release shipped it: before the pgvector block was put first."""
    text = path.read_text()
    if path.name not in EARLIER_TEXTS:
        return text
    assert text.startswith("-- pgvector first"), path.name
    return text.split(LOADER_END, 1)[1]


def test_postgres_is_not_a_superuser_there(cluster: SupabaseCluster, database: str) -> None:
    with cluster.connect("postgres", database) as conn:
        role = conn.execute(
            "select rolsuper, rolbypassrls from pg_roles where rolname = current_user"
        ).fetchone()
        schema = conn.execute(
            "select extnamespace::regnamespace::text as s from pg_extension where extname = 'vector'"
        )
        assert role == {"rolsuper": False, "rolbypassrls": True}
        assert schema.fetchone() == {"s": "extensions"}


def test_a_new_project_applies_every_file_in_one_session(cluster: SupabaseCluster, database: str) -> None:
    with cluster.connect("postgres", database) as conn:
        applied = apply_migrations(conn)
        assert applied == [m.path.name for m in find_migrations()]
        assert apply_migrations(conn) == []


def test_each_file_applies_in_a_session_of_its_own(cluster: SupabaseCluster, database: str) -> None:
    # What psql per file, the SQL editor and a deploy of each later release do.
    for migration in find_migrations():
        with cluster.connect("postgres", database) as conn:
            conn.execute(migration.path.read_text())  # type: ignore[call-overload]


def test_an_upgrade_applies_the_rest_in_a_new_session(
    cluster: SupabaseCluster, database: str, tmp_path: Path
) -> None:
    released = [m for m in find_migrations() if m.version <= RELEASED_UP_TO]
    for migration in released:
        (tmp_path / migration.path.name).write_text(earlier_text(migration.path))
        digest = hashlib.sha256((tmp_path / migration.path.name).read_bytes()).hexdigest()
        assert digest == migration.checksum or digest in EARLIER_TEXTS[migration.path.name]
    with cluster.connect("postgres", database) as conn:
        assert len(apply_migrations(conn, tmp_path)) == len(released)
    with cluster.connect("postgres", database) as conn:  # the next release's deploy: a new session
        rest = apply_migrations(conn)
    assert rest == [m.path.name for m in find_migrations() if m.version > RELEASED_UP_TO]


def test_a_changed_file_is_still_refused(cluster: SupabaseCluster, database: str, tmp_path: Path) -> None:
    for migration in find_migrations():
        shutil.copy(migration.path, tmp_path)
    with cluster.connect("postgres", database) as conn:
        apply_migrations(conn, tmp_path)
    edited = tmp_path / "20261125000800_search_plan.sql"
    edited.write_text(earlier_text(edited) + "\n-- an edit\n")
    with cluster.connect("postgres", database) as conn, pytest.raises(MigrationError, match="was changed"):
        apply_migrations(conn, tmp_path)


def test_a_pgvector_older_than_0_8_is_named_in_one_sentence(cluster: SupabaseCluster, database: str) -> None:
    with cluster.connect("supabase_admin", database) as admin:
        # Only 0.8.5's install script ships in the wheel: pretend the project has an older one.
        admin.execute("update pg_extension set extversion = '0.7.4' where extname = 'vector'")
    with cluster.connect("postgres", database) as conn, pytest.raises(MigrationError) as refused:
        apply_migrations(conn)
    message = str(refused.value)
    assert "pgvector 0.7.4 is installed, and Nexus Workers needs 0.8.0 or later" in message
    assert message.endswith("run alter extension vector update.") and "\n" not in message  # no SQL context


def test_the_api_roles_reach_only_what_the_contract_allows(cluster: SupabaseCluster, database: str) -> None:
    with cluster.connect("postgres", database) as conn:
        apply_migrations(conn)
        runnable = {
            role: {
                row["proname"]
                for row in conn.execute(
                    "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                    "where n.nspname = 'public' and has_function_privilege(%s, p.oid, 'execute')",
                    (role,),
                )
            }
            for role in ("anon", "authenticated")
        }
        assert runnable == {
            "anon": set(),
            "authenticated": {"match_knowledge_chunks", "match_knowledge_chunks_hybrid", "chunk_locations"},
        }
        tables = conn.execute(
            "select c.relname, c.relrowsecurity "
            "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'public' and c.relkind in ('r', 'p')"
        ).fetchall()
        assert tables and all(t["relrowsecurity"] for t in tables), tables
        client = uuid.uuid4()
        conn.execute("insert into clients (id) values (%s)", (client,))
        conn.execute(
            "insert into knowledge_items (client_id, source, content) values (%s, 'a', 'secret note')",
            (client,),
        )
        conn.execute("insert into system_config (key, value) values ('probe', '{}') on conflict do nothing")
        for role in ("anon", "authenticated"):
            conn.execute(f"set role {role}")
            for table in tables:
                try:
                    count = conn.execute(f'select count(*) as n from public."{table["relname"]}"').fetchone()
                except Exception as refused:  # no privilege at all is fine too
                    assert "permission denied" in str(refused)
                    continue
                assert count == {"n": 0}, (role, table["relname"])
            conn.execute("reset role")
