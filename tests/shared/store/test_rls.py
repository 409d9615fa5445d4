"""Row level security as Supabase's API roles see it, on the real schema.

PostgREST runs each request as `anon` or `authenticated` with the JWT's claims in
`request.jwt.claims`; these tests do the same inside a transaction and check what each role can
read and run: `anon` nothing, a user only its own client's rows, nobody but `service_role` the
`system_config` table or the write functions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

CLIENT_TABLES = {  # table → the column naming the row's client
    "clients": "id",
    "knowledge_items": "client_id",
    "knowledge_chunks": "client_id",
    "client_summaries": "client_id",
    "knowledge_item_outlines": "client_id",
}
# Tables no API role may read at all: secrets, vectors kept for items given back unfinished, and
# the pages of long PDFs extracted so far.
SERVICE_TABLES = ["system_config", "chunk_embedding_cache", "document_pages"]
PUBLIC_TABLES = [*CLIENT_TABLES, *SERVICE_TABLES]
DIMENSIONS = 1536


def one_hot(position: int) -> str:
    """A unit vector literal, so each client's chunk is nearest to its own query."""
    return "[" + ",".join("1" if i == position else "0" for i in range(DIMENSIONS)) + "]"


@dataclass(frozen=True)
class Tenant:
    client_id: uuid.UUID
    item_id: uuid.UUID
    chunk_id: uuid.UUID
    axis: int

    def rows(self, table: str) -> set[uuid.UUID]:
        """The ids (or client ids) this tenant owns in `table`."""
        return {
            "clients": {self.client_id},
            "knowledge_items": {self.item_id},
            "knowledge_chunks": {self.chunk_id},
            "client_summaries": {self.client_id},
            "knowledge_item_outlines": {self.client_id},
        }[table]


def make_tenant(conn: psycopg.Connection[Any], axis: int) -> Tenant:
    tenant = Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), axis)
    conn.execute("insert into clients (id, name) values (%s, %s)", (tenant.client_id, f"tenant {axis}"))
    conn.execute(
        "insert into knowledge_items (id, client_id, source, content) values (%s, %s, 'a.md', 'text')",
        (tenant.item_id, tenant.client_id),
    )
    conn.execute(
        "insert into knowledge_chunks (id, knowledge_item_id, client_id, chunk_index, content, embedding)"
        " values (%s, %s, %s, 0, 'text', %s::vector)",
        (tenant.chunk_id, tenant.item_id, tenant.client_id, one_hot(axis)),
    )
    conn.execute(
        "insert into client_summaries (client_id, summary) values (%s, 'summary')", (tenant.client_id,)
    )
    conn.execute(
        "insert into knowledge_item_outlines (knowledge_item_id, client_id, content_sha256, sections,"
        " chunk_sections) select id, client_id, content_sha256, %s, '{0}' from knowledge_items where id = %s",
        (json.dumps([[0, axis + 1, [f"Part {axis}"]]]), tenant.item_id),
    )
    return tenant


@pytest.fixture(scope="module")
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection of this module's own, so a failed statement never leaks state."""
    with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture(scope="module")
def tenants(conn: psycopg.Connection[Any]) -> Iterator[tuple[Tenant, Tenant]]:
    """Two clients with a row in every client table, and a secret in system_config."""
    first, second = make_tenant(conn, 0), make_tenant(conn, 1)
    conn.execute(
        "insert into system_config (key, value) values (%s, %s)",
        (f"rls-test:{first.client_id}", json.dumps({"secret": "do not show"})),
    )
    yield first, second
    conn.execute("delete from system_config where key = %s", (f"rls-test:{first.client_id}",))
    conn.execute("delete from clients where id = any(%s)", ([first.client_id, second.client_id],))


@contextmanager
def acting_as(
    conn: psycopg.Connection[Any], role: str, claims: dict[str, Any] | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """Run statements as PostgREST does for a request: `set local role` plus the JWT's claims."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        if claims is not None:
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield conn


def user_claims(client_id: uuid.UUID | str) -> dict[str, Any]:
    """A Supabase user JWT's claims with the client in `app_metadata` (set by the service only)."""
    return {"role": "authenticated", "sub": str(uuid.uuid4()), "app_metadata": {"client_id": str(client_id)}}


def visible(conn: psycopg.Connection[Any], table: str) -> set[uuid.UUID]:
    column = "id" if table in ("clients", "knowledge_items", "knowledge_chunks") else "client_id"
    query = sql.SQL("select {} as id from {}").format(sql.Identifier(column), sql.Identifier("public", table))
    return {row["id"] for row in conn.execute(query).fetchall()}


def test_every_table_in_public_has_row_level_security(conn: psycopg.Connection[Any]) -> None:
    tables = conn.execute(
        "select c.relname, c.relrowsecurity from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and c.relkind in ('r', 'p')"
    ).fetchall()
    assert {t["relname"] for t in tables} >= set(PUBLIC_TABLES)
    assert [t["relname"] for t in tables if not t["relrowsecurity"]] == []


@pytest.mark.parametrize("table", [*PUBLIC_TABLES, "knowledge_item_status"])
def test_anon_is_denied_every_table(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant], table: str
) -> None:
    """anon holds no privilege at all: reading fails with permission denied (not just zero rows)."""
    query = sql.SQL("select * from {}").format(sql.Identifier("public", table))
    with (
        pytest.raises(
            psycopg.errors.InsufficientPrivilege, match=f"permission denied for (table|view) {table}"
        ),
        acting_as(conn, "anon", {"role": "anon"}) as anon,
    ):
        anon.execute(query)


def test_anon_with_a_client_claim_is_still_denied(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant]
) -> None:
    first, _ = tenants
    with (
        pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for table knowledge_items"
        ),
        acting_as(conn, "anon", {"role": "anon", "client_id": str(first.client_id)}) as anon,
    ):
        anon.execute("select * from knowledge_items")


@pytest.mark.parametrize("table", list(CLIENT_TABLES))
def test_user_sees_exactly_its_own_clients_rows(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant], table: str
) -> None:
    for me, other in (tenants, tenants[::-1]):
        with acting_as(conn, "authenticated", user_claims(me.client_id)) as user:
            seen = visible(user, table)
        assert seen == me.rows(table)
        assert not seen & other.rows(table)


def test_top_level_client_id_claim_works_too(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant]
) -> None:
    first, _ = tenants
    claims = {"role": "authenticated", "client_id": str(first.client_id)}
    with acting_as(conn, "authenticated", claims) as user:
        assert {table: visible(user, table) for table in CLIENT_TABLES} == {
            table: first.rows(table) for table in CLIENT_TABLES
        }


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "authenticated", "app_metadata": {"client_id": "not-a-uuid"}},
        {"role": "authenticated", "client_id": "'; drop table clients; --"},
        {"role": "authenticated", "client_id": str(uuid.uuid4())},  # a client that does not exist
        {"role": "authenticated"},
        None,  # no claims at all
    ],
    ids=["garbage-app-metadata", "garbage-top-level", "unknown-client", "no-client-claim", "no-claims"],
)
def test_user_without_a_valid_client_sees_nothing(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant], claims: dict[str, Any] | None
) -> None:
    with acting_as(conn, "authenticated", claims) as user:
        assert {table: visible(user, table) for table in CLIENT_TABLES} == {
            table: set() for table in CLIENT_TABLES
        }


@pytest.mark.parametrize("table", SERVICE_TABLES)
def test_user_cannot_read_the_service_tables(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant], table: str
) -> None:
    """authenticated has no privilege on them: permission denied, whatever the claims."""
    first, _ = tenants
    query = sql.SQL("select * from {}").format(sql.Identifier("public", table))
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied for table {table}"),
        acting_as(conn, "authenticated", user_claims(first.client_id)) as user,
    ):
        user.execute(query)


def test_service_role_sees_everything(conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant]) -> None:
    """The control for the tests above: the rows are there, and service_role bypasses RLS."""
    first, second = tenants
    with acting_as(conn, "service_role", {"role": "service_role"}) as service:
        for table in CLIENT_TABLES:
            assert visible(service, table) >= first.rows(table) | second.rows(table)
        keys = {r["key"] for r in service.execute("select key from system_config").fetchall()}
    assert f"rls-test:{first.client_id}" in keys


def match(conn: psycopg.Connection[Any], axis: int, filter_client_id: uuid.UUID | None) -> list[uuid.UUID]:
    rows = conn.execute(
        "select client_id from match_knowledge_chunks(%s::vector, 50, %s)", (one_hot(axis), filter_client_id)
    ).fetchall()
    return [row["client_id"] for row in rows]


def test_search_as_a_user_never_returns_another_clients_chunks(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant]
) -> None:
    first, second = tenants
    with acting_as(conn, "authenticated", user_claims(first.client_id)) as user:
        assert match(user, second.axis, second.client_id) == []  # asking for the other client by name
        assert set(match(user, second.axis, None)) == {first.client_id}  # nearest is the other's: hidden
        assert match(user, first.axis, first.client_id) == [first.client_id]
    with acting_as(conn, "service_role", {"role": "service_role"}) as service:  # the control
        assert match(service, second.axis, second.client_id) == [second.client_id]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("ingest_knowledge_items", "select * from ingest_knowledge_items('[]'::jsonb)"),
        ("ensure_client", "select ensure_client(gen_random_uuid(), 'x')"),
        ("knowledge_status", "select knowledge_status()"),
    ],
)
def test_api_roles_cannot_run_the_service_functions(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant], role: str, name: str, call: str
) -> None:
    first, _ = tenants
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied for function {name}"),
        acting_as(conn, role, user_claims(first.client_id)) as api,
    ):
        api.execute(call)


def test_only_search_is_executable_by_the_api_roles(conn: psycopg.Connection[Any]) -> None:
    """Every function of ours in public, the write functions included, is closed to anon and
    authenticated, except the two searches (`match_knowledge_chunks` and its hybrid) and where
    their hits sit in their documents (`chunk_locations`), under RLS."""
    rows = conn.execute(
        """select p.oid::regprocedure::text as function,
                  has_function_privilege('anon', p.oid, 'execute') as anon,
                  has_function_privilege('authenticated', p.oid, 'execute') as authenticated
             from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname = 'public'
              and not exists (select 1 from pg_depend d  -- not an extension's (pgvector's) function
                               where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                                 and d.deptype = 'e')"""
    ).fetchall()
    functions = {r["function"].split("(")[0] for r in rows}
    assert {
        "ingest_knowledge_items",
        "ensure_client",
        "knowledge_status",
        "match_knowledge_chunks",
    } <= functions
    open_to_api = {r["function"].split("(")[0] for r in rows if r["authenticated"]}
    assert open_to_api == {"match_knowledge_chunks", "match_knowledge_chunks_hybrid", "chunk_locations"}
    assert not {r["function"].split("(")[0] for r in rows if r["anon"]}


def test_a_user_locates_only_its_own_clients_chunks(
    conn: psycopg.Connection[Any], tenants: tuple[Tenant, Tenant]
) -> None:
    first, second = tenants
    asked = [first.chunk_id, second.chunk_id]
    with acting_as(conn, "authenticated", user_claims(first.client_id)) as user:
        rows = user.execute("select * from chunk_locations(%s)", (asked,)).fetchall()
    assert [(r["id"], r["page"], r["headings"]) for r in rows] == [(first.chunk_id, 1, ["Part 0"])]
    with (
        acting_as(conn, "anon", {"role": "anon"}) as anon,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        anon.execute("select * from chunk_locations(%s)", (asked,))
